#!/usr/bin/env bash
# Peak memory (max RSS) of one process, from /usr/bin/time -f %M (getrusage's
# ru_maxrss of the child, in KiB) or, without GNU time, from python3's
# resource.getrusage(RUSAGE_CHILDREN).
#
#   usage: memory.sh [ROWS=1000] [RUNS=3]
#
# Cases (each run on a fresh copy, RUNS times, median printed):
#   host-run-rows      `host run --nodelay REPO` doing one run over ROWS
#                      pending outbox rows (takes the lease, works, releases)
#   bo-run-idle        `backoffice run REPO` on an idle repository (no tasks:
#                      takes the lease, runs nothing, releases)
#   host-trigger-idle  `host trigger REPO` with nothing due (the request side)
#   host-worker-rows   `host worker REPO`, the detached worker itself, over
#                      ROWS pending rows (what a trigger leaves running)
#   bo-sweep-1000      `backoffice run R1..R1000` over idle repositories
#                      (8 threads by default)
#   floor              `backoffice --version`
#   fossil-backoffice  `fossil backoffice --nodelay REPO` on a fresh `fossil
#                      init` repository (takes the lease, empty work), when
#                      `fossil` exists
set -u
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

ROWS=${1:-1000}
RUNS=${2:-3}
build_release
make_workdir memory

if [ -x /usr/bin/time ] && /usr/bin/time -f %M true >/dev/null 2>&1; then
  METHOD="/usr/bin/time -f %M"
  maxrss() { # CMD... -> prints KiB; command output discarded
    /usr/bin/time -f %M -o "$W/rss" "$@" >/dev/null 2>"$W/stderr"
    local rc=$?; tail -1 "$W/rss"; return $rc
  }
else
  METHOD="python3 getrusage(RUSAGE_CHILDREN)"
  maxrss() {
    python3 - "$@" <<'EOF' 2>"$W/stderr"
import resource, subprocess, sys
rc = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(rc)
EOF
  }
fi
echo "method=\"$METHOD\" rows=$ROWS runs=$RUNS"

"$HOST" init "$W/t-rows.db" || exit 1
sqlite3 "$W/t-rows.db" "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < $ROWS)
  INSERT INTO outbox(body) SELECT printf('message %d: %s', i, hex(randomblob(64))) FROM n;" || exit 1
sqlite3 "$W/t-idle.db" "CREATE TABLE config(name TEXT PRIMARY KEY NOT NULL, value CLOB, mtime DATE,
  CHECK( typeof(name)='text' AND length(name)>=1 ));" || exit 1
"$HOST" init "$W/t-hostidle.db" || exit 1
sweep_repos=()
for i in $(seq 1 1000); do sweep_repos+=("$W/s$i.db"); done

measure() { # LABEL SETUP-FN CMD...
  local label=$1 setup=$2; shift 2
  local k kb vals=()
  for k in $(seq 1 "$RUNS"); do
    "$setup"
    kb=$(maxrss "$@") || echo "warning=$label run $k exited non-zero: $(head -c 300 "$W/stderr")"
    vals+=("$kb")
    echo "case=$label run=$k max_rss_kib=$kb"
  done
  echo "case=$label median_max_rss_kib=$(median "${vals[@]}") max_max_rss_kib=$(maximum "${vals[@]}")"
}

setup_rows() { cp "$W/t-rows.db" "$W/r.db"; }
setup_idle() { cp "$W/t-idle.db" "$W/i.db"; }
setup_hostidle() { cp "$W/t-hostidle.db" "$W/h.db"; }
setup_sweep() { rm -f "$W"/s*.db; copy_to "$W/t-idle.db" "${sweep_repos[@]}"; }
noop() { :; }

measure host-run-rows setup_rows "$HOST" run --nodelay "$W/r.db"
left=$(sqlite3 "$W/r.db" "SELECT count(*) FROM outbox WHERE done=0")
echo "case=host-run-rows pending_left=$left"
measure host-worker-rows setup_rows "$HOST" worker "$W/r.db"
echo "case=host-worker-rows pending_left=$(sqlite3 "$W/r.db" "SELECT count(*) FROM outbox WHERE done=0")"
measure bo-run-idle setup_idle "$BO" run "$W/i.db"
measure host-trigger-idle setup_hostidle "$HOST" trigger "$W/h.db"
measure bo-sweep-1000 setup_sweep "$BO" run "${sweep_repos[@]}"
measure floor noop "$BO" --version
if command -v "$FOSSIL" >/dev/null 2>&1 && "$FOSSIL" init -A admin "$W/t-fossil.fossil" >/dev/null; then
  setup_fossil() { cp "$W/t-fossil.fossil" "$W/f.fossil"; }
  measure fossil-backoffice setup_fossil "$FOSSIL" backoffice --nodelay "$W/f.fossil"
fi
