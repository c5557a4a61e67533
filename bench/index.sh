#!/usr/bin/env bash
# The index `/` over many repositories: `backoffice serve --repolist` of N
# SQLite repositories on 127.0.0.1, each request timed by curl
# (`-w %{time_total}`).
#
#   usage: bench/index.sh [N=10000] [WARM=20]
#
# Environment: SKIP_BUILD=1, CARGO_TARGET_DIR, KEEP=1; PROFILE=debug (with
# SKIP_BUILD=1) runs the debug build, whose figures are NOT representative
# (report the release build's).
# Needs: curl, sqlite3.
#
# The repositories are copies of one template (a config table with
# web-public-summary on, so the index shows their counts), made once.
# Measured, in this order, on one server (trigger off: no workers):
#
#  cold   the first GET / after start: nothing kept, every repository is
#         opened and its status read;
#  warm   WARM more GET / within the cache's lifetime (10 s): median, p90;
#  sorted WARM GET /?sort=name, likewise;
#  stale  after the lifetime, the first GET /: served the kept rows while
#         one thread reads them again, then WARM more (median);
#  metrics for comparison, GET /metrics, which opens every repository on
#         every request (3 requests, median).
set -u
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

N=${1:-10000}
WARM=${2:-20}
command -v curl >/dev/null || { echo "error=needs curl"; exit 1; }
command -v sqlite3 >/dev/null || { echo "error=needs sqlite3"; exit 1; }
build_release
make_workdir index

SPID=""
cleanup() {
  if [ -n "$SPID" ]; then kill "$SPID" 2>/dev/null; wait "$SPID" 2>/dev/null; fi
  [ "${KEEP:-0}" = 1 ] || rm -rf "$W"
}
trap cleanup EXIT

mkdir -p "$W/repos"
T="$W/template.db"
sqlite3 "$T" "CREATE TABLE app(x);"
"$BO" setting -R "$T" web-public-summary on > /dev/null || { echo "error=setting failed"; exit 1; }
for i in $(seq -f '%05g' 0 $((N - 1))); do cp "$T" "$W/repos/r$i.db"; done
# One repository with a problem (a malformed setting), to be listed first.
sqlite3 "$W/repos/r00042.db" "INSERT OR REPLACE INTO config(name, value) VALUES ('backoffice-lease-time', 'x');"

"$BO" serve "$W/repos" --repolist --listen 127.0.0.1:0 --no-trigger > "$W/serve.out" 2> "$W/serve.err" &
SPID=$!
ADDR=""
for _ in $(seq 1 3000); do
  ADDR=$(sed -n '1s#.*http://\([^/]*\)/.*#\1#p' "$W/serve.out")
  [ -n "$ADDR" ] && break
  alive "$SPID" || break
  sleep 0.01
done
[ -n "$ADDR" ] || { echo "error=the server did not start: $(tail -3 "$W/serve.err")"; exit 1; }

t() { # PATH -> seconds for one GET (the body discarded)
  curl -s -o "$W/body" -w '%{time_total}\n' --max-time 600 "http://$ADDR$1"
}
stats() { # reads seconds, prints "median=… p90=…" in ms
  sort -n | awk '{v[NR]=$1} END {m=v[int((NR+1)/2)]; p=v[int(NR*0.9+0.5)]; if (p=="") p=v[NR]; printf "median_ms=%.2f p90_ms=%.2f n=%d", m*1000, p*1000, NR}'
}

echo "repos=$N build=${PROFILE:-release} curl=\"$(curl --version | head -1 | cut -d' ' -f1-2)\" nproc=$(nproc)"
cold=$(t /)
first=$(grep -o 'href="/r/[^"]*"' "$W/body" | head -1)
echo "cold_ms=$(awk -v s="$cold" 'BEGIN{printf "%.1f", s*1000}') bytes=$(stat -c %s "$W/body") first_row=$first"
echo "warm $(for _ in $(seq 1 "$WARM"); do t /; done | stats)"
echo "sorted $(for _ in $(seq 1 "$WARM"); do t '/?sort=name'; done | stats)"
sleep 11
stale=$(t /)
echo "stale_first_ms=$(awk -v s="$stale" 'BEGIN{printf "%.1f", s*1000}')"
echo "stale_then $(for _ in $(seq 1 "$WARM"); do t /; done | stats)"
echo "metrics $(for _ in 1 2 3; do t /metrics; done | stats)"
