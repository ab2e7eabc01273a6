#!/usr/bin/env bash
# Regenerates BENCHMARKS.md and its plots (docs/benchmarks/*.svg) on this machine:
#   - throughput vs workers: `threatflow run` (threat dataflow, generator) and the Flink comparison
#     workload (`--example flink_compare`, the checksums of docs/flink-workload.md#reference-values checked), three runs each; the
#     same workload on Apache Flink 2.3 (experiments/flink_compare.sh) when Java is installed;
#   - the threat dataflow itself as a Flink job against `threatflow replay`, with the decisions
#     compared (experiments/flink_real_job.sh), when Java is installed;
#   - open-loop latency sweeps of the threat dataflow on 1 and 2 workers (experiments/openloop.rs),
#     then three runs at half of the saturation rate found (the one with the median p99 reported);
#   - memory per active user at 100k and 1M users (peak RSS);
#   - end to end through the Kafka-compatible broker (experiments/kafka_end_to_end.sh);
#   - providers' raw records read back from files, per format (experiments/raw_path.sh);
#   - where the time goes at saturation: a perf profile of `threatflow run -w 1`, when perf works.
# Nothing else should run on the machine meanwhile.
# Usage: experiments/benchmarks.sh [--quick]   (--quick: smaller runs, for checking the script)
set -euo pipefail
cd "$(dirname "$0")/.."
quick=${1:-}
out=target/benchmarks
mkdir -p "$out" docs/benchmarks
rm -f "$out"/*.jsonl "$out"/*.txt "$out"/*.json
export RUST_LOG=${RUST_LOG:-warn}
cargo build --release --quiet --bins --examples
tf=./target/release/threatflow

if [ "$quick" = "--quick" ]; then
  events=1000000 compare=1000000 runs=1 seconds=4 warmup=1 step=2 big_users=200000 big_events=1000000 kafka_events=100000 kafka_seconds=4 raw_events=100000 real_job_events=100000
else
  events=10000000 compare=10000000 runs=3 seconds=10 warmup=2 step=1.25 big_users=1000000 big_events=10000000 kafka_events=1000000 kafka_seconds=10 raw_events=300000 real_job_events=1000000
fi

# `seconds` in a report is the dataflow's time; `process_seconds` the whole process's wall time.
timed() {
  /usr/bin/time -f "%e" -o "$out/wall.txt" "$@" >"$out/run.json"
  python3 -c "import json,sys; r=json.load(open('$out/run.json')); r.update(json.loads(sys.argv[1])); r['process_seconds']=float(open('$out/wall.txt').read().split()[-1]); print(json.dumps(r))" "$extra"
}

echo "== throughput vs workers" >&2
for w in 1 2; do
  for _ in $(seq "$runs"); do
    extra="{\"workload\": \"threat\", \"workers\": $w}" timed $tf run --users 100000 --events "$events" -w "$w" --json >>"$out/throughput.jsonl"
    extra="{\"workload\": \"flink-compare\", \"workers\": $w}" timed ./target/release/examples/flink_compare --events "$compare" -w "$w" --json >>"$out/throughput.jsonl"
  done
done
if command -v java >/dev/null 2>&1 && command -v javac >/dev/null 2>&1; then
  echo "== the same workload on Apache Flink" >&2
  RUNS=$runs STARTUP_RUN=0 experiments/flink_compare.sh "$compare" 1 2 \
    | python3 -c "
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    r.update(workload='flink-compare on Apache Flink ' + r['flink_version'], workers=r['parallelism'])
    print(json.dumps(r))" >>"$out/throughput.jsonl"
  echo "== the threat dataflow on Apache Flink" >&2
  experiments/flink_real_job.sh "$real_job_events" 10000 "$runs" >/dev/null
else
  echo "Java is not installed: the Flink side is left out" >&2
fi

echo "== open-loop latency sweeps" >&2
for w in 1 2; do
  ./target/release/examples/openloop --sweep --rate $((50000 * w)) --step "$step" --seconds "$seconds" --warmup "$warmup" -w "$w" --json >"$out/sweep-w$w.jsonl"
  # Half of the highest rate kept up with (achieved >= 95 % of offered, p99 <= 1 s).
  half=$(python3 -c "
import json
kept = [r['offered_per_second'] for r in map(json.loads, open('$out/sweep-w$w.jsonl')) if r['achieved_per_second'] >= 0.95 * r['offered_per_second'] and r['latency_ms']['p99'] <= 1000]
print(int(max(kept, default=100000) / 2))")
  # Repeated like the throughput runs: one noisy second of a shared host should not be the figure.
  for _ in $(seq "$runs"); do
    ./target/release/examples/openloop --rate "$half" --seconds "$seconds" --warmup "$warmup" -w "$w" --json >>"$out/half-w$w.json"
  done
done

echo "== memory per active user" >&2
for spec in "100000 $((big_events / 10))" "$big_users $big_events"; do
  set -- $spec
  /usr/bin/time -f "%M" -o "$out/rss.txt" $tf run --users "$1" --events "$2" -w 2 --json >/dev/null
  echo "{\"users\": $1, \"events\": $2, \"peak_rss_kb\": $(tail -n 1 "$out/rss.txt")}" >>"$out/memory.jsonl"
done

echo "== through the broker" >&2
experiments/kafka_end_to_end.sh "$kafka_events" 2 "$kafka_seconds" 12500 25000 50000 100000 200000 >"$out/kafka.jsonl"

echo "== providers' raw records" >&2
experiments/raw_path.sh "$raw_events" "$runs" >/dev/null

if perf stat -e task-clock true >/dev/null 2>&1; then
  echo "== where the time goes at saturation" >&2
  perf record -q -F 499 --call-graph dwarf,16384 -o "$out/perf.data" $tf run --users 100000 --events $((events / 5)) -w 1 --json >/dev/null 2>&1
  perf report -i "$out/perf.data" --children --sort symbol -g none 2>/dev/null >"$out/profile.txt" || true
fi

./target/release/examples/plots "$out"
