// Apache Flink 2.3 baseline for the threat-detection benchmark in docs/flink-workload.md
// (remove it: line 1 now names docs/flink-workload.md). One file, no package, no build tool:
//
//   javac -cp 'LIB/*' -d OUT ThreatBench.java
//   java -Xmx4g <--add-opens flags> -cp "OUT:LIB/*" ThreatBench [N] [P] [USERS]
//   java -cp "OUT:LIB/*" ThreatBench --check-stream [N] [USERS]   (generator only, no Flink)
//   java -cp "OUT:LIB/*" ThreatBench --check-seq [N] [USERS]      (sequential reference decisions)
//
// experiments/flink_compare.sh fetches Flink, compiles and runs this file.
//
// Job: DataGeneratorSource (P readers, counter-based generator)
//        -> keyBy(user) -> KeyedBroadcastProcessFunction (per-user ValueState, keyed ListState buffer)
//             <- broadcast(MapStateDescriptor) <- fromData(model schedule), parallelism 1
//        -> Totals (parallelism 1; flagged counts, checksums, probe latencies) -> DiscardingSink
// The sink's totals come back through accumulators (JobExecutionResult.getAccumulatorResult).

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;

import org.apache.flink.api.common.JobExecutionResult;
import org.apache.flink.api.common.accumulators.LongCounter;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.ListState;
import org.apache.flink.api.common.state.ListStateDescriptor;
import org.apache.flink.api.common.state.MapStateDescriptor;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.configuration.CoreOptions;
import org.apache.flink.configuration.MemorySize;
import org.apache.flink.configuration.PipelineOptions;
import org.apache.flink.configuration.StateBackendOptions;
import org.apache.flink.configuration.TaskManagerOptions;
import org.apache.flink.connector.datagen.source.DataGeneratorSource;
import org.apache.flink.connector.datagen.source.GeneratorFunction;
import org.apache.flink.streaming.api.datastream.BroadcastStream;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.ProcessFunction;
import org.apache.flink.streaming.api.functions.co.KeyedBroadcastProcessFunction;
import org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink;
import org.apache.flink.util.Collector;

public class ThreatBench {

    // ---------------------------------------------------------------- constants (docs/flink-workload.md#constants)
    static final long SEED = 0x7EA7_D37E_C710_2026L;
    static final long GAMMA = 0x9E37_79B9_7F4A_7C15L;
    static final int LANES = 16;
    static final int HOT_USERS = 1_024;
    static final long T0 = 1_700_000_000_000L;
    static final long EVENTS_PER_MS = 10;
    static final long PROBE_EVERY = 1000;
    static final int NUM_VERSIONS = 4;
    static final String[] ACTIONS = {
        "login_ok", "login_fail", "view", "download", "upload", "share", "delete", "admin_change"
    };
    static final int[] CUM_NORMAL = cumulative(new int[] {300, 60, 250, 200, 100, 50, 30, 10});
    static final int[] CUM_BAD = cumulative(new int[] {150, 300, 50, 250, 20, 100, 80, 50});

    static int[] cumulative(int[] w) {
        int[] c = new int[w.length];
        int s = 0;
        for (int i = 0; i < w.length; i++) {
            s += w[i];
            c[i] = s;
        }
        return c;
    }

    // ---------------------------------------------------------------- records (Flink POJOs)
    /** One generated event. genNanos is System.nanoTime() at generation for probes, else 0. */
    public static class Event {
        public long idx;
        public int user;
        public int action;
        public long bytes;
        public int country;
        public long ts;
        public long genNanos;

        public Event() {}
    }

    /** One model version of the broadcast schedule. */
    public static class Model {
        public int version;
        public long effectiveTs;
        public double[] w;
        public double bias;
        public double threshold;
        public int numVersions;

        public Model() {}

        Model(int version, long effectiveTs, double[] w, double bias, double threshold) {
            this.version = version;
            this.effectiveTs = effectiveTs;
            this.w = w;
            this.bias = bias;
            this.threshold = threshold;
            this.numVersions = NUM_VERSIONS;
        }
    }

    /** Keyed per-user state (docs/flink-workload.md#per-user-features). */
    public static class UserState {
        public long[] counts = new long[8];
        public long total;
        public long bytes;
        public int countryMask;

        public UserState() {}
    }

    /** Operator output: a flagged decision and/or a latency probe. */
    public static class Out {
        public long idx;
        public int user;
        public int version;
        public double score;
        public boolean flagged;
        public boolean probe;
        public long genNanos;

        public Out() {}
    }

    // ---------------------------------------------------------------- generator (docs/flink-workload.md#event-stream)
    static long mix64(long z) {
        z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
        z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
        return z ^ (z >>> 31);
    }

    static long bounded(long r, long n) {
        return ((r >>> 32) * n) >>> 32;
    }

    /** Fills e with event idx (genNanos untouched). */
    static void generate(long idx, int users, Event e) {
        long x = mix64(SEED + (idx + 1) * GAMMA);
        if (x == 0) x = GAMMA;
        // six successive xorshift64* outputs d0..d5
        x ^= x >>> 12; x ^= x << 25; x ^= x >>> 27;
        final long d0 = x * 0x2545F4914F6CDD1DL;
        x ^= x >>> 12; x ^= x << 25; x ^= x >>> 27;
        final long d1 = x * 0x2545F4914F6CDD1DL;
        x ^= x >>> 12; x ^= x << 25; x ^= x >>> 27;
        final long d2 = x * 0x2545F4914F6CDD1DL;
        x ^= x >>> 12; x ^= x << 25; x ^= x >>> 27;
        final long d3 = x * 0x2545F4914F6CDD1DL;
        x ^= x >>> 12; x ^= x << 25; x ^= x >>> 27;
        final long d4 = x * 0x2545F4914F6CDD1DL;
        x ^= x >>> 12; x ^= x << 25; x ^= x >>> 27;
        final long d5 = x * 0x2545F4914F6CDD1DL;

        final int lane = (int) (idx % LANES);
        final boolean hot = bounded(d0, 100) < 20;
        final int user = lane + LANES * (int) bounded(d1, (hot ? HOT_USERS : users) / LANES);
        final boolean bad = user % 97 == 13;
        final long a = bounded(d2, 1000);
        final int[] cum = bad ? CUM_BAD : CUM_NORMAL;
        int action = 0;
        while (a >= cum[action]) action++;
        final long bytes;
        switch (action) {
            case 3: bytes = bounded(d3, bad ? 200_000_000L : 50_000_000L); break;
            case 4: bytes = bounded(d3, 50_000_000L); break;
            case 2:
            case 5: bytes = bounded(d3, 1_000_000L); break;
            default: bytes = bounded(d3, 4096L); break;
        }
        final int country;
        if (bad) {
            country = (int) bounded(d5, 20);
        } else {
            country = bounded(d4, 100) < 98 ? user % 20 : (int) bounded(d5, 20);
        }
        e.idx = idx;
        e.user = user;
        e.action = action;
        e.bytes = bytes;
        e.country = country;
        e.ts = T0 + idx / EVENTS_PER_MS;
    }

    /**
     * DataGeneratorSource function: sequence number j in [0, N) (P contiguous splits of M = N/P)
     * -> idx = (j - s*M)*P + s with s = j / M, so the reader of split s emits idx = s (mod P) in
     * increasing idx order.
     */
    public static class Gen implements GeneratorFunction<Long, Event> {
        private final long m;
        private final int p;
        private final int users;

        Gen(long n, int p, int users) {
            this.m = n / p;
            this.p = p;
            this.users = users;
        }

        @Override
        public Event map(Long jBoxed) {
            final long j = jBoxed;
            final long s = j / m;
            final long idx = (j - s * m) * p + s;
            final Event e = new Event();
            generate(idx, users, e);
            if (idx % PROBE_EVERY == 0) e.genNanos = System.nanoTime();
            return e;
        }
    }

    // ---------------------------------------------------------------- model schedule (docs/flink-workload.md#models-and-scoring)
    static Model[] schedule(long n) {
        final long span = n / 10;
        final double[] wA = {4.0, 3.0, 1.0, 1.5, 2.0, 3.0, 6.0, 0.5};
        final double[] wB = {5.0, 3.0, 1.0, 1.5, 2.0, 3.0, 6.0, 0.5};
        final double[] wC = {5.0, 3.5, 0.5, 2.0, 2.5, 3.5, 8.0, 0.5};
        return new Model[] {
            new Model(0, T0, wA, -6.5, 0.5),
            new Model(1, T0 + span / 4, wB, -6.5, 0.6),
            new Model(2, T0 + span / 2, wC.clone(), -7.0, 0.6),
            new Model(3, T0 + 3 * span / 4, wC.clone(), -7.0, 0.45),
        };
    }

    /** Applies event e to the user's state s, then scores it. Shared by the Flink job and --check-seq. */
    static final class Scoring {
        final long[] effTs;
        final double[][] w;
        final double[] bias;
        final double[] threshold;
        // results of the last score() call
        int version;
        double p;
        boolean flagged;

        Scoring(Model[] byVersion) {
            final int k = byVersion.length;
            effTs = new long[k];
            w = new double[k][];
            bias = new double[k];
            threshold = new double[k];
            for (int v = 0; v < k; v++) {
                effTs[v] = byVersion[v].effectiveTs;
                w[v] = byVersion[v].w;
                bias[v] = byVersion[v].bias;
                threshold[v] = byVersion[v].threshold;
            }
        }

        static double u64ToDouble(long v) {
            if (v >= 0) return (double) v;
            // unsigned conversion, round-to-nearest like Rust's `as f64` (never reached in this workload)
            return ((double) ((v >>> 1) | (v & 1))) * 2.0;
        }

        void apply(UserState s, int action, long bytes, int country, long ts) {
            s.counts[action] += 1;
            s.total += 1;
            s.bytes += bytes;
            s.countryMask |= 1 << country;

            final long[] c = s.counts;
            final long logins = c[0] + c[1];
            final double total = u64ToDouble(s.total);
            final double x0 = logins == 0 ? 0.0 : u64ToDouble(c[1]) / u64ToDouble(logins);
            final double x1 = (double) Integer.bitCount(s.countryMask) / 20.0;
            final double b = u64ToDouble(s.bytes);
            final double x2 = b / (b + 1.0e8);
            final double x3 = u64ToDouble(c[3]) / total;
            final double x4 = u64ToDouble(c[5]) / total;
            final double x5 = u64ToDouble(c[6]) / total;
            final double x6 = u64ToDouble(c[7]) / total;
            final double x7 = total / (total + 50.0);

            // version with the largest effective_ts <= ts (ties: the higher version)
            int v = 0;
            for (int k = 1; k < effTs.length; k++) {
                if (effTs[k] <= ts && effTs[k] >= effTs[v]) v = k;
            }
            final double[] wv = w[v];
            double z = bias[v];
            z += wv[0] * x0;
            z += wv[1] * x1;
            z += wv[2] * x2;
            z += wv[3] * x3;
            z += wv[4] * x4;
            z += wv[5] * x5;
            z += wv[6] * x6;
            z += wv[7] * x7;
            final double pr = 1.0 / (1.0 + Math.exp(-z));
            version = v;
            p = pr;
            flagged = pr > threshold[v];
        }
    }

    // ---------------------------------------------------------------- the keyed broadcast operator
    static final MapStateDescriptor<Integer, Model> MODEL_DESC =
            new MapStateDescriptor<>("models", Types.INT, TypeInformation.of(Model.class));

    public static class Scorer extends KeyedBroadcastProcessFunction<Integer, Event, Model, Out> {
        private transient ValueStateDescriptor<UserState> userDesc;
        private transient ListStateDescriptor<Event> bufDesc;
        private transient ValueState<UserState> userState;
        private transient ListState<Event> buffer;
        private transient Scoring scoring; // non-null once all num_versions versions are in
        private transient long buffered;

        @Override
        public void open(OpenContext ctx) {
            userDesc = new ValueStateDescriptor<>("user", TypeInformation.of(UserState.class));
            bufDesc = new ListStateDescriptor<>("pending", TypeInformation.of(Event.class));
            userState = getRuntimeContext().getState(userDesc);
            buffer = getRuntimeContext().getListState(bufDesc);
        }

        @Override
        public void processElement(Event e, ReadOnlyContext ctx, Collector<Out> out) throws Exception {
            if (scoring == null) {
                buffer.add(e);
                buffered++;
                return;
            }
            score(e, out);
        }

        @Override
        public void processBroadcastElement(Model m, Context ctx, Collector<Out> out) throws Exception {
            ctx.getBroadcastState(MODEL_DESC).put(m.version, m);
            if (scoring != null) return;
            final List<Model> all = new ArrayList<>();
            for (Map.Entry<Integer, Model> en : ctx.getBroadcastState(MODEL_DESC).entries()) {
                all.add(en.getValue());
            }
            if (all.size() < m.numVersions) return;
            final Model[] byVersion = new Model[all.size()];
            for (Model mm : all) byVersion[mm.version] = mm;
            scoring = new Scoring(byVersion);
            // drain the events buffered before the whole schedule was known (per key, arrival order)
            ctx.applyToKeyedState(bufDesc, (Integer key, ListState<Event> pending) -> {
                for (Event e : pending.get()) score(e, out);
                pending.clear();
            });
        }

        private void score(Event e, Collector<Out> out) throws Exception {
            UserState s = userState.value();
            if (s == null) s = new UserState();
            scoring.apply(s, e.action, e.bytes, e.country, e.ts);
            userState.update(s);
            final boolean probe = e.idx % PROBE_EVERY == 0;
            if (scoring.flagged || probe) {
                final Out o = new Out();
                o.idx = e.idx;
                o.user = e.user;
                o.version = scoring.version;
                o.score = scoring.p;
                o.flagged = scoring.flagged;
                o.probe = probe;
                o.genNanos = e.genNanos;
                out.collect(o);
            }
        }

        @Override
        public void close() {
            if (buffered > 0) {
                System.err.println("[flink] subtask " + getRuntimeContext().getTaskInfo().getIndexOfThisSubtask()
                        + ": " + buffered + " events buffered before the model schedule was complete");
            }
        }
    }

    // ---------------------------------------------------------------- parallelism-1 totals "sink"
    static final String[] ACC = {
        "flagged", "v0", "v1", "v2", "v3", "checksumIdx", "checksumUser",
        "probes", "latP50Ns", "latP99Ns", "latMaxNs"
    };

    public static class Totals extends ProcessFunction<Out, Out> {
        private transient long flagged, checksumIdx, checksumUser;
        private transient long[] perVersion;
        private transient long[] lat;
        private transient int nLat;
        private transient LongCounter[] acc;

        @Override
        public void open(OpenContext ctx) {
            perVersion = new long[NUM_VERSIONS];
            lat = new long[1024];
            acc = new LongCounter[ACC.length];
            for (int i = 0; i < ACC.length; i++) {
                acc[i] = new LongCounter();
                getRuntimeContext().addAccumulator(ACC[i], acc[i]);
            }
        }

        @Override
        public void processElement(Out o, Context ctx, Collector<Out> out) {
            if (o.probe) {
                final long now = System.nanoTime();
                if (nLat == lat.length) lat = Arrays.copyOf(lat, 2 * nLat);
                lat[nLat++] = now - o.genNanos;
            }
            if (o.flagged) {
                flagged++;
                perVersion[o.version]++;
                checksumIdx += o.idx;
                checksumUser += (long) o.user * 4 + o.version + 1;
            }
        }

        @Override
        public void close() {
            final long[] l = Arrays.copyOf(lat, nLat);
            Arrays.sort(l);
            final long[] v = {
                flagged, perVersion[0], perVersion[1], perVersion[2], perVersion[3], checksumIdx, checksumUser,
                nLat, rank(l, 0.50), rank(l, 0.99), nLat == 0 ? 0 : l[nLat - 1]
            };
            for (int i = 0; i < v.length; i++) acc[i].add(v[i]);
        }
    }

    /** Nearest-rank percentile of a sorted array. */
    static long rank(long[] sorted, double q) {
        if (sorted.length == 0) return 0;
        int i = (int) Math.ceil(q * sorted.length) - 1;
        return sorted[Math.max(0, Math.min(sorted.length - 1, i))];
    }

    // ---------------------------------------------------------------- main
    public static void main(String[] args) throws Exception {
        if (args.length > 0 && args[0].equals("--check-stream")) {
            checkStream(arg(args, 1, 10_000_000L), (int) arg(args, 2, 100_000));
            return;
        }
        if (args.length > 0 && args[0].equals("--check-seq")) {
            checkSeq(arg(args, 1, 10_000_000L), (int) arg(args, 2, 100_000));
            return;
        }
        final long n = arg(args, 0, 10_000_000L);
        final int p = (int) arg(args, 1, 2);
        final int users = (int) arg(args, 2, 100_000);
        validate(n, p, users);

        final Configuration conf = new Configuration();
        conf.set(TaskManagerOptions.NUM_TASK_SLOTS, p);
        conf.set(TaskManagerOptions.MANAGED_MEMORY_SIZE, MemorySize.parse("128m"));
        conf.set(StateBackendOptions.STATE_BACKEND, "hashmap");
        conf.set(CoreOptions.DEFAULT_PARALLELISM, p);
        // -DobjectReuse=false to compare; on by default (see the report / flink_compare.sh)
        final boolean objectReuse = Boolean.parseBoolean(System.getProperty("objectReuse", "true"));
        conf.set(PipelineOptions.OBJECT_REUSE, objectReuse);
        final StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment(conf);
        env.setParallelism(p);
        // no checkpointing (default)

        final DataStream<Event> events = env
                .fromSource(new DataGeneratorSource<>(new Gen(n, p, users), n, TypeInformation.of(Event.class)),
                        WatermarkStrategy.noWatermarks(), "events")
                .setParallelism(p);
        final BroadcastStream<Model> models = env
                .fromData(TypeInformation.of(Model.class), schedule(n))
                .setParallelism(1)
                .broadcast(MODEL_DESC);
        events.keyBy((Event e) -> e.user, Types.INT)
                .connect(models)
                .process(new Scorer())
                .returns(TypeInformation.of(Out.class))
                .name("score")
                .process(new Totals())
                .returns(TypeInformation.of(Out.class))
                .setParallelism(1)
                .name("totals")
                .sinkTo(new DiscardingSink<>())
                .setParallelism(1);

        final long t0 = System.nanoTime();
        final JobExecutionResult r = env.execute("threatflow-bench");
        final long t1 = System.nanoTime();
        final double seconds = (t1 - t0) / 1e9;
        final double netSeconds = r.getNetRuntime() / 1e3;

        final long[] a = new long[ACC.length];
        for (int i = 0; i < ACC.length; i++) {
            final Object o = r.getAccumulatorResult(ACC[i]);
            if (o == null) throw new IllegalStateException("accumulator " + ACC[i] + " missing");
            a[i] = (Long) o;
        }
        final StringBuilder sb = new StringBuilder();
        sb.append("{\"engine\":\"flink\",\"flink_version\":\"2.3.0\"");
        sb.append(",\"parallelism\":").append(p);
        sb.append(",\"events\":").append(n);
        sb.append(",\"seconds\":").append(fmt(seconds, 3));
        sb.append(",\"events_per_second\":").append(Math.round(n / seconds));
        sb.append(",\"flagged\":").append(a[0]);
        sb.append(",\"per_version\":[").append(a[1]).append(',').append(a[2]).append(',')
                .append(a[3]).append(',').append(a[4]).append(']');
        sb.append(",\"checksum_idx\":").append(Long.toUnsignedString(a[5]));
        sb.append(",\"checksum_user\":").append(Long.toUnsignedString(a[6]));
        sb.append(",\"probe_latency_ms\":{\"p50\":").append(fmt(a[8] / 1e6, 3))
                .append(",\"p99\":").append(fmt(a[9] / 1e6, 3))
                .append(",\"max\":").append(fmt(a[10] / 1e6, 3))
                .append(",\"probes\":").append(a[7]).append('}');
        // extra: Flink's own job runtime (excludes MiniCluster start/stop), and the rate over it
        sb.append(",\"job_net_runtime_seconds\":").append(fmt(netSeconds, 3));
        sb.append(",\"events_per_second_net\":").append(Math.round(n / netSeconds));
        sb.append(",\"object_reuse\":").append(objectReuse).append(",\"state_backend\":\"hashmap\"}");
        System.out.println(sb);
    }

    static String fmt(double v, int digits) {
        return String.format(java.util.Locale.ROOT, "%." + digits + "f", v);
    }

    static long arg(String[] args, int i, long dflt) {
        if (args.length <= i) return dflt;
        return Long.parseLong(args[i].replace("_", ""));
    }

    static void validate(long n, int p, int users) {
        if (n <= 0 || n % LANES != 0) throw new IllegalArgumentException("N must be a positive multiple of 16");
        if (p <= 0 || LANES % p != 0) throw new IllegalArgumentException("P must divide 16");
        if (users <= 0 || users % LANES != 0) throw new IllegalArgumentException("USERS must be a multiple of 16");
    }

    // ---------------------------------------------------------------- sequential checks (no Flink)
    /** Stream sums of docs/flink-workload.md#reference-values, from the generator alone, in idx order. */
    static void checkStream(long n, int users) {
        validate(n, 1, users);
        final Event e = new Event();
        long userSum = 0, bytesSum = 0, countrySum = 0;
        final long[] actions = new long[8];
        final boolean[] seen = new boolean[Math.max(users, HOT_USERS)];
        long distinct = 0;
        final StringBuilder first = new StringBuilder();
        for (long idx = 0; idx < n; idx++) {
            generate(idx, users, e);
            if (idx < 8) {
                first.append(idx).append(',').append(e.user).append(',').append(ACTIONS[e.action]).append(',')
                        .append(e.bytes).append(',').append(e.ts).append(',').append(e.country).append('\n');
            }
            userSum += e.user;
            bytesSum += e.bytes;
            countrySum += e.country;
            actions[e.action]++;
            if (!seen[e.user]) {
                seen[e.user] = true;
                distinct++;
            }
        }
        System.out.print(first);
        System.out.println("{\"check\":\"stream\",\"events\":" + n
                + ",\"userSum\":" + Long.toUnsignedString(userSum)
                + ",\"bytesSum\":" + Long.toUnsignedString(bytesSum)
                + ",\"countrySum\":" + Long.toUnsignedString(countrySum)
                + ",\"actionCounts\":" + Arrays.toString(actions).replace(" ", "")
                + ",\"distinctUsers\":" + distinct + "}");
    }

    /** Plain sequential reference of the decisions (same Scoring code, no Flink, no buffering). */
    static void checkSeq(long n, int users) {
        validate(n, 1, users);
        final Scoring sc = new Scoring(schedule(n));
        final UserState[] st = new UserState[Math.max(users, HOT_USERS)];
        final Event e = new Event();
        long flagged = 0, cIdx = 0, cUser = 0;
        final long[] perVersion = new long[NUM_VERSIONS];
        final long t0 = System.nanoTime();
        for (long idx = 0; idx < n; idx++) {
            generate(idx, users, e);
            UserState s = st[e.user];
            if (s == null) st[e.user] = s = new UserState();
            sc.apply(s, e.action, e.bytes, e.country, e.ts);
            if (sc.flagged) {
                flagged++;
                perVersion[sc.version]++;
                cIdx += idx;
                cUser += (long) e.user * 4 + sc.version + 1;
            }
        }
        final double seconds = (System.nanoTime() - t0) / 1e9;
        System.out.println("{\"check\":\"sequential\",\"events\":" + n + ",\"flagged\":" + flagged
                + ",\"per_version\":" + Arrays.toString(perVersion).replace(" ", "")
                + ",\"checksum_idx\":" + Long.toUnsignedString(cIdx)
                + ",\"checksum_user\":" + Long.toUnsignedString(cUser)
                + ",\"seconds\":" + fmt(seconds, 3) + "}");
    }
}
