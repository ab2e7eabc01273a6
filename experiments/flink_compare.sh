#!/usr/bin/env bash
# Apache Flink 2.3 side of the threat-detection benchmark (docs/flink-workload.md).
#
# Usage: experiments/flink_compare.sh [N] [P...]        (defaults: N=10000000, P="1 2")
#   env: FLINK_CACHE  where Flink jars and compiled classes live
#                     (default ~/.cache/threatflow-flink; never inside the repository)
#        RUNS         runs per P (default 1)
#        STARTUP_RUN  1 (default): first run the job once with N=16 per P, to show the
#                     JVM + MiniCluster start/stop cost on its own; 0 skips it
#        USERS        default 100000
#
# What it does:
#   1. Fetches Apache Flink 2.3.0 when missing (experiments/flink/env.sh).
#   2. Compiles experiments/flink/ThreatBench.java with javac into $FLINK_CACHE/classes.
#   3. Runs the job on a local MiniCluster (one JVM, P task slots, heap state backend, no
#      checkpointing) for each P and prints one JSON line per run (process_seconds, added
#      here, is the wall time of the whole java process).
#   4. Checks flagged / per_version / checksum_idx / checksum_user against docs/flink-workload.md#reference-values
#      (table below; for any other N, against the sequential reference `ThreatBench --check-seq`)
#      and exits non-zero on any mismatch.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${1:-10000000}
shift || true
PS=("$@")
[ ${#PS[@]} -eq 0 ] && PS=(1 2)
USERS=${USERS:-100000}
RUNS=${RUNS:-1}
STARTUP_RUN=${STARTUP_RUN:-1}
SRC=experiments/flink/ThreatBench.java

source experiments/flink/env.sh   # defines FLINK_CACHE, FLINK_LIB, FLINK_JVM_FLAGS, flink_compile
CLASSES=$FLINK_CACHE/classes
flink_compile "$CLASSES" "$SRC"

# --- run ------------------------------------------------------------------------------------
JVM_OPTS=("${FLINK_JVM_FLAGS[@]}" -cp "$CLASSES:$FLINK_LIB/*")

# Reference decisions, docs/flink-workload.md#reference-values (USERS = 100000):
# "flagged","per_version","checksum_idx","checksum_user" exactly as ThreatBench prints them.
reference() {
  case "$1" in
    100000)   echo '"flagged":415,"per_version":[7,45,149,214],"checksum_idx":29585020,"checksum_user":71660456' ;;
    1000000)  echo '"flagged":5939,"per_version":[528,1559,1318,2534],"checksum_idx":3720996959,"checksum_user":795006468' ;;
    5000000)  echo '"flagged":36439,"per_version":[4537,9232,9876,12794],"checksum_idx":107786028509,"checksum_user":5163019889' ;;
    10000000) echo '"flagged":86551,"per_version":[11932,23226,25344,26049],"checksum_idx":492324420241,"checksum_user":13014825624' ;;
    *)        # not in the table: the plain sequential reference loop in ThreatBench.java
              java -cp "$CLASSES:$FLINK_LIB/*" ThreatBench --check-seq "$1" "$USERS" \
                | grep -o '"flagged":.*"checksum_user":[0-9]*' ;;
  esac
}

failures=0
run() {  # run N P
  local n=$1 p=$2 t0 t1 line expected
  if [ "$USERS" = 100000 ]; then expected=$(reference "$n"); else
    expected=$(java -cp "$CLASSES:$FLINK_LIB/*" ThreatBench --check-seq "$n" "$USERS" \
                 | grep -o '"flagged":.*"checksum_user":[0-9]*'); fi
  t0=$(date +%s.%N)
  line=$(java "${JVM_OPTS[@]}" ThreatBench "$n" "$p" "$USERS")
  t1=$(date +%s.%N)
  echo "${line%\}},\"process_seconds\":$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')}"
  if [[ "$line" != *"$expected"* ]]; then
    echo "CHECKSUM MISMATCH for N=$n P=$p: expected $expected" >&2
    failures=$((failures + 1))
  fi
}

for p in "${PS[@]}"; do
  [ "$STARTUP_RUN" = 1 ] && run 16 "$p"
  for ((i = 1; i <= RUNS; i++)); do
    run "$N" "$p"
  done
done

if [ "$failures" -ne 0 ]; then
  echo "$failures run(s) did not match the reference checksums" >&2
  exit 1
fi
echo "all runs match the reference checksums (N=$N)" >&2
