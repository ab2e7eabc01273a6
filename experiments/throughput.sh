#!/usr/bin/env bash
# Throughput and peak memory of `threatflow run` (release build) on 1 and 2 workers.
# Usage: experiments/throughput.sh [EVENTS] [USERS]
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-10000000}
users=${2:-100000}
cargo build --release --quiet
for workers in 1 2; do
  echo "== -w $workers: $events events, $users users"
  /usr/bin/time -f "peak RSS %M KB, wall %e s" \
    ./target/release/threatflow run --users "$users" --events "$events" -w "$workers" --json 2>&1 \
    | grep -v ' INFO '
done
