#!/usr/bin/env bash
# Runs every benchmark and writes bench/results/*.txt (key=value lines).
#
#   usage: bench/run_all.sh            (about 8 minutes on 2 cores)
#
# Environment: CARGO_TARGET_DIR (where the release build is), SKIP_BUILD=1,
# SKIP_DIVAN=1 (skip `cargo bench`), TRIGGER_RUNS (default 20),
# SWEEP_RUNS (default 3), FOSSIL_FULL=1 to also run the shared Fossil
# script ../shared/bench/fossil/a_backoffice_cycle.sh 1000 (about 1-2 min;
# FOSSIL_BENCH names another folder holding it).
set -u
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
OUT="$here/results"
mkdir -p "$OUT"
build_release
export SKIP_BUILD=1

run() { # NAME CMD...
  local name=$1; shift
  echo "== $name: $*"
  { describe_machine; echo "command=$*"; "$@"; } 2>&1 | tee "$OUT/$name.txt"
}

if [ "${SKIP_DIVAN:-0}" != 1 ]; then
  # Three runs of the check benchmark: the machine is shared and noisy.
  for k in 1 2 3; do
    run "check_run$k" bash -c "cd '$REPO_ROOT' && cargo bench -q -p backoffice --bench check -- --color never"
  done
  echo "== check_summary"
  { describe_machine; echo "command=bench/check_summary.py bench/results/check_run1.txt check_run2.txt check_run3.txt";
    python3 "$here/check_summary.py" "$OUT"/check_run[123].txt; } | tee "$OUT/check_summary.txt"
fi
run sweep_1000 "$here/sweep.sh" 1000 "${SWEEP_RUNS:-3}"
run sweep_10000 "$here/sweep.sh" 10000 "${SWEEP_RUNS:-3}"
run trigger_latency "$here/trigger_latency.sh" "${TRIGGER_RUNS:-20}"
run memory "$here/memory.sh" 1000 3
run notify "$here/notify.sh" 10000 3
run replicate "$here/replicate.sh" "${REPLICATE_MB:-1024}" 10
# The web front (needs wrk; FOSSIL=0 skips Fossil's side of part b, which
# takes about 2 minutes) and the status page in headless Chromium.
if command -v wrk >/dev/null; then
  run web "$here/web.sh" 10 3
else
  echo "== web: skipped (needs wrk: apt-get install wrk)"
fi
if command -v chromium >/dev/null; then
  run screenshot "$here/screenshot.sh" "$OUT/status-page.png"
else
  echo "== screenshot: skipped (needs chromium: apt-get install chromium)"
fi
if [ "${SKIP_DIVAN:-0}" != 1 ]; then
  run notify_publish bash -c "cd '$REPO_ROOT' && cargo bench -q -p backoffice --bench notify -- --color never"
fi
FOSSIL_BENCH="${FOSSIL_BENCH:-$REPO_ROOT/../shared/bench/fossil}"
if [ "${FOSSIL_FULL:-0}" = 1 ] && [ -x "$FOSSIL_BENCH/a_backoffice_cycle.sh" ]; then
  run fossil_a_cycle_1000 "$FOSSIL_BENCH/a_backoffice_cycle.sh" 1000 \
    "$(mktemp -u "${TMPDIR:-/tmp}/bo-bench-fossil-a.XXXXXX")"
fi
echo "results in $OUT"
