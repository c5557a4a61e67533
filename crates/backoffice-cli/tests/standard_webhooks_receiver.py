"""A webhook receiver that verifies every delivery with the `standardwebhooks`
package from PyPI (the specification's reference library for Python), not
with code of ours.

    python3 standard_webhooks_receiver.py LOG --secret S [--raw-key]
        [--fail-first N] [--max-seconds N]

Listens on 127.0.0.1 on a free port and prints `port N` on stdout. For each
POST it appends one JSON line to LOG: the Standard Webhooks headers, the
library's verdict on the request as received (`verified`, or `error`), its
verdict on the same request with one byte of the body changed
(`tampered_rejected`), the parsed body, and the status it answered. The
first N requests are answered 500 (after being verified and logged), so the
sender retries; the others 204.

`--raw-key` passes the secret to the library as bytes (a secret that is
not `whsec_…` is its own key); otherwise as the string, which the library
decodes. Stops when its standard input closes, or after --max-seconds.
"""

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook, WebhookVerificationError


def main():
    p = argparse.ArgumentParser()
    p.add_argument("log")
    p.add_argument("--secret", required=True)
    p.add_argument("--raw-key", action="store_true")
    p.add_argument("--fail-first", type=int, default=0)
    p.add_argument("--max-seconds", type=float, default=120)
    a = p.parse_args()

    hook = Webhook(a.secret.encode() if a.raw_key else a.secret)
    lock = threading.Lock()
    state = {"seen": 0}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            n = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(n)
            headers = {k.lower(): v for k, v in self.headers.items()}
            rec = {
                "path": self.path,
                "webhook-id": headers.get("webhook-id"),
                "webhook-timestamp": headers.get("webhook-timestamp"),
                "webhook-signature": headers.get("webhook-signature"),
                "x-backoffice-delivery": headers.get("x-backoffice-delivery"),
            }
            try:
                rec["json"] = hook.verify(body, headers)
                rec["verified"] = True
            except Exception as e:  # the library's verdict, recorded
                rec["verified"] = False
                rec["error"] = f"{type(e).__name__}: {e}"
            # The same request with its body changed in one place (the
            # last digit of "time", so it stays valid UTF-8 and JSON): the
            # library must refuse it for its signature.
            if body.endswith(b"}") and body[-2:-1].isdigit():
                tampered = body[:-2] + str((int(body[-2:-1]) + 1) % 10).encode() + b"}"
                try:
                    hook.verify(tampered, headers)
                    rec["tampered_rejected"] = False
                except WebhookVerificationError as e:
                    rec["tampered_rejected"] = str(e) == "No matching signature found"
            with lock:
                state["seen"] += 1
                status = 500 if state["seen"] <= a.fail_first else 204
                rec["status"] = status
                with open(a.log, "a") as f:
                    f.write(json.dumps(rec) + "\n")
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"port {server.server_address[1]}", flush=True)

    done = threading.Event()

    def stdin_closed():
        sys.stdin.read()
        done.set()

    threading.Thread(target=stdin_closed, daemon=True).start()
    done.wait(a.max_seconds)
    server.shutdown()


if __name__ == "__main__":
    main()
