#!/usr/bin/env python3
"""A small SMTP server for the relay tests, on asyncio (standard library only).

    smtp_server.py OUTDIR [--mode MODE [N]] [--auth USER:PASSWORD]
                   [--tls-cert CERT --tls-key KEY [--smtps]] [--max-seconds S]

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

--tls-cert/--tls-key (PEM files) offer STARTTLS; with --smtps the server
speaks TLS from the first byte instead (port 465 style). A client that sent
STARTTLS gets the greeting state back (EHLO again), as RFC 3207 says.

The server exits after --max-seconds (default 60), or as soon as its stdin
closes, so a test that dies never leaves it behind.

It replaces a version on Python's `smtpd`/`asyncore`, which Python 3.12
removed; it uses asyncio's protocols (Python 3.7 or later).
"""

import argparse
import asyncio
import base64
import os
import re
import socket
import ssl
import struct
import sys
import threading
import traceback

ANGLE_ADDR = re.compile(r"^\s*<([^<>]*)>\s*(.*)$", re.S)
MAX_LINE = 1 << 20


class Server:
    def __init__(self, outdir, mode, n, auth, tls, smtps):
        self.outdir = outdir
        self.mode = mode
        self.n = n
        self.auth = auth
        self.tls = tls  # an ssl.SSLContext, or None
        self.smtps = smtps
        self.data_commands = 0
        self.ends_of_data = 0
        self.stored = 0
        self.closed_once = False
        self.connections = open(os.path.join(outdir, "connections"), "a")

    def store(self, mailfrom, rcpttos, message):
        self.stored += 1
        name = os.path.join(self.outdir, f"msg-{self.stored:06d}.eml")
        tmp = os.path.join(self.outdir, f".tmp-{self.stored:06d}")
        head = " ".join(["envelope", mailfrom, *rcpttos]).encode() + b"\n"
        with open(tmp, "wb") as f:
            f.write(head + message)
        os.rename(tmp, name)


class Session(asyncio.Protocol):
    """One SMTP session, as an asyncio protocol: input is cut into lines
    (and the data) with bytes.find in data_received and answered at once,
    without a coroutine per line (the relay's throughput test measures
    against this server, so it must not be the slow side)."""

    def __init__(self, server):
        self.s = server
        self.transport = None
        self.sock = None
        self.buf = b""
        self.in_data = False
        self.drop = False
        self.closed = False
        self.upgrading = False
        self.authenticated = server.auth is None
        self.tls_active = server.smtps
        self.reset()

    def reset(self):
        self.mailfrom = None
        self.rcpttos = []

    # -- the connection ----------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        self.sock = transport.get_extra_info("socket")
        peer = transport.get_extra_info("peername")
        # Logged before the greeting goes out: once a client has read the
        # 220, its connection is counted.
        self.s.connections.write(f"connect {peer[0]}:{peer[1]}\n")
        self.s.connections.flush()
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.reply("220 127.0.0.1 backoffice test SMTP server")

    def connection_lost(self, exc):
        self.closed = True

    def reply(self, line):
        if not self.closed:
            self.transport.write(line.encode() + b"\r\n")

    def close(self):
        self.closed = True
        self.transport.close()

    def reset_connection(self):
        # RST, not FIN, as a crashing server would.
        self.closed = True
        try:
            self.sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
        except OSError:
            pass
        self.transport.abort()

    def data_received(self, chunk):
        if self.closed:
            return
        self.buf += chunk
        try:
            self.process()
        except Exception:
            traceback.print_exc()
            self.close()

    def process(self):
        while not self.closed and not self.upgrading:
            if self.in_data:
                if not self.take_data():
                    return
                continue
            i = self.buf.find(b"\n")
            if i < 0:
                if len(self.buf) > MAX_LINE:
                    self.buf = b""
                    self.reply("500 5.5.2 line too long")
                return
            line, self.buf = self.buf[: i + 1], self.buf[i + 1 :]
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            verb, _, arg = text.partition(" ")
            verb = verb.upper()
            handler = getattr(self, "smtp_" + verb, None)
            if handler is None:
                self.reply(f"502 5.5.2 command not recognized: {verb}")
            else:
                handler(arg.strip())

    def take_data(self):
        """Cuts the message out of the input once its end is there; False
        while it is not."""
        if self.drop and self.buf:
            # Part of the message has arrived: reset the connection.
            self.reset_connection()
            return False
        # The data ends with CRLF "." CRLF, the first CRLF ending the last
        # line; an empty message is "." CRLF alone.
        if self.buf.startswith(b".\r\n"):
            end, data = 3, b""
        else:
            i = self.buf.find(b"\r\n.\r\n")
            if i < 0:
                return False
            end, data = i + 5, self.buf[: i + 2]
        self.buf = self.buf[end:]
        self.in_data = False
        # Dot-stuffing undone: one leading dot off every line that has one.
        if data.startswith(b"."):
            data = data[1:]
        self.end_of_data(data.replace(b"\r\n.", b"\r\n"))
        return True

    # -- the commands ------------------------------------------------------

    def smtp_HELO(self, arg):
        self.reset()
        self.reply("250 127.0.0.1")

    def smtp_EHLO(self, arg):
        self.reset()
        lines = ["127.0.0.1", "SIZE 33554432", "8BITMIME"]
        if self.s.tls is not None and not self.tls_active:
            lines.append("STARTTLS")
        if self.s.auth is not None:
            lines.append("AUTH PLAIN")
        lines.append("HELP")
        out = "".join(
            f"250{' ' if i == len(lines) - 1 else '-'}{l}\r\n" for i, l in enumerate(lines)
        )
        self.transport.write(out.encode())

    def smtp_STARTTLS(self, arg):
        if self.s.tls is None or self.tls_active:
            self.reply("454 4.7.0 TLS not available")
            return
        self.reply("220 2.0.0 ready to start TLS")
        # Nothing is read until the handshake is done (the client waits
        # for it); RFC 3207: everything said before it is forgotten.
        self.upgrading = True
        self.buf = b""
        asyncio.ensure_future(self.start_tls())

    async def start_tls(self):
        loop = asyncio.get_running_loop()
        try:
            self.transport = await loop.start_tls(
                self.transport, self, self.s.tls, server_side=True
            )
        except Exception:
            self.closed = True
            return
        self.tls_active = True
        self.authenticated = self.s.auth is None
        self.reset()
        self.upgrading = False
        self.process()

    def smtp_AUTH(self, arg):
        words = arg.split()
        if len(words) != 2 or words[0].upper() != "PLAIN":
            self.reply("504 5.5.4 only AUTH PLAIN with an initial response")
            return
        try:
            _, user, password = base64.b64decode(words[1]).decode().split("\0")
        except Exception:
            self.reply("501 5.5.2 cannot decode the credentials")
            return
        if (user, password) == self.s.auth:
            self.authenticated = True
            self.reply("235 2.7.0 Authentication successful")
        else:
            self.reply(f"535 5.7.8 authentication failed for {user}:{password}")

    def smtp_NOOP(self, arg):
        self.reply("250 OK")

    def smtp_RSET(self, arg):
        self.reset()
        self.reply("250 OK")

    def smtp_QUIT(self, arg):
        self.reply("221 Bye")
        self.close()

    @staticmethod
    def address(arg, keyword):
        if not arg.upper().startswith(keyword):
            return None
        m = ANGLE_ADDR.match(arg[len(keyword):])
        return m.group(1) if m else None

    def smtp_MAIL(self, arg):
        if not self.authenticated:
            self.reply("530 5.7.0 Authentication required")
            return
        if self.mailfrom is not None:
            self.reply("503 5.5.1 nested MAIL command")
            return
        addr = self.address(arg, "FROM:")
        if addr is None:
            self.reply("501 5.5.4 syntax: MAIL FROM:<address>")
            return
        self.mailfrom = addr
        self.reply("250 OK")

    def smtp_RCPT(self, arg):
        if self.mailfrom is None:
            self.reply("503 5.5.1 need MAIL before RCPT")
            return
        if self.s.mode == "reject":
            self.reply("550 5.1.1 no such user here")
            return
        addr = self.address(arg, "TO:")
        if not addr:
            self.reply("501 5.5.4 syntax: RCPT TO:<address>")
            return
        self.rcpttos.append(addr)
        self.reply("250 OK")

    def smtp_DATA(self, arg):
        s = self.s
        if not self.rcpttos:
            self.reply("503 5.5.1 need RCPT before DATA")
            return
        s.data_commands += 1
        self.drop = s.mode == "drop-after" and s.data_commands == s.n + 1
        self.in_data = True
        self.reply("354 End data with <CR><LF>.<CR><LF>")

    def end_of_data(self, message):
        s = self.s
        mailfrom, rcpttos = self.mailfrom, self.rcpttos
        self.reset()
        s.ends_of_data += 1
        if s.mode == "refuse-first" and s.ends_of_data <= s.n:
            self.reply("451 4.3.0 try again later")
            return
        s.store(mailfrom, rcpttos, message)
        self.reply("250 OK: queued")
        if s.mode == "close-after" and s.stored == s.n and not s.closed_once:
            s.closed_once = True
            # Right after the 250, as an idle timeout would.
            self.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("outdir")
    p.add_argument("--mode", nargs="+", default=["ok"])
    p.add_argument("--auth")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--smtps", action="store_true")
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
    if bool(args.tls_cert) != bool(args.tls_key):
        p.error("--tls-cert and --tls-key go together")
    if args.smtps and not args.tls_cert:
        p.error("--smtps needs --tls-cert and --tls-key")
    tls = None
    if args.tls_cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(args.tls_cert, args.tls_key)

    os.makedirs(args.outdir, exist_ok=True)
    server = Server(args.outdir, mode, n, auth, tls, args.smtps)

    def exit_when_stdin_closes():
        sys.stdin.buffer.read()
        os._exit(0)

    async def serve():
        loop = asyncio.get_running_loop()
        listener = await loop.create_server(
            lambda: Session(server),
            "127.0.0.1",
            0,
            ssl=tls if args.smtps else None,
        )
        port = listener.sockets[0].getsockname()[1]
        print(f"port {port}", flush=True)
        await asyncio.sleep(args.max_seconds)

    threading.Thread(target=exit_when_stdin_closes, daemon=True).start()
    try:
        asyncio.run(serve())
    except Exception:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


if __name__ == "__main__":
    main()
