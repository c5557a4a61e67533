#!/usr/bin/env python3
"""A small SMTP server for the relay tests, on Python's standard smtpd.

    smtp_server.py OUTDIR [--mode MODE [N]] [--auth USER:PASSWORD] [--max-seconds S]

Listens on 127.0.0.1, on a free port, and prints `port N` on stdout once it
accepts connections. Each accepted message becomes its own file in OUTDIR,
`msg-NNNNNN.eml`, written to a temporary name and renamed, so a reader never
sees half a message. The file's first line is the envelope,
`envelope FROM TO [TO...]`; the rest is the message with CRLF line ends, as
the client sent it (dot-stuffing undone). Each new connection appends a line
to OUTDIR/connections.

Modes (--mode):
  ok              accept everything (the default)
  refuse-first N  answer 451 at the end of the data of the first N messages,
                  then accept
  reject          answer 550 to every RCPT TO
  drop-after N    accept N messages, then reset the connection in the middle
                  of the next one's data; accept normally afterwards
  close-after N   accept N messages, then close that connection right after
                  the 250 (as an idle timeout would); accept normally afterwards

--auth USER:PASSWORD offers AUTH PLAIN and requires it before MAIL. A wrong
password is answered with a 535 that echoes the credentials given, so tests
can check that the client never repeats them.

The server exits after --max-seconds (default 60), or as soon as its stdin
closes, so a test that dies never leaves it behind.
"""

import argparse
import base64
import os
import re
import socket
import struct
import sys
import threading
import time
import traceback
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import asyncore
    import smtpd


ANGLE_ADDR = re.compile(r"\s*<([^<>\s\"]+@[^<>\s\"]+)>\s*(.*)$")


class Channel(smtpd.SMTPChannel):
    def __init__(self, server, *args, **kw):
        self.dropped = False
        self.drop_in_data = False
        self.authenticated = server.auth is None
        super().__init__(server, *args, **kw)

    def handle_error(self):
        # asyncore would print a one-line summary on stdout; the tests read
        # stdout only for the port, and keep stderr.
        traceback.print_exc()
        self.close()

    # -- the modes -------------------------------------------------------

    def smtp_EHLO(self, arg):
        if self.smtp_server.auth is None:
            return super().smtp_EHLO(arg)
        # smtpd's EHLO ends its list with "250 HELP"; insert AUTH before it.
        real_push = self.push
        def push(line):
            if line == "250 HELP":
                real_push("250-AUTH PLAIN")
            real_push(line)
        self.push = push
        try:
            super().smtp_EHLO(arg)
        finally:
            del self.push

    def smtp_AUTH(self, arg):
        words = (arg or "").split()
        if len(words) != 2 or words[0].upper() != "PLAIN":
            self.push("504 5.5.4 only AUTH PLAIN with an initial response")
            return
        try:
            _, user, password = base64.b64decode(words[1]).decode().split("\0")
        except Exception:
            self.push("501 5.5.2 cannot decode the credentials")
            return
        if (user, password) == self.smtp_server.auth:
            self.authenticated = True
            self.push("235 2.7.0 Authentication successful")
        else:
            self.push(f"535 5.7.8 authentication failed for {user}:{password}")

    def smtp_MAIL(self, arg):
        if not self.authenticated:
            self.push("530 5.7.0 Authentication required")
            return
        super().smtp_MAIL(arg)

    def _getaddr(self, arg):
        # smtpd runs every MAIL and RCPT address through the email package's
        # full RFC 5322 parser, which costs more than the rest of the
        # transaction. The clients under test send plain <addr-spec>.
        m = ANGLE_ADDR.match(arg or "")
        if m:
            return m.group(1), m.group(2)
        return super()._getaddr(arg)

    def smtp_RCPT(self, arg):
        if self.smtp_server.mode == "reject":
            self.push("550 5.1.1 no such user here")
            return
        super().smtp_RCPT(arg)

    def smtp_DATA(self, arg):
        server = self.smtp_server
        if self.rcpttos and not arg:
            server.data_commands += 1
            if server.mode == "drop-after" and server.data_commands == server.n + 1:
                self.drop_in_data = True
        super().smtp_DATA(arg)

    def collect_incoming_data(self, data):
        if self.dropped:
            return
        if self.smtp_state == self.DATA and self.drop_in_data:
            # Part of the message has arrived: reset the connection (RST,
            # not FIN) as a crashing server would, and take nothing more.
            self.drop_in_data = False
            self.dropped = True
            self.socket.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            self.close()
            return
        super().collect_incoming_data(data)

    def found_terminator(self):
        if self.dropped:
            return
        super().found_terminator()
        server = self.smtp_server
        if (
            server.mode == "close-after"
            and server.stored == server.n
            and not server.closed_once
        ):
            server.closed_once = True
            # Close now, not with close_when_done: that closes on a later
            # turn of the loop, after reading (and answering) whatever the
            # client sent next. The 250 is out already: push sends at once.
            assert not self.producer_fifo, "the 250 was not sent whole"
            self.close()


class Server(smtpd.SMTPServer):
    channel_class = Channel

    def __init__(self, outdir, mode, n, auth):
        self.outdir = outdir
        self.mode = mode
        self.n = n
        self.auth = auth
        self.data_commands = 0
        self.ends_of_data = 0
        self.stored = 0
        self.closed_once = False
        self.connections = open(os.path.join(outdir, "connections"), "a")
        super().__init__(("127.0.0.1", 0), None, decode_data=False)

    def handle_error(self):
        traceback.print_exc()
        os._exit(1)

    def handle_accepted(self, conn, addr):
        # Logged before the greeting goes out: once a client has read the
        # 220, its connection is counted.
        self.connections.write(f"connect {addr[0]}:{addr[1]}\n")
        self.connections.flush()
        # Each reply line is its own send(); without this, Nagle would hold
        # the second line of a multi-line reply (EHLO) for a delayed ACK.
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().handle_accepted(conn, addr)

    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        self.ends_of_data += 1
        if self.mode == "refuse-first" and self.ends_of_data <= self.n:
            return "451 4.3.0 try again later"
        self.stored += 1
        name = os.path.join(self.outdir, f"msg-{self.stored:06d}.eml")
        tmp = os.path.join(self.outdir, f".tmp-{self.stored:06d}")
        # smtpd joins the lines with LF and drops the last line end; put the
        # message back the way it travelled.
        body = data.replace(b"\n", b"\r\n") + b"\r\n"
        head = " ".join(["envelope", mailfrom, *rcpttos]).encode() + b"\n"
        with open(tmp, "wb") as f:
            f.write(head + body)
        os.rename(tmp, name)
        return None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("outdir")
    p.add_argument("--mode", nargs="+", default=["ok"])
    p.add_argument("--auth")
    p.add_argument("--max-seconds", type=float, default=60)
    args = p.parse_args()

    mode, *rest = args.mode
    modes_with_n = ("refuse-first", "drop-after", "close-after")
    if mode not in ("ok", "reject", *modes_with_n):
        p.error(f"unknown mode {mode!r}")
    if (mode in modes_with_n) != (len(rest) == 1):
        p.error(f"mode {mode!r} takes {'one number' if mode in modes_with_n else 'no argument'}")
    n = int(rest[0]) if rest else 0
    auth = tuple(args.auth.split(":", 1)) if args.auth else None

    os.makedirs(args.outdir, exist_ok=True)
    server = Server(args.outdir, mode, n, auth)
    print(f"port {server.socket.getsockname()[1]}", flush=True)

    def exit_when_stdin_closes():
        sys.stdin.buffer.read()
        os._exit(0)

    threading.Thread(target=exit_when_stdin_closes, daemon=True).start()
    deadline = time.monotonic() + args.max_seconds
    while time.monotonic() < deadline:
        asyncore.loop(timeout=0.2, use_poll=True, count=1)
    os._exit(0)


if __name__ == "__main__":
    main()
