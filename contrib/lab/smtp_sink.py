#!/usr/bin/env python3
"""An SMTP server that keeps what it receives, for the email notification tests.

    smtp_sink.py --dir DIR [--port N] [--tls-cert PEM --tls-key PEM [--require-starttls |
                 --implicit-tls]] [--user U --password P] [--stdin-eof-exits]

Listens on 127.0.0.1:N (a free port when N is 0, the default) with aiosmtpd (installed into
the lab's venv by contrib/lab/lab.sh) and prints "ready <port>" once it answers. Each message
goes to DIR/<n>.eml (as received) and DIR/<n>.json (written after it, atomically): the
envelope's "from" and "to", "tls" (whether the session was encrypted), "auth_user", the
decoded "subject", "body" and "headers" (name to value; the first of each name).

With a certificate and key it offers STARTTLS (--require-starttls: refuses mail before it) or,
with --implicit-tls, speaks TLS from the first byte. With --user and --password it accepts
AUTH PLAIN and LOGIN for that one pair, only over TLS when TLS is configured; other pairs get
"535 5.7.8 Authentication credentials invalid". Runs until SIGTERM or SIGINT, or until its
standard input closes with --stdin-eof-exits (so it ends with the test that started it).
"""

import argparse
import email
import email.policy
import json
import logging
import os
import signal
import socket
import ssl
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Sink:
    def __init__(self, directory):
        self.directory = directory
        self.count = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.count += 1
            n = self.count
        raw = envelope.content if isinstance(envelope.content, bytes) else envelope.content.encode()
        with open(os.path.join(self.directory, f"{n}.eml"), "wb") as f:
            f.write(raw)
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        body = msg.get_body(preferencelist=("plain",))
        headers = {}
        for name, value in msg.items():
            headers.setdefault(name, str(value))
        login = getattr(session.auth_data, "login", None)
        record = {
            "from": envelope.mail_from,
            "to": list(envelope.rcpt_tos),
            "tls": session.ssl is not None
            or server.transport.get_extra_info("ssl_object") is not None,
            "auth_user": login.decode() if isinstance(login, bytes) else login,
            "subject": str(msg.get("Subject", "")),
            "body": body.get_content().replace("\r\n", "\n") if body is not None else "",
            "headers": headers,
        }
        tmp = os.path.join(self.directory, f".{n}.json.tmp")
        with open(tmp, "w") as f:
            json.dump(record, f, indent=1)
        os.rename(tmp, os.path.join(self.directory, f"{n}.json"))
        return "250 2.0.0 OK: kept as %d" % n


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--require-starttls", action="store_true")
    p.add_argument("--implicit-tls", action="store_true")
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--stdin-eof-exits", action="store_true")
    a = p.parse_args()
    # Failed handshakes and refused logins are what some tests are about: no tracebacks.
    logging.getLogger("mail.log").setLevel(logging.CRITICAL)
    os.makedirs(a.dir, exist_ok=True)

    tls = None
    if a.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(a.tls_cert, a.tls_key)
    elif a.require_starttls or a.implicit_tls:
        p.error("--require-starttls and --implicit-tls need --tls-cert and --tls-key")

    kwargs = {"server_hostname": "saltpeter-smtp-sink"}
    if tls is not None and a.implicit_tls:
        kwargs["ssl_context"] = tls
    elif tls is not None:
        kwargs["tls_context"] = tls
        kwargs["require_starttls"] = a.require_starttls
    if a.user is not None:
        want = LoginPassword(a.user.encode(), (a.password or "").encode())

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = auth_data == want
            return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

        kwargs["authenticator"] = authenticator
        # AUTH only over TLS when there is TLS (STARTTLS or implicit); in the clear otherwise.
        kwargs["auth_require_tls"] = tls is not None

    port = a.port or free_port()
    controller = Controller(Sink(a.dir), hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    print(f"ready {port}", flush=True)

    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    if a.stdin_eof_exits:
        threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    while not done.wait(0.5):
        pass
    controller.stop()


if __name__ == "__main__":
    main()
