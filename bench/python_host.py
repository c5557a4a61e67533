#!/usr/bin/env python3
"""A host in Python, for bench/trigger_latency.sh (cases python-*).

A long-lived process with its own connection, as a web application has:
per "request" it inserts an outbox row (the request's work), then runs the
after-request check of crates/backoffice-cli/examples/after_request.py: the
one-statement check, and on "maybe" `HOST trigger --quiet REPO`. It times
from just before that check to the worker's `enter` stamp in the journal,
and prints one line per run in trigger_latency.sh's format.

usage: python_host.py HOST REPO JOURNAL RUNS CASE
"""

import os
import sqlite3
import subprocess
import sys
import time

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "crates", "backoffice-cli", "examples"))
from after_request import after_request  # noqa: E402


def stamps(journal, word):
    """The (pid, nanoseconds) of the journal's lines starting with `word`."""
    try:
        with open(journal) as f:
            return [(int(p), int(ns)) for w, p, ns in (l.split() for l in f) if w == word]
    except FileNotFoundError:
        return []


def wait_idle(journal, what):
    """Waits (at most 30 s) until every worker that entered has exited."""
    deadline = time.monotonic() + 30
    while len(stamps(journal, "exit")) < len(stamps(journal, "enter")):
        if time.monotonic() > deadline:
            print(f"warning={what}: a worker is still working", flush=True)
            return
        time.sleep(0.005)


def main():
    host, repo, journal, runs, case = sys.argv[1:6]
    conn = sqlite3.connect(repo, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 5000")
    for k in range(1, int(runs) + 1):
        # Idle: the previous worker has exited, the lease is reset.
        wait_idle(journal, f"case={case} run={k}")
        subprocess.run([host, "lease", "--reset", "-R", repo], check=True,
                       stdout=subprocess.DEVNULL)
        before = len(stamps(journal, "enter"))
        conn.execute("INSERT INTO outbox(body) VALUES(?)", (f"message {k}",))
        time.sleep(0.1)
        t0 = time.time_ns()
        said = after_request(conn, repo, host)
        t1 = time.time_ns()
        deadline = time.monotonic() + 10
        while len(stamps(journal, "enter")) <= before and time.monotonic() < deadline:
            time.sleep(0.002)
        entered = stamps(journal, "enter")
        if len(entered) <= before:
            print(f"case={case} run={k} no enter line within 10 s (the check said: {said})",
                  flush=True)
            continue
        pid, te = entered[-1]
        print(f"case={case} run={k} trigger_ms={(t1 - t0) / 1e6:.2f} "
              f"enter_ms={(te - t0) / 1e6:.2f} worker={pid}", flush=True)
    wait_idle(journal, f"case={case} end")


if __name__ == "__main__":
    main()
