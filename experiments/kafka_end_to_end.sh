#!/usr/bin/env bash
# End-to-end through the broker: throughput of a bounded run over a pre-loaded topic, and latency
# from produce to decision consumed at a fixed offered rate (open loop).
#
# Usage: experiments/kafka_end_to_end.sh [EVENTS] [RATE] [WORKERS]
#
# Throughput: EVENTS generated events are loaded into a 4-partition topic, then
# `threatflow run --kafka --until-end` reads them; the engine reports events/s.
# Latency: the engine follows fresh topics while `threatflow produce --rate RATE` sends EVENTS
# events; each decision's latency is the time it was consumed minus the produce timestamp of its
# event's record (both wall clock, on this machine). Left out: decisions of events produced in the
# first second (warm-up: clients discovering the new topics) and of the last 2 % of the events
# (which wait for SIGTERM, since nothing comes after them to advance event time). KEEP=1 keeps
# the raw records (printed path).
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-1000000}
rate=${2:-20000}
workers=${3:-2}
export BROKER_PORT=${BROKER_PORT:-19093} BROKER_DIR=${BROKER_DIR:-target/broker-e2e}
export RUST_LOG=${RUST_LOG:-warn}
tf=./target/release/threatflow
kafka="--kafka 127.0.0.1:${BROKER_PORT}"
work=$(mktemp -d)
trap 'scripts/broker stop; if [ -n "${KEEP:-}" ]; then echo "records in $work"; else rm -rf "$work"; fi' EXIT
cargo build --release --quiet
scripts/broker stop >/dev/null 2>&1 || true
scripts/broker start memory

echo "== throughput: $events events pre-loaded in 4 partitions, -w $workers"
$tf produce $kafka --create-topics --topic-partitions 4 --topic bulk --events "$events" 2>/dev/null
/usr/bin/time -f "engine: peak RSS %M KB, wall %e s" \
  $tf run $kafka --create-topics --topic activity=bulk --topic decisions=bulk-decisions --until-end --json -w "$workers"
echo "decisions written: $($tf consume $kafka --topic bulk-decisions | wc -l)"

echo "== latency: $events events offered at $rate/s, -w $workers"
$tf run $kafka --create-topics --topic activity=live --topic decisions=live-decisions -w "$workers" --json >"$work/report.json" &
engine=$!
$tf consume $kafka --create-topics --topic live-decisions --follow --timestamps --out "$work/decisions.tsv" &
consumer=$!
$tf produce $kafka --create-topics --topic-partitions 4 --topic live --events "$events" --rate "$rate" 2>/dev/null
sleep 2
kill -TERM "$consumer" "$engine"
wait "$engine" "$consumer" || true
$tf consume $kafka --topic live --timestamps --out "$work/activity.tsv"
cat "$work/report.json"
python3 - "$work/activity.tsv" "$work/decisions.tsv" <<'PY'
import json, sys
produced, ts_of = {}, {}
for line in open(sys.argv[1]):
    created, _, value = line.rstrip("\n").split("\t", 2)
    e = json.loads(value)
    produced[e["event_id"]] = int(created)
    ts_of[e["event_id"]] = e["ts"]
cut = sorted(ts_of.values())[int(len(ts_of) * 0.98)]
warm = min(produced.values()) + 1000
lat = []
for line in open(sys.argv[2]):
    _, received, value = line.rstrip("\n").split("\t", 2)
    d = json.loads(value)
    if ts_of.get(d["event_id"], cut) < cut and produced[d["event_id"]] >= warm:
        lat.append(int(received) - produced[d["event_id"]])
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
print(f"latency over {len(lat)} decisions (ms): p50 {q(0.5)}  p90 {q(0.9)}  p99 {q(0.99)}  p99.9 {q(0.999)}  max {lat[-1]}")
PY
