#!/usr/bin/env bash
# Checkpoint size, write time and restore time at a given number of active users: runs the
# generator job with checkpoints, kills it (-9) once a checkpoint holds ACTIVE users (default:
# 90 % of USERS), restarts it, and prints
# the figures from both logs (a checkpoint's users, entries, bytes and write time; the restart's
# read+verify+decode time and each worker's import of the feature windows).
# Usage: [ACTIVE=N] experiments/checkpoint_restore.sh [USERS] [EVENTS] [WORKERS] [INTERVAL]
set -euo pipefail
cd "$(dirname "$0")/.."
users=${1:-100000}
events=${2:-$((users * 8))}
workers=${3:-2}
interval=${4:-5s}
active=${ACTIVE:-$((users * 9 / 10))}
cargo build --release --quiet
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
run=(./target/release/threatflow run --users "$users" --events "$events" -w "$workers"
  --checkpoint-dir "$dir/checkpoints" --checkpoint-interval "$interval" --output "$dir/decisions.jsonl")
export RUST_LOG=info NO_COLOR=1
"${run[@]}" > /dev/null 2> "$dir/first.log" &
pid=$!
last_users() { grep -o 'checkpoint written.* users=[0-9]*' "$dir/first.log" | tail -1 | grep -o '[0-9]*$' || echo 0; }
while [ "$(last_users)" -lt "$active" ]; do
  kill -0 "$pid" 2> /dev/null || { echo "the run ended before a checkpoint held $active users: raise EVENTS"; exit 1; }
  sleep 0.1
done
kill -9 "$pid"
wait "$pid" 2> /dev/null || true
echo "== $users users, $events events, -w $workers: checkpoints written"
grep 'checkpoint written' "$dir/first.log" | sed 's/.*INFO //'
echo "== restart"
/usr/bin/time -f "restarted run: wall %e s, peak RSS %M KB" "${run[@]}" 2> "$dir/second.log" > /dev/null || true
grep -E 'resuming from a checkpoint|feature windows restored|restored: the output|restarted run' "$dir/second.log" | sed 's/.*INFO //'
