#!/usr/bin/env python3
"""The after-request check for a host in Python: one SQL statement.

After each request, a host asks its repository one statement on the
connection it already has open. Only when the answer is "maybe" does it
start `backoffice trigger REPO`, which makes the full check and starts a
detached worker if work is due. So a request that finds nothing to do
costs a few microseconds, not a process start.

The statement and the meaning of its three values are a stable interface
(README, "From any other language"):

* the lease (`config` row `backoffice`): "PID EXPIRES NEXT_PID NEXT_EXPIRES
  ...": when NEXT_PID is not 0 and NEXT_EXPIRES is not past, a worker is on
  deck and will pick up this request's work;
* `backoffice-disable`: on ("1", "on", "yes", "true") means never start one;
* the due summary (`backoffice-due`): "1 T FINGERPRINT" means nothing is
  due before Unix time T, "1 never FINGERPRINT" nothing until something is
  written; anything else (missing, another version) means "maybe".

Usage, as a demonstration: after_request.py REPO [BACKOFFICE]
prints the answer and, on "maybe", runs the trigger.
"""

import sqlite3
import subprocess
import sys
import time

CHECK_SQL = """SELECT
  (SELECT value FROM config WHERE name = 'backoffice'),
  (SELECT value FROM config WHERE name = 'backoffice-disable'),
  (SELECT value FROM config WHERE name = 'backoffice-due')"""


def why_not(conn, now=None):
    """None when a worker may be needed ("maybe"), else the reason not."""
    now = int(time.time()) if now is None else now
    try:
        lease, disable, due = conn.execute(CHECK_SQL).fetchone()
    except sqlite3.Error:
        return None  # no config table yet, locked...: let the trigger decide
    if str(disable or "").strip().lower() in ("1", "on", "yes", "true"):
        return "backoffice-disable is on"
    words = str(lease or "").split()
    if len(words) >= 4 and words[2].isdigit() and words[3].isdigit():
        if int(words[2]) > 0 and int(words[3]) >= now:
            return "worker %s is on deck" % words[2]
    summary = str(due or "").split()
    if len(summary) == 3 and summary[0] == "1":
        if summary[1] == "never":
            return "nothing is due"
        if summary[1].isdigit() and int(summary[1]) > now:
            return "nothing is due until %s" % summary[1]
    return None


def after_request(conn, repo, backoffice="backoffice"):
    """The check; on "maybe", `backoffice trigger` (returns at once)."""
    reason = why_not(conn)
    if reason is None:
        subprocess.run([backoffice, "trigger", "--quiet", repo], check=False)
    return reason


if __name__ == "__main__":
    repo = sys.argv[1]
    exe = sys.argv[2] if len(sys.argv) > 2 else "backoffice"
    with sqlite3.connect(repo) as conn:
        said = after_request(conn, repo, exe)
    print("maybe: ran backoffice trigger" if said is None else "no: " + said)
