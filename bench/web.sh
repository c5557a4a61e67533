#!/usr/bin/env bash
# The web front under load: `backoffice serve` (release build) on 127.0.0.1,
# load from other processes (wrk, python3), loopback only.
#
#   usage: bench/web.sh [ROUNDS=3] [SECONDS=5]
#
# Environment: PARTS (default abcd: which parts to run),
# SKIP_BUILD=1 (use the release build under $CARGO_TARGET_DIR),
# FOSSIL=0 (skip Fossil 2.21's side of part b), REQS (default 2000),
# LAT_RUNS (default 20), CONNS (wrk connections, default 8), KEEP=1.
# Needs: wrk (apt-get install wrk), python3, sqlite3; perf for Fossil's
# fork count (../shared/bench/fossil/b_server_load.sh).
#
# One repository "app" set up like crates/backoffice-cli/tests/web.rs: email
# into a folder (email-send-method dir), two verified subscribers (one for
# every kind, one for wiki only), an API token, backoffice-lease-time 1,
# and one `backoffice run --nolease` so that nothing is due. Parts:
#
#  a. throughput of GET /r/app/status.json, `wrk -t1 -cCONNS -dSECONDS`,
#     after-request check on (the default) and off (`serve --no-trigger`),
#     alternately, ROUNDS rounds each, a fresh server per round; per round
#     req/s and the server's zombie children (sampled every 10 ms);
#     medians and the ratio on/off.
#  b. workers started per REQS read-only requests with nothing due: a
#     python3 http.client keep-alive client sends exactly REQS GETs of
#     status.json, then backoffice_workers_started_total{repo="app"} from
#     /metrics; with backoffice-nodelay off and on. Then Fossil 2.21 on the
#     same machine: b_server_load.sh REQS 1 "default nodelay" (backoffice
#     forks counted by perf on the server's process tree, minus one fork
#     per request).
#  c. work due under load: wrk on status.json for SECONDS while a python3
#     loop POSTs 20 events/s to /r/app/events with the token; the server's
#     children sampled every 10 ms (state Z, ppid = server), workers started,
#     alerts written.
#  d. idle -> alert on disk: LAT_RUNS times, wait until no worker is left,
#     the lease is free and its time has passed; then POST one wiki event
#     and poll the mail folder every 0.5 ms (bounded to 5 s): time to the
#     first new .eml and to both (two subscribers want wiki events).
# Prints key=value lines. Every loop is bounded in count and time.
set -u
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

ROUNDS=${1:-3}
SECS=${2:-5}
REQS=${REQS:-2000}
LAT_RUNS=${LAT_RUNS:-20}
CONNS=${CONNS:-8}
FOSSIL_BENCH="${FOSSIL_BENCH:-$REPO_ROOT/../shared/bench/fossil}"

command -v wrk >/dev/null || { echo "error=needs wrk (apt-get install wrk)"; exit 1; }
command -v python3 >/dev/null || { echo "error=needs python3"; exit 1; }
command -v sqlite3 >/dev/null || { echo "error=needs sqlite3"; exit 1; }
build_release
make_workdir web

SPID=""; SAMPLER=""
stop_server() {
  if [ -n "$SPID" ]; then
    kill "$SPID" 2>/dev/null
    wait_gone "$SPID" 15 || { echo "warning=server $SPID did not stop; killing it"; kill -9 "$SPID" 2>/dev/null; }
    wait "$SPID" 2>/dev/null
    SPID=""
  fi
}
cleanup() {
  [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null
  stop_server
  [ "${KEEP:-0}" = 1 ] || rm -rf "$W"
}
trap cleanup EXIT

# ---- python3 helpers (standard library only) ----
PY="$W/webtool.py"
cat > "$PY" <<'EOF'
import http.client, os, sqlite3, sys, time

def children(spid, zpids=None):
    """(live, zombies, pids) of the processes whose parent is spid; the
    zombies' pids are added to the set zpids if given."""
    live = zomb = 0
    pids = []
    for d in os.listdir('/proc'):
        if not d.isdigit():
            continue
        try:
            with open('/proc/' + d + '/stat', 'rb') as f:
                s = f.read()
        except OSError:
            continue
        rest = s[s.rfind(b')') + 2:].split()
        if int(rest[1]) != spid:
            continue
        if rest[0] == b'Z':
            zomb += 1
            if zpids is not None:
                zpids.add(int(d))
        else:
            live += 1
        pids.append(int(d))
    return live, zomb, pids

def conn(addr):
    h, p = addr.rsplit(':', 1)
    return http.client.HTTPConnection(h, int(p), timeout=10)

def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float('nan')
    k = max(0, min(len(xs) - 1, -(-len(xs) * p // 100) - 1))
    return xs[int(k)]

def median(xs):
    xs = sorted(xs)
    n = len(xs)
    if n == 0:
        return float('nan')
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2

def sample(spid, stop, interval, maxn, out):
    """Samples the server's children every `interval` s until `stop` exists
    (at most maxn samples)."""
    spid, interval, maxn = int(spid), float(interval), int(maxn)
    n = maxz = maxlive = zsamples = 0
    seen = set()
    streak = {}      # zombie pid -> consecutive samples it was seen in
    longest = 0
    scan = 0.0
    nxt = time.monotonic()
    while n < maxn and not os.path.exists(stop):
        t = time.monotonic()
        zp = set()
        live, z, pids = children(spid, zp)
        scan += time.monotonic() - t
        streak = {p: streak.get(p, 0) + 1 for p in zp}
        longest = max([longest] + list(streak.values()))
        n += 1
        maxz = max(maxz, z)
        maxlive = max(maxlive, live)
        zsamples += z > 0
        seen.update(pids)
        nxt += interval
        d = nxt - time.monotonic()
        if d > 0:
            time.sleep(d)
        else:
            nxt = time.monotonic()
    with open(out, 'w') as f:
        f.write('samples=%d max_zombies=%d samples_with_zombies=%d longest_zombie_samples=%d '
                'max_live_children=%d distinct_children=%d mean_scan_ms=%.2f\n'
                % (n, maxz, zsamples, longest, maxlive, len(seen), 1000 * scan / max(n, 1)))

def gets(addr, path, n):
    """Exactly n GETs on one keep-alive connection (reconnects on error)."""
    n = int(n)
    c = conn(addr)
    codes = {}
    errors = 0
    t0 = time.perf_counter()
    for i in range(n):
        try:
            c.request('GET', path)
            r = c.getresponse()
            r.read()
            codes[r.status] = codes.get(r.status, 0) + 1
        except (OSError, http.client.HTTPException):
            errors += 1
            c.close()
            c = conn(addr)
    dt = time.perf_counter() - t0
    c.close()
    print('requests=%d ok200=%d other=%s errors=%d wall_ms=%.0f req_per_s=%.0f'
          % (n, codes.get(200, 0), {k: v for k, v in codes.items() if k != 200} or 0,
             errors, dt * 1000, n / dt))

def metric(addr, name):
    c = conn(addr)
    # /metrics needs the repository's token (or its metrics token).
    c.request('GET', '/metrics', headers={'Authorization': 'Bearer ' + os.environ['BO_TOKEN']})
    body = c.getresponse().read().decode()
    c.close()
    key = 'backoffice_workers_started_total{repo="%s"} ' % name
    for line in body.splitlines():
        if line.startswith(key):
            print(line[len(key):].strip())
            return
    print('missing')

def post(c, name, token, title):
    body = '{"kind":"wiki","title":"%s","author":"bench"}' % title
    c.request('POST', '/r/%s/events' % name, body=body,
              headers={'Authorization': 'Bearer ' + token,
                       'Content-Type': 'application/json'})
    r = c.getresponse()
    r.read()
    return r.status

def posts(addr, name, token, rate, secs):
    """POSTs `rate` events a second for `secs` seconds (keep-alive)."""
    rate, secs = float(rate), float(secs)
    total = int(rate * secs)
    c = conn(addr)
    codes = {}
    t0 = time.monotonic()
    for i in range(total):
        d = t0 + i / rate - time.monotonic()
        if d > 0:
            time.sleep(d)
        try:
            s = post(c, name, token, 'load %d' % i)
        except (OSError, http.client.HTTPException):
            s = 'error'
            c.close()
            c = conn(addr)
        codes[s] = codes.get(s, 0) + 1
    c.close()
    print('posted=%d created201=%d other=%s post_wall_ms=%.0f'
          % (total, codes.get(201, 0), {k: v for k, v in codes.items() if k != 201} or 0,
             (time.monotonic() - t0) * 1000))

def emls(d):
    try:
        return sum(1 for e in os.listdir(d) if e.endswith('.eml'))
    except FileNotFoundError:
        return 0

def lease(db):
    """(current pid, current expires, next pid, next expires)."""
    c = sqlite3.connect('file:%s?mode=ro' % db, uri=True, timeout=5)
    try:
        row = c.execute("SELECT value FROM config WHERE name='backoffice'").fetchone()
    finally:
        c.close()
    if not row or not row[0]:
        return (0, 0, 0, 0)
    v = [int(x) for x in row[0].split()[:4]]
    return tuple(v + [0] * (4 - len(v)))

def latency(addr, name, token, maildir, db, runs, spid):
    runs, spid = int(runs), int(spid)
    first, both, reply, waited = [], [], [], []
    missed = 0
    for k in range(1, runs + 1):
        # Idle: no worker alive, lease free, its time passed (bounded, 10 s).
        tw = time.monotonic()
        while time.monotonic() - tw < 10:
            live, _, _ = children(spid)
            cp, ce, np_, ne = lease(db)
            if live == 0 and cp == 0 and np_ == 0 and time.time() >= max(ce, ne) + 1.02:
                break
            time.sleep(0.02)
        else:
            print('run=%d warning=not idle after 10 s lease=%s' % (k, lease(db)))
        waited.append(time.monotonic() - tw)
        n0 = emls(maildir)
        c = conn(addr)
        t0 = time.perf_counter()
        s = post(c, name, token, 'latency %d' % k)
        t1 = time.perf_counter()
        c.close()
        tf = ta = None
        while time.perf_counter() - t0 < 5:
            n = emls(maildir)
            now = time.perf_counter()
            if tf is None and n >= n0 + 1:
                tf = now
            if n >= n0 + 2:
                ta = now
                break
            time.sleep(0.0005)
        if s != 201 or tf is None or ta is None:
            missed += 1
            print('run=%d status=%s first=%s both=%s (missed)' % (k, s, tf, ta))
            continue
        reply.append((t1 - t0) * 1000)
        first.append((tf - t0) * 1000)
        both.append((ta - t0) * 1000)
        print('run=%d reply_ms=%.2f first_eml_ms=%.2f both_eml_ms=%.2f'
              % (k, reply[-1], first[-1], both[-1]))
    f = lambda xs: 'median=%.1f p90=%.1f max=%.1f min=%.1f' % (
        median(xs), pct(xs, 90), max(xs, default=float('nan')), min(xs, default=float('nan')))
    print('runs=%d missed=%d' % (runs, missed))
    print('first_eml_ms: ' + f(first))
    print('both_eml_ms: ' + f(both))
    print('post_reply_ms: ' + f(reply))
    print('idle_wait_s: median=%.2f' % median(waited))

if __name__ == '__main__':
    globals()[sys.argv[1]](*sys.argv[2:])
EOF

# ---- the repository ----
NAME=app
R="$W/$NAME.db"
MAIL="$W/mail"
sqlite3 "$R" "CREATE TABLE app(x);"
bo() { "$BO" "$@" -R "$R" >/dev/null || { echo "error=backoffice $* failed"; exit 1; }; }
bo setting email-send-method dir
bo setting email-self bo@example.org
bo setting email-url "http://127.0.0.1/r/$NAME"
bo setting email-send-dir "$MAIL"
bo setting email-subname "[app]"
bo setting backoffice-lease-time 1
bo setting backoffice-logfile "$W/run.log"
bo subscriber add ann@example.org --verified
bo subscriber add bob@example.org --verified --kinds wiki
TOKEN=$("$BO" token -R "$R" 2>/dev/null)
[ -n "$TOKEN" ] || { echo "error=no token"; exit 1; }
# status.json and /metrics need the token (issue 14): wrk and the python
# client send it.
export BO_TOKEN="$TOKEN"
"$BO" run --nolease "$R" >/dev/null 2>&1 || { echo "error=first run failed"; exit 1; }
echo "repo=$NAME journal_mode=$(sqlite3 "$R" 'PRAGMA journal_mode;') subscribers=2 wrk=\"$(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2)\""

# start_server [ARGS...]: sets SPID and ADDR.
# Part a pins the server to CPU 0 and wrk to CPU 1 (PIN=0 to not), so the
# two do not fight over one core; on this 2-core machine that halves the
# round-to-round spread of the on/off comparison.
SERVER_PIN=""; WRK_PIN=""
start_server() {
  local i
  ADDR=""
  : > "$W/serve.out"
  $SERVER_PIN "$BO" serve "$R" --listen 127.0.0.1:0 "$@" > "$W/serve.out" 2>> "$W/serve.err" &
  SPID=$!
  for i in $(seq 1 500); do
    ADDR=$(sed -n '1s#.*http://\([^/]*\)/$#\1#p' "$W/serve.out")
    [ -n "$ADDR" ] && return 0
    alive "$SPID" || break
    sleep 0.01
  done
  echo "error=the server did not start: $(tail -3 "$W/serve.err")"; exit 1
}

# start_sampler OUT: samples the server's children every 10 ms (<= 10 min).
start_sampler() {
  rm -f "$W/stop"
  python3 "$PY" sample "$SPID" "$W/stop" 0.01 60000 "$1" &
  SAMPLER=$!
}
stop_sampler() {
  touch "$W/stop"
  wait "$SAMPLER" 2>/dev/null
  SAMPLER=""
}

# wrk_line FILE: req/s, latency, errors from wrk's output.
wrk_line() {
  awk '/Requests\/sec:/ {rps=$2}
       /^ +Latency +[0-9]/ {lat=$2}
       / 99%/ {p99=$2}
       /Non-2xx/ {bad=$NF}
       /requests in/ {n=$1}
       /Socket errors/ {sub(/.*Socket errors: */,""); gsub(/ /,""); serr=$0}
       END {printf "req_per_s=%s requests=%s latency_avg=%s latency_p99=%s non2xx=%s socket_errors=%s",
            rps, n, lat, p99, (bad==""?0:bad), (serr==""?"none":serr)}' "$1"
}

URL_PATH="/r/$NAME/status.json"

PARTS=${PARTS:-abcd}

# ---- a. throughput, check on vs off ----
if [[ $PARTS == *a* ]]; then
echo "# a. GET $URL_PATH, wrk -t1 -c$CONNS -d${SECS}s, a fresh server per round, check on/off alternately (on first in odd rounds, off first in even); server on CPU 0, wrk on CPU 1 unless PIN=0"
on=(); off=(); zmax=0
for k in $(seq 1 "$ROUNDS"); do
  # Alternate which goes first, so a drift within a round (the machine
  # warming up or another tenant) does not always favour the same mode.
  order="on off"; (( k % 2 == 0 )) && order="off on"
  for mode in $order; do
    if [ "${PIN:-1}" = 1 ] && [ "$(nproc)" -ge 2 ] && command -v taskset > /dev/null; then
      SERVER_PIN="taskset -c 0"; WRK_PIN="taskset -c 1"
    fi
    if [ $mode = on ]; then start_server; else start_server --no-trigger; fi
    SERVER_PIN=""
    start_sampler "$W/sample-a.txt"
    $WRK_PIN wrk -t1 -c"$CONNS" -d"${SECS}s" --latency -H "Authorization: Bearer $TOKEN" "http://$ADDR$URL_PATH" > "$W/wrk.txt" 2>&1
    stop_sampler
    ws=$(python3 "$PY" metric "$ADDR" "$NAME")
    stop_server
    line=$(wrk_line "$W/wrk.txt")
    rps=$(sed -n 's/.*req_per_s=\([0-9.]*\).*/\1/p' <<< "$line")
    [ $mode = on ] && on+=("$rps") || off+=("$rps")
    z=$(sed -n 's/.*max_zombies=\([0-9]*\).*/\1/p' "$W/sample-a.txt")
    (( z > zmax )) && zmax=$z
    echo "a round=$k check=$mode $line workers_started=$ws $(cat "$W/sample-a.txt")"
  done
done
mon=$(median "${on[@]}"); moff=$(median "${off[@]}")
echo "a summary median_req_per_s_on=$mon median_req_per_s_off=$moff ratio_on_off=$(awk -v a="$mon" -v b="$moff" 'BEGIN{printf "%.3f", a/b}') target_ratio=0.98 max_zombies=$zmax"
fi

# ---- b. workers started per REQS read-only requests ----
if [[ $PARTS == *b* ]]; then
echo "# b. $REQS GETs of $URL_PATH on one keep-alive connection (python3 http.client), nothing due"
for nd in off on; do
  bo setting backoffice-nodelay "$nd"
  start_server
  start_sampler "$W/sample-b.txt"
  before=$(python3 "$PY" metric "$ADDR" "$NAME")
  res=$(python3 "$PY" gets "$ADDR" "$URL_PATH" "$REQS")
  sleep 0.3
  after=$(python3 "$PY" metric "$ADDR" "$NAME")
  stop_sampler
  stop_server
  echo "b backoffice-nodelay=$nd $res workers_started_before=$before workers_started_after=$after $(cat "$W/sample-b.txt")"
done
bo setting backoffice-nodelay off
if [ "${FOSSIL:-fossil}" = 0 ]; then
  echo "b fossil=skipped (FOSSIL=0)"
elif [ ! -x "$FOSSIL_BENCH/b_server_load.sh" ]; then
  echo "b fossil=skipped (no $FOSSIL_BENCH/b_server_load.sh)"
else
  fb="$FOSSIL"; [ "$fb" = 0 ] && fb=fossil
  echo "b fossil: $("$fb" version | cut -d' ' -f1-5); command: $FOSSIL_BENCH/b_server_load.sh $REQS 1 \"default nodelay\" (page /timeline, curl --config, one connection)"
  FOSSIL="$fb" WORKDIR="$W/fossil-b" timeout 400 "$FOSSIL_BENCH/b_server_load.sh" "$REQS" 1 "default nodelay" 2>&1 | sed 's/^/b fossil /'
fi
fi

# ---- c. work due while under load ----
if [[ $PARTS == *c* ]]; then
echo "# c. wrk -t1 -c$CONNS -d${SECS}s on $URL_PATH while POSTing 20 events/s for ${SECS}s; children sampled every 10 ms"
m0=$(ls "$MAIL" 2>/dev/null | grep -c '\.eml$')
start_server
start_sampler "$W/sample-c.txt"
wrk -t1 -c"$CONNS" -d"${SECS}s" --latency -H "Authorization: Bearer $TOKEN" "http://$ADDR$URL_PATH" > "$W/wrk-c.txt" 2>&1 &
wp=$!
pres=$(python3 "$PY" posts "$ADDR" "$NAME" "$TOKEN" 20 "$SECS")
wait "$wp"
# let the last worker finish (bounded, 10 s), still sampling: every event
# has reached both subscribers (one alert per subscriber per run lists all
# of the run's events)
posted=$(sed -n 's/.*created201=\([0-9]*\).*/\1/p' <<< "$pres")
# (the bodies are quoted-printable: "=3D=3D wiki: load 7")
seen_events() { cat "$MAIL"/*.eml 2>/dev/null | grep -c 'wiki: load [0-9]'; }
td=$(now_us)
for i in $(seq 1 1000); do
  [ "$(seen_events)" -ge $((2 * posted)) ] && break
  sleep 0.01
done
drain_ms=$(ms_since "$td")
sleep 0.2
stop_sampler
ws=$(python3 "$PY" metric "$ADDR" "$NAME")
stop_server
m1=$(ls "$MAIL" | grep -c '\.eml$')
echo "c $pres $(wrk_line "$W/wrk-c.txt") workers_started=$ws alert_files=$((m1 - m0)) event_mentions=$(seen_events) event_mentions_expected=$((2 * posted)) drain_after_load_ms=$drain_ms $(cat "$W/sample-c.txt")"
fi

# ---- d. idle -> alert on disk ----
if [[ $PARTS == *d* ]]; then
echo "# d. POST /r/$NAME/events from idle -> first / both .eml files in the mail folder (poll every 0.5 ms, <= 5 s), $LAT_RUNS runs"
start_server
python3 "$PY" latency "$ADDR" "$NAME" "$TOKEN" "$MAIL" "$R" "$LAT_RUNS" "$SPID" | sed 's/^/d /'
ws=$(python3 "$PY" metric "$ADDR" "$NAME")
stop_server
echo "d workers_started=$ws (one per run expected)"
fi
