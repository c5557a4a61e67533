# lib.sh - helpers shared by the bench scripts (bash). Source it; do not run it.
#
# Everything works under one temporary directory per script (removed on exit
# unless KEEP=1), touches no network, and every loop is bounded.
#
# Binaries: the release build of this workspace,
#   cargo build --release -p backoffice-cli --examples --bins
# under $CARGO_TARGET_DIR (default: <repo>/target). Set SKIP_BUILD=1 to use
# what is there. PROFILE=debug (with SKIP_BUILD=1) uses the debug build, for
# scripts whose output is not a timing (screenshots).

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$BENCH_DIR/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
BO="$TARGET_DIR/${PROFILE:-release}/backoffice"
HOST="${BENCH_HOST:-$TARGET_DIR/${PROFILE:-release}/examples/host}"  # BENCH_HOST: another build, for A/B runs
export USER="${USER:-bench}"          # "fossil init" refuses to run without it
FOSSIL="${FOSSIL:-fossil}"

build_release() {
  if [ "${SKIP_BUILD:-0}" != 1 ]; then
    (cd "$REPO_ROOT" && cargo build --release -q -p backoffice-cli --examples --bins) || {
      echo "error=build failed"; exit 1; }
  fi
  [ -x "$BO" ] && [ -x "$HOST" ] || { echo "error=missing $BO or $HOST"; exit 1; }
}

# A fresh work directory in $W, removed on exit unless KEEP=1.
make_workdir() {
  W=$(mktemp -d "${TMPDIR:-/tmp}/bo-bench-$1.XXXXXX") || exit 1
  if [ "${KEEP:-0}" = 1 ]; then
    echo "workdir=$W"
  else
    trap 'rm -rf "$W"' EXIT
  fi
}

# Wall clock without a fork: microseconds / nanoseconds since the epoch.
now_us() { local t=$EPOCHREALTIME; echo "${t/./}"; }
now_ns() { local t=$EPOCHREALTIME; echo "${t/./}000"; }
ms_since() { # START_US -> elapsed ms with 1 decimal
  awk -v a="$1" -v b="$(now_us)" 'BEGIN{printf "%.1f", (b-a)/1000}'
}

# median of the numbers given as arguments (any order)
median() {
  printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {
    if (NR == 0) { print "nan"; exit }
    if (NR % 2) print a[(NR+1)/2]; else printf "%.10g\n", (a[NR/2]+a[NR/2+1])/2 }'
}
# min / max of the arguments
minimum() { printf '%s\n' "$@" | sort -g | head -1; }
maximum() { printf '%s\n' "$@" | sort -g | tail -1; }

# copy_to TEMPLATE DEST... : copies one file to many with one `tee` per 500
# destinations (thousands of `cp` processes would take longer than the sweep).
copy_to() {
  local tpl=$1; shift
  printf '%s\0' "$@" | xargs -0 -n 500 sh -c 'tee "$@" < "$0" > /dev/null' "$tpl"
}

# True while PID exists and is not a zombie (a zombie has finished its work;
# on this VM init reaps orphans only every second or two).
alive() {
  local line rest state
  { read -r line < "/proc/$1/stat"; } 2>/dev/null || return 1
  rest=${line##*) }
  state=${rest%% *}
  [ "$state" != Z ]
}

# wait_gone PID [LIMIT_S=30]: wait until PID has exited (bounded).
wait_gone() {
  local pid=$1 limit=${2:-30} i
  for i in $(seq 1 $((limit * 100))); do
    alive "$pid" || return 0
    sleep 0.01
  done
  return 1
}

# Header lines for a results file.
describe_machine() {
  echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit=$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "cpus=$(nproc) kernel=$(uname -r) loadavg=\"$(cut -d' ' -f1-3 /proc/loadavg)\""
}
