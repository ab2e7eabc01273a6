// The threat dataflow of docs/semantics.md written as an Apache Flink 2.3 DataStream job: the
// Flink side of the real-job comparison (docs/flink-workload.md#the-real-job). It reads the same
// file of canonical events as `threatflow replay` and must write the same decisions. One file, no
// package, no build tool (Xxh3.java names the decisions):
//
//   javac -cp 'LIB/*' -d OUT ThreatJob.java Xxh3.java
//   java <flags of experiments/flink/env.sh> -cp "OUT:LIB/*" ThreatJob EVENTS MODEL UPDATES RULES CENTERS OUT_DIR P
//
//   EVENTS   canonical events, JSON lines (one file: one partition)
//   MODEL    the model artifact in force from time 0
//   UPDATES  model updates, JSON lines {version, uri, sha256, effective_from}
//   RULES    threshold rules: a JSON array or JSON lines (docs/semantics.md#threshold-rules)
//   CENTERS  the country centres, src/enrich/data/country-centers.csv (places for the travel speed)
//   OUT_DIR  where each subtask writes decisions-<subtask>.jsonl
//
// Job:  Partition (the file, parallelism 1: parse, validate, lateness -> judged time and watermark)
//         -> keyBy(user) -> Detect: KeyedBroadcastProcessFunction (parallelism P)
//              per user, in keyed state: events waiting for their millisecond, the ten feature
//              windows, the block; an event-time timer per millisecond decides its events
//              <- broadcast(control: model versions and rule updates, each with effective_from)
//         -> DecisionFiles (parallelism P)
// Heap state backend, no checkpointing, object reuse on; the same flags as ThreatBench.java.
// What it leaves out of threatflow's dataflow: Sigma, correlation, new terms, marks, intel,
// enrichment, risk, unblocks, dead-letter output (bad records are only counted).

import java.io.BufferedReader;
import java.io.BufferedWriter;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.security.MessageDigest;
import java.time.Instant;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.HexFormat;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.TreeSet;

import org.apache.flink.api.common.JobExecutionResult;
import org.apache.flink.api.common.accumulators.LongCounter;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.BroadcastState;
import org.apache.flink.api.common.state.MapStateDescriptor;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.connector.sink2.Sink;
import org.apache.flink.api.connector.sink2.SinkWriter;
import org.apache.flink.api.connector.sink2.WriterInitContext;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.configuration.CoreOptions;
import org.apache.flink.configuration.MemorySize;
import org.apache.flink.configuration.PipelineOptions;
import org.apache.flink.configuration.StateBackendOptions;
import org.apache.flink.configuration.TaskManagerOptions;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.JsonNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.ObjectMapper;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.node.ArrayNode;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.databind.node.ObjectNode;
import org.apache.flink.streaming.api.datastream.BroadcastStream;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.co.KeyedBroadcastProcessFunction;
import org.apache.flink.streaming.api.functions.source.legacy.RichSourceFunction;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.util.Collector;

public class ThreatJob {

    static final ObjectMapper JSON = new ObjectMapper();

    // ---------------------------------------------------------------- time (docs/semantics.md#feature-windows)
    static final long MINUTE = 60_000L, HOUR = 3_600_000L, DAY = 86_400_000L, DAYS_30 = 30 * DAY;
    static final long ALLOWED_LATENESS = 5_000L;   // --allowed-lateness default
    static final long BLOCK_FOR = HOUR;            // --block-for default
    static final long MAX_DOWNLOAD_BYTES = 1L << 48;

    /** The ten features, in their standard order. */
    static final String[] FEATURES = {
        "failed_logins_5m", "logins_1h", "countries_24h", "new_country", "download_bytes_1h",
        "external_shares_1h", "deletes_10m", "privilege_changes_1h", "distinct_resources_1h", "travel_speed_kmh"
    };

    static int featureIndex(String name) {
        for (int i = 0; i < FEATURES.length; i++) if (FEATURES[i].equals(name)) return i;
        throw new IllegalArgumentException("unknown feature " + name);
    }

    // ---------------------------------------------------------------- events

    /** A canonical event as the partition judged it. */
    public static class Event {
        public String eventId, user, action, country, resource;
        public long bytes;            // 0 when absent
        public long ts, time;         // the record's ts; the time it is judged at
        public boolean late;
        public String[] texts;        // the texts of the fields the rules test (Control.ruleFields order); null = absent
        public Event() {}
    }

    /**
     * One file is one partition, read in order by one reader: each record is parsed and
     * validated, judged against the partition's watermark (max ts of its events that were not
     * late, minus the allowed lateness), and emitted at its judged time. The watermark follows.
     */
    public static class Partition extends RichSourceFunction<Event> {
        final String file;
        final String[] ruleFields;
        volatile boolean running = true;
        transient LongCounter rejected, lateEvents;

        Partition(String file, String[] ruleFields) { this.file = file; this.ruleFields = ruleFields; }

        @Override
        public void open(OpenContext ctx) {
            rejected = getRuntimeContext().getLongCounter("rejected");
            lateEvents = getRuntimeContext().getLongCounter("late");
        }

        @Override
        public void run(SourceContext<Event> out) throws Exception {
            long maxTs = -1, emitted = Long.MIN_VALUE, n = 0;
            try (BufferedReader in = Files.newBufferedReader(Paths.get(file), StandardCharsets.UTF_8)) {
                for (String line; running && (line = in.readLine()) != null; ) {
                    if (line.isBlank()) continue;
                    final Event e = parse(line, ruleFields);
                    if (e == null) { rejected.add(1); continue; }
                    final long watermark = Math.max(0, maxTs - ALLOWED_LATENESS);
                    if (e.ts < watermark) {
                        e.late = true;
                        e.time = watermark;
                        lateEvents.add(1);
                    } else {
                        e.time = e.ts;
                        maxTs = Math.max(maxTs, e.ts);
                    }
                    out.collectWithTimestamp(e, e.time);
                    // Flink's watermark W promises no more timestamps <= W; ours, none below it.
                    if ((++n & 1023) == 0 && maxTs - ALLOWED_LATENESS - 1 > emitted) {
                        emitted = maxTs - ALLOWED_LATENESS - 1;
                        out.emitWatermark(new Watermark(emitted));
                    }
                }
            }
        }

        @Override
        public void cancel() { running = false; }
    }

    /** A validated event, or null (docs/semantics.md#validation-and-dead-letters). */
    static Event parse(String line, String[] ruleFields) {
        final JsonNode r;
        try { r = JSON.readTree(line); } catch (IOException ex) { return null; }
        if (r == null || !r.isObject()) return null;
        final Event e = new Event();
        e.eventId = requiredText(r, "event_id");
        e.user = requiredText(r, "user");
        e.action = requiredText(r, "action");
        final JsonNode ts = r.get("ts");
        if (e.eventId == null || e.user == null || e.action == null || ts == null) return null;
        if (ts.isIntegralNumber() && ts.canConvertToLong() && ts.asLong() >= 0) e.ts = ts.asLong();
        else if (ts.isTextual()) {
            try { e.ts = Instant.parse(ts.asText()).toEpochMilli(); } catch (RuntimeException ex) { return null; }
            if (e.ts < 0) return null;
        } else return null;
        final JsonNode country = r.get("country");
        if (country != null && !country.isNull()) {
            final String c = country.isTextual() ? country.asText() : "";
            if (c.length() != 2 || !isAsciiLetter(c.charAt(0)) || !isAsciiLetter(c.charAt(1))) return null;
            e.country = c.toUpperCase();
        }
        final JsonNode resource = r.get("resource");
        if (resource != null && !resource.isNull()) {
            if (!resource.isTextual()) return null;
            e.resource = resource.asText();
        }
        final JsonNode bytes = r.get("bytes");
        if (bytes != null && !bytes.isNull()) {
            if (!bytes.isIntegralNumber() || !bytes.canConvertToLong() || bytes.asLong() < 0) return null;
            e.bytes = bytes.asLong();
        }
        e.texts = new String[ruleFields.length];
        for (int i = 0; i < ruleFields.length; i++) {
            final String name = ruleFields[i];
            if (name.equals("ts")) { e.texts[i] = Long.toString(e.ts); continue; }
            if (name.equals("country")) { e.texts[i] = e.country; continue; }
            final JsonNode v = r.get(name);
            e.texts[i] = v == null || v.isNull() ? null : v.isTextual() ? v.asText() : v.toString();
        }
        return e;
    }

    static String requiredText(JsonNode r, String name) {
        final JsonNode v = r.get(name);
        return v != null && v.isTextual() && !v.asText().isEmpty() ? v.asText() : null;
    }

    static boolean isAsciiLetter(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

    // ---------------------------------------------------------------- control: models and rules by effective_from

    /** A model version or a threshold-rule update, in force from `effectiveFrom`; `seq` orders ties. */
    public static class Control {
        public int seq;
        public long effectiveFrom;
        public String modelVersion;      // a model, or null for a rule update
        public String[] modelFeatures;
        public double[] weights;
        public double bias, threshold;
        public String ruleId;             // a rule update
        public boolean remove;
        public String[] whenFields;       // names; values per field below
        public String[][] whenValues;
        public int[] boundFeatures;       // feature index per bound
        public double[] boundLow, boundHigh;  // each bound, -inf/+inf when absent
        public boolean[] lowStrict, highStrict;
        public String[] actions;
        public Control() {}
    }

    static final MapStateDescriptor<Integer, Control> CONTROL =
            new MapStateDescriptor<>("control", Types.INT, TypeInformation.of(Control.class));

    static Control model(JsonNode a, String expectedVersion, long effectiveFrom, int seq) {
        final Control c = new Control();
        c.seq = seq;
        c.effectiveFrom = effectiveFrom;
        c.modelVersion = a.get("version").asText();
        if (expectedVersion != null && !expectedVersion.equals(c.modelVersion))
            throw new IllegalArgumentException("model version " + c.modelVersion + " is not the update's " + expectedVersion);
        final JsonNode features = a.get("features"), weights = a.get("weights");
        if (features.size() != weights.size()) throw new IllegalArgumentException("model: features and weights differ in number");
        c.modelFeatures = new String[features.size()];
        c.weights = new double[weights.size()];
        for (int i = 0; i < c.weights.length; i++) {
            c.modelFeatures[i] = features.get(i).asText();
            featureIndex(c.modelFeatures[i]);
            c.weights[i] = weights.get(i).asDouble();
        }
        c.bias = a.get("bias").asDouble();
        c.threshold = a.get("threshold").asDouble();
        return c;
    }

    static Control rule(JsonNode r, int seq) {
        final Control c = new Control();
        c.seq = seq;
        final Iterator<String> keys = r.fieldNames();
        while (keys.hasNext()) {
            final String k = keys.next();
            if (!List.of("id", "effective_from", "when", "features", "actions", "title", "severity", "remove").contains(k))
                throw new IllegalArgumentException("rule " + r.get("id") + ": unknown key " + k);
        }
        c.ruleId = r.get("id").asText();
        c.effectiveFrom = r.has("effective_from") ? r.get("effective_from").asLong() : 0;
        c.remove = r.has("remove") && r.get("remove").asBoolean();
        final JsonNode when = r.has("when") ? r.get("when") : JSON.createObjectNode();
        c.whenFields = new String[when.size()];
        c.whenValues = new String[when.size()][];
        int i = 0;
        for (Map.Entry<String, JsonNode> f : when.properties()) {
            c.whenFields[i] = f.getKey();
            c.whenValues[i] = new String[f.getValue().size()];
            for (int j = 0; j < c.whenValues[i].length; j++) c.whenValues[i][j] = f.getValue().get(j).asText();
            i++;
        }
        final JsonNode features = r.has("features") ? r.get("features") : JSON.createObjectNode();
        final int n = features.size();
        c.boundFeatures = new int[n];
        c.boundLow = new double[n];
        c.boundHigh = new double[n];
        c.lowStrict = new boolean[n];
        c.highStrict = new boolean[n];
        i = 0;
        for (Map.Entry<String, JsonNode> f : features.properties()) {
            final JsonNode b = f.getValue();
            c.boundFeatures[i] = featureIndex(f.getKey());
            c.boundLow[i] = Double.NEGATIVE_INFINITY;
            c.boundHigh[i] = Double.POSITIVE_INFINITY;
            if (b.has("gte")) c.boundLow[i] = b.get("gte").asDouble();
            if (b.has("gt")) { c.boundLow[i] = b.get("gt").asDouble(); c.lowStrict[i] = true; }
            if (b.has("lte")) c.boundHigh[i] = b.get("lte").asDouble();
            if (b.has("lt")) { c.boundHigh[i] = b.get("lt").asDouble(); c.highStrict[i] = true; }
            i++;
        }
        final JsonNode actions = r.get("actions");
        c.actions = actions == null ? new String[] {"alert"} : new String[actions.size()];
        for (i = 0; actions != null && i < actions.size(); i++) c.actions[i] = actions.get(i).asText();
        return c;
    }

    /** The control collection read at start: the initial model, the model updates, the rules. */
    static List<Control> readControl(String modelFile, String updatesFile, String rulesFile) throws Exception {
        final List<Control> control = new ArrayList<>();
        control.add(model(JSON.readTree(Files.readString(Paths.get(modelFile))), null, 0, control.size()));
        for (String line : Files.readAllLines(Paths.get(updatesFile))) {
            if (line.isBlank()) continue;
            final JsonNode u = JSON.readTree(line);
            final Path artifact = Paths.get(updatesFile).toAbsolutePath().getParent().resolve(u.get("uri").asText());
            final byte[] bytes = Files.readAllBytes(artifact);
            final String sha = HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(bytes));
            if (!sha.equalsIgnoreCase(u.get("sha256").asText())) throw new IllegalArgumentException(artifact + ": sha256 mismatch");
            control.add(model(JSON.readTree(bytes), u.get("version").asText(), u.get("effective_from").asLong(), control.size()));
        }
        final String text = Files.readString(Paths.get(rulesFile)).strip();
        final List<JsonNode> rules = new ArrayList<>();
        if (text.startsWith("[")) JSON.readTree(text).forEach(rules::add);
        else for (String line : text.split("\n")) if (!line.isBlank() && !line.strip().startsWith("#")) rules.add(JSON.readTree(line));
        for (JsonNode r : rules) control.add(rule(r, control.size()));
        return control;
    }

    /** The names of the fields any rule's `when` tests, in a fixed order. */
    static String[] ruleFields(List<Control> control) {
        final TreeSet<String> names = new TreeSet<>();
        for (Control c : control) if (c.ruleId != null) names.addAll(Arrays.asList(c.whenFields));
        return names.toArray(new String[0]);
    }

    /** What is in force at one time: the model, and the rules by id. */
    static final class InForce {
        Control model;
        final List<Control> rules = new ArrayList<>();
    }

    /** The control updates sorted by (effective_from, seq), resolved as of a time. */
    static final class ControlIndex {
        final Control[] sorted;
        long cachedFrom = Long.MIN_VALUE, cachedUntil = Long.MIN_VALUE;  // [from, until) of the cache
        InForce cached;

        ControlIndex(Iterable<Map.Entry<Integer, Control>> entries) {
            final List<Control> all = new ArrayList<>();
            for (Map.Entry<Integer, Control> e : entries) all.add(e.getValue());
            all.sort((a, b) -> a.effectiveFrom != b.effectiveFrom ? Long.compare(a.effectiveFrom, b.effectiveFrom) : Integer.compare(a.seq, b.seq));
            sorted = all.toArray(new Control[0]);
        }

        InForce at(long t) {
            if (t >= cachedFrom && t < cachedUntil) return cached;
            final InForce f = new InForce();
            final TreeMap<String, Control> rules = new TreeMap<>();
            int i = 0;
            for (; i < sorted.length && sorted[i].effectiveFrom <= t; i++) {
                final Control c = sorted[i];
                if (c.modelVersion != null) f.model = c;
                else if (c.remove) rules.remove(c.ruleId);
                else rules.put(c.ruleId, c);
            }
            f.rules.addAll(rules.values());
            cachedFrom = i == 0 ? Long.MIN_VALUE : sorted[i - 1].effectiveFrom;
            cachedUntil = i < sorted.length ? sorted[i].effectiveFrom : Long.MAX_VALUE;
            cached = f;
            return f;
        }
    }

    // ---------------------------------------------------------------- per-user state

    /** A count or sum over the events of the last W ms: (time, amount) pairs in time order. */
    public static final class Window {
        final long width;
        final ArrayDeque<long[]> entries = new ArrayDeque<>();
        long sum;
        Window(long width) { this.width = width; }
        void add(long time, long amount) { entries.addLast(new long[] {time, amount}); sum += amount; }
        /** The sum over T - W < time <= T (after adding the events of T). */
        long at(long t) {
            while (!entries.isEmpty() && entries.peekFirst()[0] <= t - width) sum -= entries.removeFirst()[1];
            return sum;
        }
    }

    /** Distinct values seen in the last W ms, each with the last time it was seen. */
    public static final class Distinct {
        final long width;
        final HashMap<String, Long> last = new HashMap<>();
        final ArrayDeque<Object[]> expiry = new ArrayDeque<>();
        Distinct(long width) { this.width = width; }
        void add(String value, long time) { last.put(value, time); expiry.addLast(new Object[] {time, value}); }
        void evict(long t) {
            while (!expiry.isEmpty() && (Long) expiry.peekFirst()[0] <= t - width) {
                final Object[] x = expiry.removeFirst();
                last.remove((String) x[1], (Long) x[0]);
            }
        }
        int count(long t) { evict(t); return last.size(); }
        boolean seen(String value, long t) { evict(t); return last.containsKey(value); }
    }

    public static final class UserState {
        final TreeMap<Long, ArrayList<Event>> pending = new TreeMap<>();
        final Window failedLogins = new Window(5 * MINUTE), logins = new Window(HOUR), downloadBytes = new Window(HOUR),
                externalShares = new Window(HOUR), deletes = new Window(10 * MINUTE), privilegeChanges = new Window(HOUR);
        final Distinct countries = new Distinct(DAY), resources = new Distinct(HOUR), countriesSeen = new Distinct(DAYS_30);
        long travelTime = -1;                       // the latest located login millisecond
        int[] travelPlaces = new int[0];            // its distinct places
        long blockFrom = -1, blockUntil = -1;       // blocked at t when from < t <= until
        String blockedBy;
    }

    // ---------------------------------------------------------------- places (docs/semantics.md#feature-windows)

    static final double EARTH_RADIUS_KM = 6371.0088;

    /** The country centres (threatflow's src/enrich/data/country-centers.csv), as places. */
    static Map<String, Integer> countryCenters(String csv) throws IOException {
        final Map<String, Integer> centers = new HashMap<>();
        for (String line : Files.readAllLines(Paths.get(csv))) {
            if (line.startsWith("#") || line.startsWith("code,")) continue;
            final String[] f = line.split(",");
            centers.put(f[0].toUpperCase(), place(Double.parseDouble(f[1]), Double.parseDouble(f[2])));
        }
        return centers;
    }

    /** Rust's f64::round: halves away from zero. */
    static long roundHalfAway(double x) { return x < 0 ? -Math.round(-x) : Math.round(x); }

    /** A place rounded to 0.01 degree, packed as threatflow's Place. */
    static int place(double lat, double lon) {
        return (int) (((roundHalfAway(lat * 100.0) + 9_000) << 16) | (roundHalfAway(lon * 100.0) + 18_000));
    }

    static double distanceKm(int a, int b) {
        final double lat1 = ((a >>> 16) - 9_000) / 100.0, lon1 = ((a & 0xffff) - 18_000) / 100.0;
        final double lat2 = ((b >>> 16) - 9_000) / 100.0, lon2 = ((b & 0xffff) - 18_000) / 100.0;
        final double phi1 = Math.toRadians(lat1), phi2 = Math.toRadians(lat2);
        final double halfDphi = (phi2 - phi1) / 2.0;
        final double halfDlambda = Math.toRadians(lon2 - lon1) / 2.0;
        final double s1 = Math.sin(halfDphi), s2 = Math.sin(halfDlambda);
        final double h = s1 * s1 + Math.cos(phi1) * Math.cos(phi2) * s2 * s2;
        return 2.0 * EARTH_RADIUS_KM * Math.asin(Math.sqrt(Math.min(h, 1.0)));
    }

    static boolean isLogin(String action) { return action.equals("login") || action.equals("login_failed"); }

    // ---------------------------------------------------------------- the detection step

    /**
     * Per user: events wait in keyed state for their millisecond; when the watermark passes it,
     * they enter the windows together, get their ten features, and are decided against the
     * model and rules in force at that time, and the user's block.
     */
    public static class Detect extends KeyedBroadcastProcessFunction<String, Event, Control, String> {
        final String[] ruleFields;
        final String countryCenters;
        transient ValueState<UserState> state;
        transient ControlIndex index;
        transient Map<String, Integer> centers;

        Detect(String[] ruleFields, String countryCenters) { this.ruleFields = ruleFields; this.countryCenters = countryCenters; }

        @Override
        public void open(OpenContext ctx) throws IOException {
            state = getRuntimeContext().getState(new ValueStateDescriptor<>("user", TypeInformation.of(UserState.class)));
            centers = countryCenters(countryCenters);
        }

        @Override
        public void processBroadcastElement(Control c, Context ctx, Collector<String> out) throws Exception {
            final BroadcastState<Integer, Control> control = ctx.getBroadcastState(CONTROL);
            control.put(c.seq, c);
            index = null;
        }

        @Override
        public void processElement(Event e, ReadOnlyContext ctx, Collector<String> out) throws Exception {
            UserState s = state.value();
            if (s == null) { s = new UserState(); state.update(s); }
            s.pending.computeIfAbsent(e.time, t -> new ArrayList<>()).add(e);
            ctx.timerService().registerEventTimeTimer(e.time);
        }

        @Override
        public void onTimer(long t, OnTimerContext ctx, Collector<String> out) throws Exception {
            final UserState s = state.value();
            final ArrayList<Event> events = s.pending.remove(t);
            if (events == null) return;
            if (index == null) index = new ControlIndex(ctx.getBroadcastState(CONTROL).immutableEntries());
            final InForce inForce = index.at(t);

            // 1. what is "strictly before t": new countries and the travel from the last located login
            final long[] newCountry = new long[events.size()], travel = new long[events.size()];
            final int[] places = new int[events.size()];
            for (int i = 0; i < events.size(); i++) {
                final Event e = events.get(i);
                newCountry[i] = e.country != null && !s.countriesSeen.seen(e.country, t) ? 1 : 0;
                final Integer p = e.country == null ? null : centers.get(e.country);
                places[i] = p != null && isLogin(e.action) ? p : -1;
                if (places[i] >= 0 && s.travelTime >= 0 && s.travelTime > t - DAY) {
                    final double hours = (t - s.travelTime) / (double) HOUR;
                    for (int from : s.travelPlaces) travel[i] = Math.max(travel[i], (long) Math.floor(distanceKm(from, places[i]) / hours));
                }
            }
            // 2. the millisecond's events enter the windows
            final TreeSet<Integer> located = new TreeSet<>();
            for (int i = 0; i < events.size(); i++) {
                final Event e = events.get(i);
                switch (e.action) {
                    case "login_failed": s.failedLogins.add(t, 1); break;
                    case "login": s.logins.add(t, 1); break;
                    case "download": s.downloadBytes.add(t, Math.min(e.bytes, MAX_DOWNLOAD_BYTES)); break;
                    case "share_external": s.externalShares.add(t, 1); break;
                    case "delete": s.deletes.add(t, 1); break;
                    case "permission_change": case "admin_action": s.privilegeChanges.add(t, 1); break;
                    default: break;
                }
                if (e.country != null) {
                    if (isLogin(e.action)) s.countries.add(e.country, t);
                    s.countriesSeen.add(e.country, t);
                }
                if (e.resource != null) s.resources.add(e.resource, t);
                if (places[i] >= 0) located.add(places[i]);
            }
            if (!located.isEmpty()) {
                s.travelTime = t;
                s.travelPlaces = located.stream().mapToInt(Integer::intValue).toArray();
            }
            final long[] window = {
                s.failedLogins.at(t), s.logins.at(t), s.countries.count(t), 0, s.downloadBytes.at(t),
                s.externalShares.at(t), s.deletes.at(t), s.privilegeChanges.at(t), s.resources.count(t), 0
            };
            // 3. decisions; a block starts after this millisecond
            final boolean blocked = s.blockFrom < t && t <= s.blockUntil;
            String blocker = null;
            for (int i = 0; i < events.size(); i++) {
                final Event e = events.get(i);
                final long[] x = window.clone();
                x[3] = newCountry[i];
                x[9] = travel[i];
                if (blocked) {
                    out.collect(decision(e, "blocked", x, null, Double.NaN, List.of(), List.of(), s.blockedBy, s.blockUntil));
                    continue;
                }
                double score = Double.NaN;
                boolean flagged = false;
                if (inForce.model != null) {
                    final Control m = inForce.model;
                    double z = m.bias;
                    for (int j = 0; j < m.weights.length; j++) z += m.weights[j] * Math.log1p((double) x[featureIndex(m.modelFeatures[j])]);
                    score = 1.0 / (1.0 + Math.exp(-z));
                    flagged = score >= m.threshold;
                }
                final TreeSet<String> rules = new TreeSet<>(), actions = new TreeSet<>();
                for (Control r : inForce.rules) {
                    if (matches(r, e, x)) { rules.add(r.ruleId); actions.addAll(Arrays.asList(r.actions)); }
                }
                if (flagged) actions.add("alert");
                if (!flagged && rules.isEmpty()) continue;
                final boolean blocks = actions.contains("block");
                out.collect(decision(e, "threat", x, inForce.model, score, rules, actions, null, blocks ? t + BLOCK_FOR : null));
                if (blocks && (blocker == null || e.eventId.compareTo(blocker) < 0)) blocker = e.eventId;
            }
            if (blocker != null) { s.blockFrom = t; s.blockUntil = t + BLOCK_FOR; s.blockedBy = blocker; }
        }

        boolean matches(Control r, Event e, long[] x) {
            for (int i = 0; i < r.whenFields.length; i++) {
                final String text = e.texts[Arrays.binarySearch(ruleFields, r.whenFields[i])];
                if (text == null || !Arrays.asList(r.whenValues[i]).contains(text)) return false;
            }
            for (int i = 0; i < r.boundFeatures.length; i++) {
                final double v = x[r.boundFeatures[i]];
                if (r.lowStrict[i] ? !(v > r.boundLow[i]) : !(v >= r.boundLow[i])) return false;
                if (r.highStrict[i] ? !(v < r.boundHigh[i]) : !(v <= r.boundHigh[i])) return false;
            }
            return true;
        }
    }

    /** A decision as a JSON line, with the fields the comparison checks. */
    static String decision(Event e, String verdict, long[] x, Control model, double score,
                           java.util.Collection<String> rules, java.util.Collection<String> actions,
                           String blockedBy, Long blockedUntil) {
        final ObjectNode d = JSON.createObjectNode();
        d.put("decision_id", Xxh3.hex128((e.eventId + "\0" + verdict).getBytes(StandardCharsets.UTF_8)));
        d.put("event_id", e.eventId);
        d.put("user", e.user);
        d.put("ts", e.time);
        d.put("verdict", verdict);
        if (model != null) d.put("score", score); else d.putNull("score");
        if (model != null) d.put("model_version", model.modelVersion); else d.putNull("model_version");
        final ArrayNode r = d.putArray("rules");
        rules.forEach(r::add);
        final ObjectNode f = d.putObject("features");
        for (int i = 0; i < FEATURES.length; i++) f.put(FEATURES[i], x[i]);
        final ArrayNode a = d.putArray("actions");
        actions.forEach(a::add);
        d.put("late", e.late);
        d.put("blocked_by", blockedBy);
        d.put("blocked_until", blockedUntil);
        return d.toString();
    }

    // ---------------------------------------------------------------- output

    /** Each subtask writes its decisions to OUT_DIR/decisions-<subtask>.jsonl. */
    public static class DecisionFiles implements Sink<String> {
        final String dir;
        DecisionFiles(String dir) { this.dir = dir; }

        @Override
        public SinkWriter<String> createWriter(WriterInitContext ctx) throws IOException {
            final Path path = Paths.get(dir, "decisions-" + ctx.getTaskInfo().getIndexOfThisSubtask() + ".jsonl");
            final BufferedWriter w = Files.newBufferedWriter(path, StandardCharsets.UTF_8);
            return new SinkWriter<String>() {
                @Override public void write(String line, Context c) throws IOException { w.write(line); w.write('\n'); }
                @Override public void flush(boolean endOfInput) throws IOException { w.flush(); }
                @Override public void close() throws IOException { w.close(); }
            };
        }
    }

    // ---------------------------------------------------------------- main

    public static void main(String[] args) throws Exception {
        if (args.length != 7) {
            System.err.println("usage: ThreatJob EVENTS MODEL UPDATES RULES COUNTRY_CENTERS_CSV OUT_DIR P");
            System.exit(2);
        }
        final String events = args[0], outDir = args[5], centers = args[4];
        final int p = Integer.parseInt(args[6]);
        final List<Control> control = readControl(args[1], args[2], args[3]);
        final String[] ruleFields = ruleFields(control);
        Files.createDirectories(Paths.get(outDir));

        final Configuration conf = new Configuration();
        conf.set(TaskManagerOptions.NUM_TASK_SLOTS, p);
        conf.set(TaskManagerOptions.MANAGED_MEMORY_SIZE, MemorySize.parse("128m"));
        conf.set(StateBackendOptions.STATE_BACKEND, "hashmap");
        conf.set(CoreOptions.DEFAULT_PARALLELISM, p);
        conf.set(PipelineOptions.OBJECT_REUSE, true);
        final StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment(conf);
        env.setParallelism(p);

        final DataStream<Event> judged = env
                .addSource(new Partition(events, ruleFields), "partition", TypeInformation.of(Event.class))
                .setParallelism(1);
        final BroadcastStream<Control> controls = env
                .fromData(TypeInformation.of(Control.class), control.toArray(new Control[0]))
                .setParallelism(1)
                .broadcast(CONTROL);
        judged.keyBy((Event e) -> e.user, Types.STRING)
                .connect(controls)
                .process(new Detect(ruleFields, centers))
                .returns(Types.STRING)
                .name("detect")
                .sinkTo(new DecisionFiles(outDir))
                .name("decisions");

        final long t0 = System.nanoTime();
        final JobExecutionResult r = env.execute("threatflow-real-job");
        final double seconds = (System.nanoTime() - t0) / 1e9;
        System.out.println("{\"engine\":\"flink\",\"flink_version\":\"2.3.0\",\"parallelism\":" + p
                + ",\"seconds\":" + String.format("%.3f", seconds)
                + ",\"job_net_runtime_seconds\":" + String.format("%.3f", r.getNetRuntime() / 1e3)
                + ",\"rejected\":" + r.getAccumulatorResult("rejected")
                + ",\"late\":" + r.getAccumulatorResult("late") + "}");
    }
}
