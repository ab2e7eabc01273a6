#!/usr/bin/env bash
# End to end through the broker: throughput of a bounded run over a pre-loaded topic, and latency
# from produce to decision consumed at fixed offered rates (open loop).
#
# Usage: experiments/kafka_end_to_end.sh [EVENTS] [WORKERS] [SECONDS] [RATE...]
#
# Throughput: EVENTS generated events are loaded into a 4-partition topic, then
# `threatflow run --kafka --until-end` reads them; the engine reports events/s (JSON line). The
# same for EVENTS raw CloudTrail records (`generate --format aws.cloudtrail`) with the SigmaHQ
# rules (`run --format aws.cloudtrail --rules-dir rules/sigma`).
# Latency, for each RATE (default 12500 25000 50000 100000 200000), on a fresh broker (its memory
# storage keeps every record and slows down as it grows): the engine follows a topic while
# `threatflow produce --retime --rate RATE` sends RATE x SECONDS generated events, each stamped
# with the wall-clock time it is sent, so event time follows the clock; the engine runs with
# `--allowed-lateness 0s` (a producer writes each partition in time order). A decision's latency is
# the time `threatflow consume --follow` received it minus the produce timestamp of its event's
# record (both wall clock, this machine). Decisions of events produced in the first 2 s (clients
# discovering the new topics) and the last second are left out. One JSON line per rate, with the
# rate the producer achieved; before it, the same measurement of the broker alone (records
# produced to a topic and consumed, no engine), the floor of one hop.
# KEEP=1 keeps the raw records (printed path).
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-1000000}
workers=${2:-2}
seconds=${3:-10}
shift $(( $# < 3 ? $# : 3 ))
rates=("${@:-}")
[ -n "${rates[0]}" ] || rates=(12500 25000 50000 100000 200000)
export BROKER_PORT=${BROKER_PORT:-19093} BROKER_DIR=${BROKER_DIR:-target/broker-e2e}
export RUST_LOG=${RUST_LOG:-warn}
tf=./target/release/threatflow
kafka="--kafka 127.0.0.1:${BROKER_PORT}"
work=$(mktemp -d)
trap 'scripts/broker stop >/dev/null; if [ -n "${KEEP:-}" ]; then echo "records in $work" >&2; else rm -rf "$work"; fi' EXIT
cargo build --release --quiet
scripts/broker stop >/dev/null 2>&1 || true
scripts/broker start memory >&2

echo "== throughput: $events events pre-loaded in 4 partitions, -w $workers" >&2
$tf produce $kafka --create-topics --topic-partitions 4 --topic bulk --events "$events" 2>/dev/null
/usr/bin/time -f "%M" -o "$work/rss" \
  $tf run $kafka --create-topics --topic activity=bulk --topic decisions=bulk-decisions --until-end --json -w "$workers" >"$work/bulk.json"
python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(json.dumps({'kind': 'kafka-throughput', 'workers': $workers, 'events': r['events'], 'events_per_second': r['events_per_second'], 'decisions': r['decisions'], 'peak_rss_kb': int(open(sys.argv[2]).read().split()[-1])}))" "$work/bulk.json" "$work/rss"

echo "== throughput of providers' raw records: $events CloudTrail records in 4 partitions, the SigmaHQ rules, -w $workers" >&2
$tf generate --format aws.cloudtrail --users 10000 --events "$events" --out "$work/cloudtrail.jsonl" 2>/dev/null
# Each partition gets every fourth record, so each stays in time order.
awk -v dir="$work" '{ print > (dir "/cloudtrail-" (NR % 4) ".jsonl") }' "$work/cloudtrail.jsonl"
$tf produce $kafka --create-topics --topic-partitions 4 --topic raw-bulk $(for i in 0 1 2 3; do echo --input "$work/cloudtrail-$i.jsonl"; done) 2>/dev/null
/usr/bin/time -f "%M" -o "$work/rss" \
  $tf run $kafka --topic activity=raw-bulk --topic decisions=raw-bulk-decisions --create-topics --format aws.cloudtrail \
    --rules-dir rules/sigma --until-end --json -w "$workers" >"$work/raw-bulk.json"
python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(json.dumps({'kind': 'kafka-throughput', 'format': 'aws.cloudtrail', 'sigma_rules': True, 'workers': $workers, 'events': r['events'], 'events_per_second': r['events_per_second'], 'decisions': r['decisions'], 'peak_rss_kb': int(open(sys.argv[2]).read().split()[-1])}))" "$work/raw-bulk.json" "$work/rss"

for rate in "${rates[@]}"; do
  scripts/broker stop >/dev/null
  scripts/broker start memory 2>/dev/null
  echo "== the broker alone: $rate records/s for $seconds s, produce -> consume" >&2
  $tf consume $kafka --create-topics --topic raw-$rate --follow --timestamps --out "$work/raw-$rate.tsv" &
  consumer=$!
  sleep 2
  $tf produce $kafka --create-topics --topic-partitions 4 --topic raw-$rate --retime --events $((rate * seconds)) --rate "$rate" 2>/dev/null
  sleep 1
  kill -TERM "$consumer"
  wait "$consumer" || true
  python3 - "$work/raw-$rate.tsv" "$rate" <<'PY'
import json, sys
rows = [tuple(map(int, line.split("\t", 2)[:2])) for line in open(sys.argv[1])]
first, last = min(r[0] for r in rows), max(r[0] for r in rows)
lat = sorted(received - created for created, received in rows if first + 2000 <= created <= last - 1000)
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else None
print(json.dumps({"kind": "broker-latency", "offered_per_second": int(sys.argv[2]), "records_measured": len(lat),
                  "latency_ms": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "max": lat[-1] if lat else None}}))
PY

  echo "== latency: $rate events/s for $seconds s, -w $workers" >&2
  topic=live-$rate
  $tf run $kafka --create-topics --topic activity=$topic --topic decisions=$topic-decisions --allowed-lateness 0s -w "$workers" --json >"$work/report-$rate.json" &
  engine=$!
  $tf consume $kafka --create-topics --topic $topic-decisions --follow --timestamps --out "$work/decisions-$rate.tsv" &
  consumer=$!
  sleep 2
  produce_started=$(date +%s%N)
  $tf produce $kafka --create-topics --topic-partitions 4 --topic $topic --retime --events $((rate * seconds)) --rate "$rate" 2>/dev/null
  produce_ns=$(( $(date +%s%N) - produce_started ))
  sleep 2
  kill -TERM "$consumer" "$engine"
  wait "$engine" "$consumer" || true
  $tf consume $kafka --topic $topic --timestamps --out "$work/activity-$rate.tsv"
  python3 - "$work/activity-$rate.tsv" "$work/decisions-$rate.tsv" "$rate" "$workers" "$produce_ns" <<'PY'
import json, sys
produced = {}
for line in open(sys.argv[1]):
    created, _, value = line.rstrip("\n").split("\t", 2)
    produced[json.loads(value)["event_id"]] = int(created)
first, last = min(produced.values()), max(produced.values())
lat = []
for line in open(sys.argv[2]):
    _, received, value = line.rstrip("\n").split("\t", 2)
    sent = produced.get(json.loads(value)["event_id"])
    if sent is not None and first + 2000 <= sent <= last - 1000:
        lat.append(int(received) - sent)
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else None
print(json.dumps({"kind": "kafka-latency", "workers": int(sys.argv[4]), "offered_per_second": int(sys.argv[3]),
                  "achieved_per_second": round(len(produced) * 1e9 / int(sys.argv[5])), "events": len(produced), "decisions_measured": len(lat),
                  "latency_ms": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "max": lat[-1] if lat else None}}))
PY
done
