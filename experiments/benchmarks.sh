#!/usr/bin/env bash
# Regenerates BENCHMARKS.md and its plots (docs/benchmarks/*.svg) on this machine:
#   - throughput vs workers: `threatflow run` (threat dataflow, generator) and the Flink comparison
#     workload (`--workload flink-compare`, WORKLOAD.md's checksums checked);
#   - open-loop latency sweeps of the threat dataflow on 1 and 2 workers (experiments/openloop.rs);
#   - memory per active user at 100k and 1M users (peak RSS);
#   - end to end through the Kafka-compatible broker (experiments/kafka_end_to_end.sh).
# Usage: experiments/benchmarks.sh [--quick]   (--quick: smaller runs, for checking the script)
set -euo pipefail
cd "$(dirname "$0")/.."
quick=${1:-}
out=target/benchmarks
mkdir -p "$out" docs/benchmarks
rm -f "$out"/*.jsonl "$out"/*.txt
export RUST_LOG=${RUST_LOG:-warn}
cargo build --release --quiet --bins --examples
tf=./target/release/threatflow

if [ "$quick" = "--quick" ]; then
  events=1000000 compare=1000000 seconds=4 warmup=1 big_users=200000 big_events=1000000 kafka_events=100000
else
  events=5000000 compare=10000000 seconds=10 warmup=2 big_users=1000000 big_events=10000000 kafka_events=400000
fi

echo "== throughput vs workers" >&2
for w in 1 2; do
  $tf run --users 100000 --events "$events" -w "$w" --json \
    | python3 -c "import json,sys; r=json.load(sys.stdin); r.update(workload='threat', workers=$w); print(json.dumps(r))" >>"$out/throughput.jsonl"
  $tf run --workload flink-compare --events "$compare" -w "$w" --json \
    | python3 -c "import json,sys; r=json.load(sys.stdin); r.update(workers=$w); print(json.dumps(r))" >>"$out/throughput.jsonl"
done

echo "== open-loop latency sweeps" >&2
for w in 1 2; do
  ./target/release/examples/openloop --sweep --rate 25000 --seconds "$seconds" --warmup "$warmup" -w "$w" --json >"$out/sweep-w$w.jsonl"
done

echo "== memory per active user" >&2
for spec in "100000 $((big_events / 10))" "$big_users $big_events"; do
  set -- $spec
  /usr/bin/time -f "%M" -o "$out/rss.txt" $tf run --users "$1" --events "$2" -w 2 --json >/dev/null
  echo "{\"users\": $1, \"events\": $2, \"peak_rss_kb\": $(tail -n 1 "$out/rss.txt")}" >>"$out/memory.jsonl"
done

echo "== through the broker" >&2
experiments/kafka_end_to_end.sh "$kafka_events" 20000 2 2>&1 | grep -E '^(==|\{|engine:|decisions|latency)' >"$out/kafka.txt" || true

./target/release/examples/plots "$out"
