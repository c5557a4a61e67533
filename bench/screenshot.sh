#!/usr/bin/env bash
# The status page as a browser renders it: sets up a repository that shows
# every part of the page, serves it with `backoffice serve` on 127.0.0.1,
# takes screenshots with headless Chromium at 1200 and 400 px wide and
# checks the DOM Chromium built for the key facts.
#
#   usage: bench/screenshot.sh [OUT.png=bench/results/status-page.png]
#
# Pictures (beside OUT.png): OUT.png and OUT-400.png, the whole page as the
# operator sees it (with the token: the page is fetched with
# `Authorization: Bearer` and rendered from a file, as a headless browser
# cannot send the header); summary-1200.png and summary-400.png, the
# redacted public summary (web-public-summary on); index-1200.png and
# index-400.png, the index; operator-1200.png and operator-400.png, the page
# signed in through the form (with its Actions). Screenshots need no release build:
# PROFILE=debug SKIP_BUILD=1 uses the debug one.
#
# Needs chromium (apt-get install chromium), sqlite3; installs nothing.
# Environment: SKIP_BUILD=1, CARGO_TARGET_DIR, KEEP=1.
#
# The repository "acme": one subscriber, a run log (backoffice-logfile),
# the secret setting email-send-relay-password set, and three runs
# (`backoffice run --nolease`): the digest boundary; one event whose alert
# is written to a folder (a run with an item); then, with two hooks added
# (one exits 3, one works) and mail sent through a command that always
# fails (email-send-command 'exit 1', email-max-attempts 1), two more
# events: the alert ends up dead in the outbox and the hook fails.
# Checked in the DOM: the repository name, "Last run", the hook's
# failure among the problems, the queue table with the dead message, an
# event title, a setting, and that the password is shown as ******** and
# its value appears nowhere. Exits non-zero naming each missing fact.
set -u
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

OUT_PNG=${1:-$here/results/status-page.png}
CHROMIUM=${CHROMIUM:-chromium}
command -v "$CHROMIUM" >/dev/null || { echo "error=needs chromium (apt-get install chromium)"; exit 1; }
command -v sqlite3 >/dev/null || { echo "error=needs sqlite3"; exit 1; }
build_release
make_workdir screenshot

SPID=""
cleanup() {
  if [ -n "$SPID" ]; then kill "$SPID" 2>/dev/null; wait "$SPID" 2>/dev/null; fi
  [ "${KEEP:-0}" = 1 ] || rm -rf "$W"
}
trap cleanup EXIT

NAME=acme
R="$W/$NAME.db"
SECRET="s3cret-relay-pw-$$"
sqlite3 "$R" "CREATE TABLE app(x);"
bo() { "$BO" "$@" -R "$R" >> "$W/setup.log" 2>&1 || { echo "error=backoffice $* failed: $(tail -2 "$W/setup.log")"; exit 1; }; }
bo setting email-send-method dir
bo setting email-send-dir "$W/mail"
bo setting email-max-attempts 1
bo setting email-self bo@example.org
bo setting email-url "http://127.0.0.1/r/$NAME"
bo setting email-subname "[acme]"
bo setting email-send-relay-password "$SECRET"
bo setting backoffice-logfile "$W/run.log"
bo setting backoffice-lease-time 1
bo subscriber add ann@example.org --verified
# The first run sets the digest boundary.
"$BO" run --nolease "$R" >> "$W/setup.log" 2>&1
# Run 2: an event, its alert written to the mail folder (a run with items).
bo publish --kind wiki --title "Front page edited" --author ann --no-trigger
"$BO" run --nolease "$R" >> "$W/setup.log" 2>&1
# Run 3 (the "Last run"): hooks added (they start after the newest event),
# mail through a command that fails, two more events: the alert is dead
# after one attempt, hook 1 fails, hook 2 delivers.
bo hook add --command 'exit 3'
bo hook add --command 'cat > /dev/null'
bo setting email-send-method pipe
bo setting email-send-command 'exit 1'
bo publish --kind checkin --title "Fix the login form" --author bob --no-trigger
bo publish --kind ticket --title "Ticket 42: crash on save" --no-trigger
"$BO" run --nolease "$R" >> "$W/setup.log" 2>&1   # fails (hook, delivery): that is the point
"$BO" status -R "$R" > "$W/status.txt" 2>&1
TOKEN=$("$BO" token -R "$R" 2>/dev/null)
bo setting web-public-summary on

# Serve it, trigger off: the page should show this state, not a new run's.
"$BO" serve "$R" --listen 127.0.0.1:0 --no-trigger > "$W/serve.out" 2> "$W/serve.err" &
SPID=$!
ADDR=""
for i in $(seq 1 500); do
  ADDR=$(sed -n '1s#.*http://\([^/]*\)/$#\1#p' "$W/serve.out")
  [ -n "$ADDR" ] && break
  alive "$SPID" || break
  sleep 0.01
done
[ -n "$ADDR" ] || { echo "error=the server did not start: $(tail -3 "$W/serve.err")"; exit 1; }
URL="http://$ADDR/r/$NAME"
echo "url=http://127.0.0.1:PORT/r/$NAME chromium=\"$("$CHROMIUM" --version 2>/dev/null)\""

chrome() { # ARGS... : one headless Chromium, its own profile, bounded to 60 s
  local prof
  prof=$(mktemp -d "$W/profile.XXXXXX")
  timeout 60 "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic \
    --no-first-run --disable-background-networking --disable-component-update \
    --disable-sync --user-data-dir="$prof" "$@"
}
mkdir -p "$(dirname "$OUT_PNG")"
OUT_DIR=$(dirname "$OUT_PNG")
OUT_400="${OUT_PNG%.png}-400.png"
rm -f "$OUT_PNG" "$OUT_400"
# The operator's page, fetched with the token, rendered from a file.
curl -sf -H "Authorization: Bearer $TOKEN" "$URL" > "$W/full.html" || { echo "error=cannot fetch the page with the token"; exit 1; }
shot() { # WIDTH OUT URL
  chrome --window-size="$1",${HEIGHT:-1800} --screenshot="$2" "$3" > "$W/shot.log" 2>&1
  [ -s "$2" ] || { echo "error=no screenshot $2: $(tail -3 "$W/shot.log")"; exit 1; }
  local dims
  dims=$(python3 -c 'import struct,sys; d=open(sys.argv[1],"rb").read(24); print("%dx%d" % struct.unpack(">II", d[16:24]))' "$2" 2>/dev/null)
  echo "png=$(basename "$2") bytes=$(stat -c %s "$2") size=$dims"
}
# Signed in: the token through the form, the page with the session cookie
# (its Actions: run now, retry dead mail, each hook's buttons).
SID=$(curl -s -o /dev/null -D - -d "token=$TOKEN" "$URL/login" | sed -n 's/^[Ss]et-[Cc]ookie: bo_session=\([0-9a-f]*\);.*/\1/p')
[ -n "$SID" ] || { echo "error=no session from the sign-in form"; exit 1; }
curl -sf -H "Cookie: bo_session=$SID" "$URL" > "$W/operator.html" || { echo "error=cannot fetch the page with the session"; exit 1; }
HEIGHT=2400 shot 1200 "$OUT_DIR/operator-1200.png" "file://$W/operator.html"
HEIGHT=3200 shot 400 "$OUT_DIR/operator-400.png" "file://$W/operator.html"
shot 1200 "$OUT_PNG" "file://$W/full.html"
shot 400 "$OUT_400" "file://$W/full.html"
shot 1200 "$OUT_DIR/summary-1200.png" "$URL"
shot 400 "$OUT_DIR/summary-400.png" "$URL"
shot 1200 "$OUT_DIR/index-1200.png" "http://$ADDR/"
shot 400 "$OUT_DIR/index-400.png" "http://$ADDR/"
chrome --dump-dom "file://$W/full.html" > "$W/dom.html" 2> "$W/dom.log"
[ -s "$W/dom.html" ] || { echo "error=no DOM: $(tail -3 "$W/dom.log")"; exit 1; }
chrome --dump-dom "$URL" > "$W/summary.html" 2> "$W/dom.log"
chrome --dump-dom "http://$ADDR/" > "$W/index.html" 2> "$W/dom.log"
echo "dom_bytes=$(stat -c %s "$W/dom.html")"

missing=0
check() { # LABEL EXTENDED-REGEX : the DOM must match
  if grep -Eq -- "$2" "$W/dom.html"; then
    echo "fact=ok $1"
  else
    echo "fact=MISSING $1 (no match for /$2/)"; missing=$((missing + 1))
  fi
}
check "repository name"            "<h1>$NAME</h1>"
check "last run"                   "<th>Last run</th>"
check "last run failed tasks"      'failed: [a-z, ]*hooks'
check "a run with items (totals)"  '[0-9]+ runs, [1-9][0-9]* items?,'
check "a run with items (run log)" 'acme.db 1 alerts elapse-time'
check "hook problem text"          '<li>[^<]*hook[^<]*(exit|status)[^<]*3'
check "queue table"                '<h2>Queues</h2>'
check "dead outbox message"        '<td>outbox</td><td class="bad">dead</td><td class="num">1</td>'
check "zero queue rows hidden"     'empty rows? hidden'
check "database table apart"       '<table id="database">'
check "history charts"             'id="history-hour"'
check "settings (with the token)"  '<h2>Settings</h2>'
check "event title"                'Ticket 42: crash on save'
check "recent events table"        '<th>Kind</th><th>Title</th>'
check "run log"                    '<h2>Run log</h2>'
check "a setting"                  '<td>email-send-method</td><td>pipe</td>'
check "secret setting masked"      '<td>email-send-relay-password</td><td>\*\*\*\*\*\*\*\*</td>'
if grep -q -- "$SECRET" "$W/dom.html"; then
  echo "fact=MISSING secret value hidden (the password appears in the page)"; missing=$((missing + 1))
else
  echo "fact=ok secret value hidden"
fi
if grep -q '<h2>Actions</h2>' "$W/operator.html" && grep -q 'name="csrf"' "$W/operator.html"; then echo "fact=ok signed in: actions with CSRF tokens"; else echo "fact=MISSING signed in: actions with CSRF tokens"; missing=$((missing + 1)); fi
# The public summary: counts and history, no address, command or secret.
for leak in ann@example.org "exit 3" "$SECRET" email-send-method; do
  if grep -q -- "$leak" "$W/summary.html" "$W/index.html"; then
    echo "fact=MISSING summary hides $leak"; missing=$((missing + 1))
  else
    echo "fact=ok summary hides $leak"
  fi
done
if grep -Eq '<li>alerts: [0-9]+ problems?</li>' "$W/summary.html"; then echo "fact=ok summary counts problems by task"; else echo "fact=MISSING summary counts problems by task"; missing=$((missing + 1)); fi
if grep -Eq 'problems? \(' "$W/index.html"; then echo "fact=ok index shows the problem count"; else echo "fact=MISSING index shows the problem count"; missing=$((missing + 1)); fi
echo "problems_shown:"
sed -n '/<ul class="problems">/,/<\/ul>/p' "$W/dom.html" | sed -n 's/^<li>\(.*\)<\/li>$/  \1/p'
echo "missing=$missing"
[ "$missing" = 0 ]
