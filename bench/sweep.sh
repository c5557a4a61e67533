#!/usr/bin/env bash
# One `backoffice run R1..RN` sweep over N idle repositories.
#
#   usage: sweep.sh N [RUNS=3]
#
# Rows printed (key=value):
#   case=idle-sqlite   N copies of a minimal SQLite repository (Fossil's
#                      `config` table only) that one `backoffice run` has
#                      serviced (so it holds the due summary); nothing is
#                      due, so each visit opens the file, reads the summary
#                      with one statement, and leaves it alone (no write).
#                      This is the number the target (<= 0.1 s for 1000) is for.
#   case=idle-schedule the same with one schedule (issue 15) whose next slot
#                      is tomorrow: the summary answers with its time, so
#                      the schedule costs the sweep nothing (target).
#   case=idle-sqlite-new  the same never serviced (no summary yet): each
#                      visit opens the repository and asks the six tasks.
#   case=idle-fossil   the same sweep over N copies of a `fossil init`
#                      repository (53 schema objects, 224 KB), serviced once:
#                      the files Fossil sweeps below.  Only when `fossil`
#                      exists and N <= 1000.
#   case=due-host      `host run R1..RN` over N copies of a repository with
#                      one pending outbox row: every visit takes the lease,
#                      runs the task and releases the lease (three committed
#                      writes per repository).  Comparable to Fossil's cycle
#                      C, which also takes the lease in every repository.
#                      Only for N <= DUE_MAX_N (default 10000).
#   case=fossil-C      `fossil backoffice --nodelay R1..RN` on fresh copies of
#                      the Fossil repository (lease free: each child takes the
#                      lease and runs the empty work), exactly cycle C of
#                      ../shared/bench/fossil/a_backoffice_cycle.sh, without
#                      its minute of `fossil init`.
#   case=fossil-B      the same command right after C (lease held, each child
#                      exits without a write): Fossil's cheapest sweep.
# Each case runs RUNS times on fresh copies; total_ms and per_repo_ms per run,
# then the median.  The page cache is warm (the copies were just written).
set -u
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

N=${1:?usage: sweep.sh N [RUNS]}
RUNS=${2:-3}
FOSSIL_MAX_N=${FOSSIL_MAX_N:-1000}
DUE_MAX_N=${DUE_MAX_N:-10000}
build_release
make_workdir "sweep-$N"

repos=()
for i in $(seq 1 "$N"); do repos+=("$W/r$i.db"); done

# Does the command line fit?  execve needs the strings, their NULs and one
# pointer each (argv and envp) within ARG_MAX.
arg_max=$(getconf ARG_MAX)
argv_bytes=$(( $(printf '%s\n' "${repos[@]}" | wc -c) + 8 * N + $(env | wc -c) + 8 * $(env | wc -l) + 256 ))
echo "N=$N runs=$RUNS arg_max=$arg_max argv_bytes=$argv_bytes fits=$([ "$argv_bytes" -lt "$arg_max" ] && echo yes || echo no)"
if [ "$argv_bytes" -ge "$arg_max" ]; then
  echo "error=the paths do not fit in one command line; split the sweep (xargs -n)"
  exit 1
fi
echo "jobs_default=$(( $(nproc) * 4 < 16 ? $(nproc) * 4 : 16 )) (4 per core, at most 16)"

# Templates.
sqlite3 "$W/t-sqlite.db" "CREATE TABLE config(
  name TEXT PRIMARY KEY NOT NULL, value CLOB, mtime DATE,
  CHECK( typeof(name)='text' AND length(name)>=1 ));
  INSERT INTO config VALUES('project-name','bench',0);" || exit 1
cp "$W/t-sqlite.db" "$W/t-sqlite-new.db"
cp "$W/t-sqlite.db" "$W/t-schedule.db"
"$BO" run "$W/t-sqlite.db" >/dev/null || exit 1
# A daily schedule whose slot is at least an hour away.
"$BO" schedule add nightly --cron "0 $(( ($(date -u +%-H) + 2) % 24 )) * * *" \
  --command true -R "$W/t-schedule.db" >/dev/null || exit 1
"$BO" run "$W/t-schedule.db" >/dev/null || exit 1
"$HOST" init "$W/t-due.db" || exit 1
sqlite3 "$W/t-due.db" "INSERT INTO outbox(body) VALUES('pending');" || exit 1
have_fossil=0
if command -v "$FOSSIL" >/dev/null 2>&1 && [ "$N" -le "$FOSSIL_MAX_N" ]; then
  "$FOSSIL" init -A admin "$W/t-fossil.db" >/dev/null && have_fossil=1
  cp "$W/t-fossil.db" "$W/t-fossil-fresh.db"
  "$BO" run "$W/t-fossil.db" >/dev/null || exit 1
fi

per_repo() { awk -v a="$1" -v n="$N" 'BEGIN{printf "%.4f", a/n}'; }

# sweep CASE TEMPLATE CMD... : RUNS times: fresh copies, then time CMD R1..RN.
sweep() {
  local label=$1 tpl=$2; shift 2
  local k t0 ms rc totals=()
  for k in $(seq 1 "$RUNS"); do
    rm -f "$W"/r*.db "$W"/r*.db-journal
    copy_to "$tpl" "${repos[@]}"
    sync
    t0=$(now_us)
    "$@" "${repos[@]}" >/dev/null 2>"$W/$label.err"
    rc=$?
    ms=$(ms_since "$t0")
    totals+=("$ms")
    echo "case=$label run=$k N=$N total_ms=$ms per_repo_ms=$(per_repo "$ms") exit=$rc stderr_lines=$(wc -l < "$W/$label.err")"
    check_after "$label" "$(sqlite3 "$tpl" "SELECT value FROM config WHERE name='backoffice'")"
  done
  local med
  med=$(median "${totals[@]}")
  echo "case=$label N=$N median_total_ms=$med median_per_repo_ms=$(per_repo "$med") min_total_ms=$(minimum "${totals[@]}") max_total_ms=$(maximum "${totals[@]}")"
}

# What the sweep left behind, in the first and last repository.
check_after() {
  local r
  case $1 in
    idle-*)
      for r in "${repos[0]}" "${repos[N-1]}"; do
        [ "$(sqlite3 "$r" "SELECT value FROM config WHERE name='backoffice'")" = "$2" ] \
          || echo "warning=$1 wrote a lease in $r"
      done ;;
    due-host)
      for r in "${repos[0]}" "${repos[N-1]}"; do
        [ "$(sqlite3 "$r" "SELECT count(*) FROM outbox WHERE done=0")" = 0 ] \
          || echo "warning=$1 left work pending in $r"
      done ;;
    fossil-B) [ -n "$(sqlite3 "${repos[0]}" "SELECT value FROM config WHERE name='backoffice'")" ] \
          || echo "warning=fossil-B found no lease" ;;
  esac
}

sweep idle-sqlite "$W/t-sqlite.db" "$BO" run
sweep idle-schedule "$W/t-schedule.db" "$BO" run
sweep idle-sqlite-new "$W/t-sqlite-new.db" "$BO" run
if [ "$have_fossil" = 1 ]; then
  sweep idle-fossil "$W/t-fossil.db" "$BO" run
fi
if [ "$N" -le "$DUE_MAX_N" ]; then
  sweep due-host "$W/t-due.db" "$HOST" run
fi
if [ "$have_fossil" = 1 ]; then
  # Fossil: C on fresh copies, then B on the same copies (lease now held).
  totC=(); totB=()
  for k in $(seq 1 "$RUNS"); do
    rm -f "$W"/r*.db "$W"/r*.db-journal
    copy_to "$W/t-fossil-fresh.db" "${repos[@]}"
    sync
    t0=$(now_us); "$FOSSIL" backoffice --nodelay "${repos[@]}" >/dev/null 2>&1; ms=$(ms_since "$t0")
    totC+=("$ms")
    echo "case=fossil-C run=$k N=$N total_ms=$ms per_repo_ms=$(per_repo "$ms")"
    t0=$(now_us); "$FOSSIL" backoffice --nodelay "${repos[@]}" >/dev/null 2>&1; ms=$(ms_since "$t0")
    totB+=("$ms")
    echo "case=fossil-B run=$k N=$N total_ms=$ms per_repo_ms=$(per_repo "$ms")"
    check_after fossil-B
  done
  for c in C B; do
    eval "t=(\"\${tot$c[@]}\")"
    med=$(median "${t[@]}")
    echo "case=fossil-$c N=$N median_total_ms=$med median_per_repo_ms=$(per_repo "$med") min_total_ms=$(minimum "${t[@]}") max_total_ms=$(maximum "${t[@]}")"
  done
fi
