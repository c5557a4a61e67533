#!/usr/bin/env bash
# Resident memory of `backoffice serve --repolist` before, during and after
# load (issue 10, item 25): VmRSS from /proc/PID/status.
#
#   usage: serve_memory.sh [REPOS=1100] [POSTS=1000] [IDLE=1100] [ROUNDS=3]
#
# Load, ROUNDS times: one /metrics scrape (reads every repository), POSTS
# concurrent `POST /r/r0/events` (100 client threads), IDLE idle connections
# from 11 loopback addresses (127.0.0.1-11, within the per-client share),
# held 2 s, then closed. RSS is read at start, after each round, and after
# 10 s of quiet at the end. `BO_OVERRIDE=path` measures another binary (e.g.
# a debug build, or the code before a change); SKIP_BUILD=1 as in lib.sh.
# Environment passed through to the server (e.g. MALLOC_ARENA_MAX) applies.
set -u
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

REPOS=${1:-1100}
POSTS=${2:-1000}
IDLE=${3:-1100}
ROUNDS=${4:-3}
if [ -n "${BO_OVERRIDE:-}" ]; then BO=$BO_OVERRIDE; else build_release; fi
make_workdir serve-memory
command -v python3 >/dev/null || { echo "error=python3 missing"; exit 1; }

mkdir "$W/repos"
python3 - "$W/template.db" <<'EOF' || exit 1
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
c.executescript("""CREATE TABLE config(name TEXT PRIMARY KEY NOT NULL, value CLOB, mtime DATE,
  CHECK( typeof(name)='text' AND length(name)>=1 ));
CREATE TABLE app(x);
INSERT INTO config(name, value) VALUES ('web-public-summary', 'on');""")
c.commit()
EOF
dests=()
for i in $(seq 0 $((REPOS - 1))); do dests+=("$W/repos/r$i.db"); done
copy_to "$W/template.db" "${dests[@]}"
TOKEN=$("$BO" token -R "$W/repos/r0.db") || exit 1

"$BO" serve "$W/repos" --repolist --listen 127.0.0.1:0 --no-trigger \
  >"$W/serve.out" 2>"$W/serve.err" &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$W"' EXIT
for _ in $(seq 1 100); do grep -q http:// "$W/serve.out" 2>/dev/null && break; sleep 0.1; done
ADDR=$(sed -n 's|.*http://\([^/]*\)/.*|\1|p' "$W/serve.out" | head -1)
[ -n "$ADDR" ] || { echo "error=server did not start"; cat "$W/serve.err"; exit 1; }

rss() { awk '/^VmRSS/ {print $2}' "/proc/$PID/status"; }
echo "binary=$BO repos=$REPOS posts=$POSTS idle=$IDLE rounds=$ROUNDS"
echo "rss_kib_start=$(rss)"

for r in $(seq 1 "$ROUNDS"); do
  python3 - "$ADDR" "$TOKEN" "$POSTS" "$IDLE" <<'EOF' || exit 1
import http.client, json, socket, sys, threading, time
addr, token, posts, idle = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
host, port = addr.rsplit(":", 1)
port = int(port)
def get(path):
    c = http.client.HTTPConnection(host, port, timeout=120)
    c.request("GET", path)
    r = c.getresponse(); body = r.read(); c.close()
    return r.status, body
st, body = get("/metrics")
codes = {}
lock = threading.Lock()
left = [posts]
def poster():
    while True:
        with lock:
            if left[0] == 0: return
            left[0] -= 1; n = left[0]
        c = http.client.HTTPConnection(host, port, timeout=60)
        c.request("POST", "/r/r0/events", json.dumps({"kind": "load", "title": "event %d" % n}),
                  {"Authorization": "Bearer " + token, "Content-Type": "application/json"})
        s = c.getresponse().status; c.close()
        with lock: codes[s] = codes.get(s, 0) + 1
ts = [threading.Thread(target=poster) for _ in range(100)]
[t.start() for t in ts]; [t.join() for t in ts]
socks = []
for i in range(idle):
    s = socket.socket()
    s.bind(("127.0.0.%d" % (1 + i % 11), 0))
    try:
        s.connect((host, port)); socks.append(s)
    except OSError:
        s.close()
time.sleep(2)
for s in socks: s.close()
print("metrics=%d posts=%s idle_open=%d" % (st, json.dumps(codes, sort_keys=True), len(socks)))
EOF
  sleep 1
  echo "round=$r rss_kib=$(rss)"
done
sleep 10
echo "rss_kib_after_quiet=$(rss)"
echo "threads=$(awk '/^Threads/ {print $2}' /proc/$PID/status) fds=$(ls /proc/$PID/fd | wc -l)"
