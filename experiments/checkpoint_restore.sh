#!/usr/bin/env bash
# Checkpoint size, write time and restore time at a given number of active users: runs the
# generator job with checkpoints, kills it (-9) once it has written two, restarts it, and prints
# the figures from both logs (a checkpoint's users, entries, bytes and write time; the restart's
# read+verify+decode time and each worker's import of the feature windows).
# Usage: experiments/checkpoint_restore.sh [USERS] [EVENTS] [WORKERS] [INTERVAL]
set -euo pipefail
cd "$(dirname "$0")/.."
users=${1:-100000}
events=${2:-$((users * 8))}
workers=${3:-2}
interval=${4:-5s}
cargo build --release --quiet
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
run() {
  RUST_LOG=info NO_COLOR=1 ./target/release/threatflow run --users "$users" --events "$events" -w "$workers" \
    --checkpoint-dir "$dir/checkpoints" --checkpoint-interval "$interval" --output "$dir/decisions.jsonl"
}
run > /dev/null 2> "$dir/first.log" &
pid=$!
while [ "$(grep -c 'checkpoint written' "$dir/first.log" || true)" -lt 2 ]; do
  kill -0 "$pid" 2> /dev/null || { echo "the run ended before two checkpoints: raise EVENTS"; exit 1; }
  sleep 0.1
done
kill -9 "$pid"
wait "$pid" 2> /dev/null || true
echo "== $users users, $events events, -w $workers: checkpoints written"
grep 'checkpoint written' "$dir/first.log" | sed 's/.*INFO //'
echo "== restart"
/usr/bin/time -f "restarted run: wall %e s, peak RSS %M KB" run 2> "$dir/second.log" > /dev/null || true
grep -E 'resuming from a checkpoint|feature windows restored|restarted run' "$dir/second.log" | sed 's/.*INFO //'
