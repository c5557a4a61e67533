#!/usr/bin/env bash
# Email delivery throughput: N queued alerts sent by one `backoffice run`.
#
#   usage: bench/notify.sh [N] [RUNS]        (defaults: 10000 3)
#
# For the `dir` method (target ≥ 10,000 messages/s; on the disk and on
# tmpfs, because creating a file on this VM's ext4 root costs 0.6-0.85 ms
# whatever the program) and the `db` method:
# N messages are put in the outbox of a fresh repository (python3's sqlite3,
# in one transaction), then one `backoffice run --nolease REPO` sends them
# all; messages/s = N / wall time of that run (process start, message
# building with lettre, writing, recording outcomes in batches of 200).
# Also "compose+dir": N events published for one subscriber in per-event
# mode, so the run composes N alerts and then sends them; and "relay": SMTP
# over one reused connection to the Python test server
# (crates/backoffice-cli/tests/smtp_server.py, writing to tmpfs when
# /dev/shm exists), target ≥ 1,000 messages/s. That server, not the relay,
# is the slower side (see bench/README.md).
# Prints key=value lines.
set -u
. "$(dirname "$0")/lib.sh"
N=${1:-10000}
RUNS=${2:-3}
build_release
make_workdir notify

setup() { # REPO METHOD
  local r=$1 m=$2
  python3 -c "import sqlite3,sys; sqlite3.connect(sys.argv[1]).execute('CREATE TABLE app(x)')" "$r"
  for kv in "email-send-method $m" "email-self bo@example.org" "email-url https://example.org" \
            "email-subname [bench]" "email-send-dir $W/mail-$RANDOM" "email-send-db $W/mail-$RANDOM.db"; do
    # shellcheck disable=SC2086
    "$BO" setting -R "$r" $kv >/dev/null || { echo "error=setting $kv"; exit 1; }
  done
  "$BO" subscriber -R "$r" add ann@example.org --verified >/dev/null
}

queue() { # REPO N : N due messages straight into the outbox
  python3 - "$1" "$2" <<'PY'
import sqlite3, sys, time
repo, n = sys.argv[1], int(sys.argv[2])
c = sqlite3.connect(repo)
now = int(time.time())
body = "Something happened.\n" * 8
c.executemany(
    "INSERT INTO bo_outbox(subscriberid, address, kind, subject, body, code, ctime, next_attempt)"
    " VALUES (1, 'ann@example.org', 'alert', ?, ?, NULL, ?, ?)",
    [(f"Message {i}", body, now, now) for i in range(n)])
c.commit()
PY
}

publish_events() { # REPO N
  python3 - "$1" "$2" <<'PY'
import sqlite3, sys, time
repo, n = sys.argv[1], int(sys.argv[2])
c = sqlite3.connect(repo)
now = int(time.time())
c.executemany("INSERT INTO bo_event(kind, title, body, mtime) VALUES ('wiki', ?, ?, ?)",
              [(f"Event {i}", "Details.\n", now) for i in range(n)])
c.commit()
PY
}

sent() { python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute(\"SELECT count(*) FROM bo_outbox WHERE state='sent'\").fetchone()[0])" "$1"; }

start_smtp() { # -> SMTP_PORT, SMTP_PID; server's messages under $1
  local out=$1
  mkfifo "$W/smtp.in" "$W/smtp.out"
  python3 "${SMTP_SCRIPT:-$REPO_ROOT/crates/backoffice-cli/tests/smtp_server.py}" "$out" --max-seconds 300 \
    < "$W/smtp.in" > "$W/smtp.out" 2>"$W/smtp.err" &
  SMTP_PID=$!
  exec 7>"$W/smtp.in"                    # the server ends when this closes
  read -r _ SMTP_PORT < "$W/smtp.out"
}

for case in ${CASES:-relay}; do
  rates=()
  for run in $(seq 1 "$RUNS"); do
    r="$W/$case-$run.db"
    method=${case#compose+}
    method=${method%-tmpfs}
    setup "$r" "$method"
    if [ "$case" = dir-tmpfs ]; then
      # The same, with the messages on tmpfs: what our code does when the
      # disk's file creation is not the limit (see bench/README.md).
      [ -d /dev/shm ] || { echo "case=$case skipped=no /dev/shm"; continue; }
      shm=$(mktemp -d /dev/shm/bo-bench-dir.XXXXXX)
      "$BO" setting -R "$r" email-send-dir "$shm/mail" >/dev/null
    fi
    if [ "$case" = relay ]; then
      spool=$W; [ -d /dev/shm ] && spool=$(mktemp -d /dev/shm/bo-bench-smtp.XXXXXX)
      start_smtp "$spool/received-$run"
      "$BO" setting -R "$r" email-send-relayhost "127.0.0.1:$SMTP_PORT" >/dev/null
    fi
    if [ "$case" = compose+dir ]; then
      "$BO" setting -R "$r" email-alert-mode each >/dev/null
      # The events table exists once something was published.
      "$BO" publish -R "$r" --kind wiki --title first --no-trigger >/dev/null
      publish_events "$r" $((N - 1))
    else
      queue "$r" "$N"
    fi
    # Let the disk finish writing back the setup (and any earlier run's
    # deletions) so the timing is of the delivery, not of that backlog.
    sync; sleep 1
    t0=$(now_us)
    "$BO" run --nolease "$r" >/dev/null 2>"$W/err" || { echo "error=run failed: $(head -3 "$W/err")"; exit 1; }
    ms=$(ms_since "$t0")
    got=$(sent "$r")
    rate=$(awk -v n="$got" -v ms="$ms" 'BEGIN{printf "%.0f", n*1000/ms}')
    echo "case=$case run=$run N=$N sent=$got ms=$ms msgs_per_s=$rate"
    rates+=("$rate")
    [ "$case" = dir-tmpfs ] && rm -rf "$shm"
    if [ "$case" = relay ]; then
      exec 7>&-; wait "$SMTP_PID" 2>/dev/null; rm -f "$W/smtp.in" "$W/smtp.out"
      [ "$spool" != "$W" ] && rm -rf "$spool"
    fi
  done
  echo "case=$case N=$N median_msgs_per_s=$(median "${rates[@]}") min=$(minimum "${rates[@]}") max=$(maximum "${rates[@]}")"
done
