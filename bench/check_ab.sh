#!/usr/bin/env bash
# A/B evidence for two possible library changes, from the check benchmark:
#   check/outbox_idle        vs parts/two_reads_one_txn   (the check's two
#       statements in one read transaction instead of one each)
#   parts/proc_stat_self     vs parts/proc_stat_stack_buffer  (reading
#       /proc/PID/stat into a stack buffer instead of read_to_string)
# Runs only those benchmarks, RUNS times (default 5) in one go, so each pair
# is measured under the same load; prints the median of the medians.
#
#   usage: check_ab.sh [RUNS=5]
set -u
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
RUNS=${1:-5}
make_workdir check-ab
(cd "$REPO_ROOT" && cargo bench -q -p backoffice --bench check --no-run) || exit 1
filter='outbox_idle|two_reads_one_txn|proc_stat_self|proc_stat_stack_buffer'
for k in $(seq 1 "$RUNS"); do
  (cd "$REPO_ROOT" && cargo bench -q -p backoffice --bench check -- --color never "$filter") \
    > "$W/run$k.txt" 2>/dev/null || exit 1
done
python3 "$here/check_summary.py" "$W"/run*.txt
