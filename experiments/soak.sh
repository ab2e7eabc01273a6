#!/usr/bin/env bash
# Kill -9 soak: replays a generated file with checkpoints, kills the engine at random moments
# (0.2–2 s after each start) ROUNDS times per seed, alternating 1 and 2 workers, lets it finish,
# and compares the decisions and dead letters byte for byte with an uninterrupted run. The CI
# tests (tests/recovery.rs, tests/kafka.rs) do the same on fewer seeds.
# Usage: experiments/soak.sh [SEEDS] [ROUNDS] [EVENTS]
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-50}
rounds=${2:-5}
events=${3:-1000000}
cargo build --release --quiet
bin=./target/release/threatflow
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$bin" generate --users 2000 --events "$events" --seed 7 --out "$dir/events.jsonl"
printf 'not json\n' >> "$dir/events.jsonl"
# The command as an array, not a function: `&` must start the engine itself, so that `kill -9`
# reaches it.
replay=("$bin" replay --input "$dir/events.jsonl" --model models/default.json --rules rules/default.json)
mkdir -p "$dir/reference"
RUST_LOG=error "${replay[@]}" --output "$dir/reference/decisions.jsonl" --dead-letters "$dir/reference/dead.jsonl" > /dev/null
echo "reference: $(wc -l < "$dir/reference/decisions.jsonl") decisions"
failures=0
for seed in $(seq 1 "$seeds"); do
  out="$dir/seed-$seed"
  rm -rf "$out" && mkdir -p "$out"
  kills=0
  for round in $(seq 1 "$rounds"); do
    workers=$(( (seed + round) % 2 + 1 ))
    RUST_LOG=error "${replay[@]}" --output "$out/decisions.jsonl" --dead-letters "$out/dead.jsonl" \
      --checkpoint-dir "$out/checkpoints" --checkpoint-interval 200ms -w "$workers" > /dev/null &
    pid=$!
    sleep "$(awk -v s="$seed$round" 'BEGIN { srand(s); printf "%.2f", 0.2 + rand() * 1.8 }')"
    if kill -9 "$pid" 2> /dev/null; then kills=$((kills + 1)); fi
    wait "$pid" 2> /dev/null || true
  done
  RUST_LOG=error "${replay[@]}" --output "$out/decisions.jsonl" --dead-letters "$out/dead.jsonl" \
    --checkpoint-dir "$out/checkpoints" -w 2 > /dev/null
  if cmp -s "$dir/reference/decisions.jsonl" "$out/decisions.jsonl" && cmp -s "$dir/reference/dead.jsonl" "$out/dead.jsonl"; then
    echo "seed $seed: $kills kills, outputs identical"
  else
    echo "seed $seed: $kills kills, OUTPUTS DIFFER ($(wc -l < "$out/decisions.jsonl") decisions, $(wc -l < "$out/dead.jsonl") dead letters):"
    diff <(sort "$dir/reference/decisions.jsonl") <(sort "$out/decisions.jsonl") | head -4 | cut -c1-300 || true
    failures=$((failures + 1))
  fi
done
echo "$failures of $seeds seeds differ"
[ "$failures" -eq 0 ]
