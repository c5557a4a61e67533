#!/usr/bin/env bash
# From idle to work: how long after `host trigger REPO` does the work start?
#
#   usage: trigger_latency.sh [RUNS=20]
#
# The repository is the example host's (`host init`), with `host-journal`
# set: the outbox task appends `enter PID NANOS` when its run starts.  Each
# run starts idle (the previous worker has exited, the lease is reset with
# `host lease --reset`), inserts one pending outbox row, and then times
#   t0  just before bash starts `host trigger REPO`  (EPOCHREALTIME, no fork)
#   t1  when `host trigger` has returned (check done, worker started)
#   te  the worker's `enter` stamp (clock_gettime in the worker)
# and prints trigger_ms = t1 - t0 and enter_ms = te - t0.  What happens in
# between: exec of the host, Repo::open, the check, spawning the worker;
# in the worker: exec, setsid, Repo::open, BEGIN IMMEDIATE + lease write +
# COMMIT (an fsync in rollback mode), the task's first statement.
# Cases (JOURNALS="delete wal wal-held embedded-delete embedded-wal" by default):
#   delete    rollback journal (SQLite's default, and Fossil's)
#   wal       WAL, nothing else has the database open: every process's open
#             creates the -wal and -shm files and its close deletes them
#             (about 1.4 ms per file creation on this VM's disk)
#   wal-held  WAL while another process (an `sqlite3` shell, standing in for
#             a server's long-lived connection) keeps the database open, as
#             a real server does
#   python-delete, python-wal
#             a long-lived host in Python (bench/python_host.py) with its own
#             connection: it inserts the row, runs the one-statement check of
#             examples/after_request.py and, on "maybe", `host trigger
#             --quiet REPO` with subprocess.run (the way hosts in other
#             languages call it); t0 is its clock just before the check
#   cgi-delete, cgi-wal
#             `host cgi` answering GET /r/NAME/status.json as a web server's
#             CGI would start it (environment, token); after the reply it runs
#             the after-request check and starts its worker (`EXE worker
#             REPO`), as `trigger` does; t0 is just before bash starts it
#   embedded-delete, embedded-wal
#             no `trigger` process: a long-lived host (`host requests REPO`,
#             which holds its connection open as a server does) inserts the
#             row and runs the after-request check in-process, as a Rust
#             host, `backoffice serve` and `cgi` do; t0 is the host's own
#             clock just before the check (after its insert committed, as
#             in the other cases), trigger_ms is 0, and insert_ms is how
#             long the insert took
# Fossil 2.21's figure (../shared/reference/fossil-backoffice.md §4c) is
# 17-31 ms from the start of the triggering HTTP request to its hook's stamp.
set -u
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

RUNS=${1:-20}
JOURNALS=${JOURNALS:-"delete wal wal-held python-delete python-wal cgi-delete cgi-wal embedded-delete embedded-wal"}
build_release
make_workdir trigger

# sqlite3 that waits for a lock rather than fail at once: the embedded
# host opens (and writes) the repository while the script sets it up.
sq() { sqlite3 -cmd ".timeout 5000" "$@"; }
# Every setting must have taken: a run without the journal would time out.
sq_check() { [ "$(sq "$1" "SELECT value FROM config WHERE name='host-journal'")" = "$2" ] ||
  { echo "error=cannot set host-journal in $1"; exit 1; }; }

# A fork-free sleep: read with a timeout on a fifo nobody writes to.
fifo="$W/fifo"; mkfifo "$fifo"; exec {SLEEPFD}<>"$fifo"
fsleep() { read -t "$1" -u "$SLEEPFD" _ || true; }

# enter_lines JOURNAL: sets ENTERS (count), LAST_ENTER_NS and
# LAST_ENTER_PID, with builtins only.
enter_lines() {
  local w p ns
  ENTERS=0; LAST_ENTER_NS=""; LAST_ENTER_PID=""
  [ -f "$1" ] || return 0
  while read -r w p ns; do
    if [ "$w" = enter ]; then ENTERS=$((ENTERS + 1)); LAST_ENTER_NS=$ns; LAST_ENTER_PID=$p; fi
  done < "$1"
}

HOLDER=""; OFD=""
stop_holder() {
  if [ -n "$HOLDER" ]; then
    exec {HFD}>&-
    if [ -n "$OFD" ]; then exec {OFD}<&-; OFD=""; fi
    wait "$HOLDER" 2>/dev/null || kill "$HOLDER" 2>/dev/null
    HOLDER=""
  fi
}
trap 'stop_holder; [ "${KEEP:-0}" = 1 ] || rm -rf "$W"' EXIT

for mode in $JOURNALS; do
  R="$W/repo-$mode.db"
  J="$W/journal-$mode.txt"
  "$HOST" init "$R" || exit 1
  jm=${mode%-held}; jm=${jm#embedded-}; jm=${jm#python-}; jm=${jm#cgi-}
  sq "$R" "PRAGMA journal_mode=$jm;" >/dev/null
  if [ "${mode#embedded-}" != "$mode" ]; then
    # The host itself, fed one line per request; its answers come back on
    # another fifo.
    rm -f "$W/holder.in" "$W/holder.out"; mkfifo "$W/holder.in" "$W/holder.out"
    "$HOST" requests "$R" < "$W/holder.in" > "$W/holder.out" 2>"$W/holder.err" &
    HOLDER=$!
    exec {HFD}>"$W/holder.in" {OFD}<"$W/holder.out"
  elif [ "$mode" = wal-held ]; then
    # A long-lived connection: an sqlite3 shell reading from a fifo we keep open.
    rm -f "$W/holder.in" "$W/holder.out"; mkfifo "$W/holder.in"
    sqlite3 "$R" < "$W/holder.in" > "$W/holder.out" 2>&1 &
    HOLDER=$!
    exec {HFD}>"$W/holder.in"
    echo "SELECT count(*) FROM outbox;" >&"$HFD"
    fsleep 0.2
    [ -e "$R-shm" ] || echo "warning=the holder did not open $R"
  fi
  sq "$R" "REPLACE INTO config(name,value,mtime) VALUES('host-journal','$J',0);"
  sq_check "$R" "$J"
  got_mode=$(sq "$R" "PRAGMA journal_mode;")
  if [ "${mode#cgi-}" != "$mode" ]; then
    # The status page answers the token; the repository's name is the file's.
    token=$("$HOST" token -R "$R" 2>/dev/null) || { echo "error=cannot make a token"; exit 1; }
    name=$(basename "$R" .db)
  fi
  lat=(); trig=(); last_pid=""; missed=0
  if [ "${mode#python-}" != "$mode" ]; then
    # The Python host makes its runs itself; its lines are read back here.
    while read -r line; do
      echo "$line"
      case "$line" in
        *" no enter line "*) missed=$((missed + 1)) ;;
        case=*enter_ms=*)
          t=${line#*trigger_ms=}; trig+=("${t%% *}")
          l=${line#*enter_ms=}; lat+=("${l%% *}") ;;
      esac
    done < <(python3 "$here/python_host.py" "$HOST" "$R" "$J" "$RUNS" "$mode")
    pending=$(sq "$R" "SELECT count(*) FROM outbox WHERE done=0")
    echo "case=$mode journal_mode=$got_mode runs=$RUNS missed=$missed pending_left=$pending" \
         "median_enter_ms=$(median "${lat[@]}") min_enter_ms=$(minimum "${lat[@]}") max_enter_ms=$(maximum "${lat[@]}")" \
         "median_trigger_ms=$(median "${trig[@]}") max_trigger_ms=$(maximum "${trig[@]}")"
    continue
  fi
  for k in $(seq 1 "$RUNS"); do
    [ -n "$last_pid" ] && { wait_gone "$last_pid" 30 || echo "warning=worker $last_pid still alive"; }
    "$HOST" lease --reset -R "$R" >/dev/null || exit 1
    enter_lines "$J"; n0=$ENTERS
    ins=""
    if [ -n "${OFD:-}" ]; then
      fsleep 0.1
      echo "request $k" >&"$HFD"
      read -r t0 ins out <&"$OFD" || { echo "error=the host stopped: $(cat "$W/holder.err")"; exit 1; }
      t1=$t0
    elif [ "${mode#cgi-}" != "$mode" ]; then
      sq "$R" "INSERT INTO outbox(body) VALUES('message $k');" || exit 1
      fsleep 0.1
      t0=$(now_ns)
      GATEWAY_INTERFACE=CGI/1.1 REQUEST_METHOD=GET PATH_INFO="/r/$name/status.json" \
        QUERY_STRING= CONTENT_LENGTH=0 BACKOFFICE_REPO="$R" HTTP_AUTHORIZATION="Bearer $token" \
        "$HOST" cgi < /dev/null > "$W/trigger.out" 2>&1
      t1=$(now_ns)
      read -r out < "$W/trigger.out"
      out=${out%$'\r'}
      [ "$out" = "Status: 200 OK" ] || echo "warning=run $k: cgi answered: $out"
    else
      sq "$R" "INSERT INTO outbox(body) VALUES('message $k');" || exit 1
      fsleep 0.1
      t0=$(now_ns)
      "$HOST" trigger "$R" > "$W/trigger.out" 2>&1
      t1=$(now_ns)
      read -r out < "$W/trigger.out"
    fi
    last_pid=${out##* }
    if [ "${mode#cgi-}" != "$mode" ]; then
      last_pid=""  # the worker's pid is read from its enter line below
    elif ! [[ $last_pid =~ ^[0-9]+$ ]]; then
      echo "warning=run $k: trigger said: $out"; last_pid=""
    fi
    # wait for the enter stamp, at most 10 s
    for i in $(seq 1 2000); do
      enter_lines "$J"
      [ "$ENTERS" -gt "$n0" ] && break
      fsleep 0.005
    done
    if [ "$ENTERS" -le "$n0" ]; then
      missed=$((missed + 1)); echo "case=$mode run=$k no enter line within 10 s (the check said: $out)"; continue
    fi
    te=$LAST_ENTER_NS
    [ -z "$last_pid" ] && last_pid=$LAST_ENTER_PID
    l=$(awk -v a="$t0" -v b="$te" 'BEGIN{printf "%.2f", (b-a)/1e6}')
    t=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", (b-a)/1e6}')
    lat+=("$l"); trig+=("$t")
    extra=""
    [ -n "${ins:-}" ] && extra=" insert_ms=$(awk -v n="$ins" 'BEGIN{printf "%.2f", n/1e6}')"
    echo "case=$mode run=$k trigger_ms=$t enter_ms=$l worker=$last_pid$extra"
  done
  [ -n "$last_pid" ] && wait_gone "$last_pid" 30
  pending=$(sq "$R" "SELECT count(*) FROM outbox WHERE done=0")
  echo "case=$mode journal_mode=$got_mode runs=$RUNS missed=$missed pending_left=$pending" \
       "median_enter_ms=$(median "${lat[@]}") min_enter_ms=$(minimum "${lat[@]}") max_enter_ms=$(maximum "${lat[@]}")" \
       "median_trigger_ms=$(median "${trig[@]}") max_trigger_ms=$(maximum "${trig[@]}")"
  stop_holder
done
exec {SLEEPFD}<&-
