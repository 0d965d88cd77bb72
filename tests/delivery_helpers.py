"""Helpers for the delivery tests: a fault-injecting SMTP server, seeding, the CLI sender."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

from conftest import CollectingHandler
from sqlalchemy import func, insert, select

from newsletter.extensions import db
from newsletter.models import (
    Admin,
    Article,
    Delivery,
    Digest,
    Subscriber,
    digest_articles,
    new_uid,
    utcnow,
)

ROOT = Path(__file__).resolve().parent.parent
FLASK = str(Path(sys.executable).with_name("flask"))


class FaultHandler(CollectingHandler):
    """conftest's CollectingHandler (with its `faults(rcpt) -> reply | None`, e.g.
    "451 4.7.1 try later"), with more faults:

    - `drop_every`: every Nth DATA the connection is cut before the reply (nothing kept);
    - `delay`: seconds to wait in DATA (a slow server, to kill a sender mid-send).
    """

    def __init__(self):
        super().__init__()
        self.drop_every = 0
        self.delay = 0.0
        self.data_count = 0
        self.dropped = 0

    pipelining = True  # offer PIPELINING (RFC 2920): the sender then sends MAIL, RCPT, DATA at once

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # noqa: N802
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        if self.delay:
            import asyncio

            await asyncio.sleep(self.delay)
        with self.lock:
            self.data_count += 1
            drop = bool(self.drop_every) and self.data_count % self.drop_every == 0
            if drop:
                self.dropped += 1
            else:
                self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        if drop:
            server.transport.abort()  # the connection is gone before the reply: not delivered
            return "421 4.4.2 connection dropped"
        return "250 Message accepted"

    def counts(self) -> Counter:
        """How many messages each recipient got."""
        with self.lock:
            return Counter(rcpt for _, rcpts, _ in self.messages for rcpt in rcpts)

    def received(self) -> int:
        with self.lock:
            return len(self.messages)


class PipeliningServer:
    """A tiny SMTP server that offers PIPELINING (not SMTPUTF8), refuses RCPT to slow*@ with
    451 (and then DATA with 554, as RFC 2920 says), and keeps (recipient, content) of what
    it receives. One connection at a time; `after_message(conn, lines, number)` may end
    the `number`th connection after a message by returning True."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.messages: list[tuple[str, bytes]] = []
        self.connections = 0
        self.after_message = None
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with self.sock:
            while True:
                conn, _ = self.sock.accept()
                self.connections += 1
                self._session(conn, self.connections)

    def _session(self, conn: socket.socket, number: int) -> None:
        with conn, conn.makefile("rb") as lines:
            conn.sendall(b"220 test\r\n")
            rcpt, ok = "", False
            for line in lines:
                verb = line[:4].upper()
                if verb == b"EHLO":
                    conn.sendall(b"250-test\r\n250 PIPELINING\r\n")
                elif verb == b"MAIL":
                    conn.sendall(b"250 ok\r\n")
                elif verb == b"RCPT":
                    rcpt = line[9:].strip().strip(b"<>").decode()
                    ok = not rcpt.startswith("slow")
                    conn.sendall(b"250 ok\r\n" if ok else b"451 4.7.1 later\r\n")
                elif verb == b"DATA":
                    if not ok:
                        conn.sendall(b"554 no valid recipients\r\n")
                        continue
                    conn.sendall(b"354 go\r\n")
                    body = []
                    for data in lines:
                        if data == b".\r\n":
                            break
                        body.append(data[1:] if data.startswith(b".") else data)
                    self.messages.append((rcpt, b"".join(body)))
                    conn.sendall(b"250 queued\r\n")
                    if self.after_message is not None and self.after_message(conn, lines, number):
                        return
                elif verb == b"RSET":
                    conn.sendall(b"250 ok\r\n")
                elif verb == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return


def fault_server(smtp_server) -> FaultHandler:
    """Put a FaultHandler into the conftest `smtp_server` (a real aiosmtpd on loopback)."""
    handler = FaultHandler()
    smtp_server.handler = handler
    smtp_server.controller.handler = handler
    return handler


def first_try_fault(code: str, pick) -> callable:
    """A fault that refuses each picked recipient once (e.g. 451), then accepts it."""
    tried: set[str] = set()
    lock = threading.Lock()

    def fault(rcpt: str):
        if not pick(rcpt):
            return None
        with lock:
            if rcpt in tried:
                return None
            tried.add(rcpt)
        return code

    return fault


def number(rcpt: str) -> int:
    return int(rcpt.split("@")[0].removeprefix("p"))


def seed(n: int, *, status: str = "approved", admins: tuple[str, ...] = ()) -> int:
    """N confirmed subscribers p0@… p{n-1}@…, one article, and a digest of it; its id."""
    now = utcnow()
    rows = [{"email": f"p{i}@example.se", "status": "confirmed", "language": "sv" if i % 3 else "en",
             "uid": new_uid(), "name": "", "generation": 0, "created_at": now, "confirmed_at": now}
            for i in range(n)]
    for start in range(0, n, 5000):
        db.session.execute(insert(Subscriber), rows[start:start + 5000])
    key = new_uid()
    article = Article(source_id=f"https://example.se/a/{key}", title="Nytt bibliotek öppnar",
                      url=f"https://example.se/a/{key}", summary="Ett nytt bibliotek i Ålidhem.",
                      published_at=now - timedelta(hours=3))
    db.session.add(article)
    for email in admins:
        db.session.add(Admin(email=email, password_hash="x", language="en" if "en" in email else "sv"))
    digest = Digest(status=status, subject_sv="Veckans nyheter", subject_en="This week's news",
                    compiled_for=now)
    db.session.add(digest)
    db.session.flush()
    db.session.execute(insert(digest_articles), [{"digest_id": digest.id, "article_id": article.id,
                                                  "position": 0}])
    db.session.commit()
    return digest.id


def ledger(digest_id: int) -> dict[str, int]:
    rows = db.session.execute(select(Delivery.state, func.count()).where(Delivery.digest_id == digest_id)
                              .group_by(Delivery.state)).all()
    db.session.commit()
    return dict(rows)


def digest_status(digest_id: int) -> str:
    db.session.expire_all()
    status = db.session.execute(select(Digest.status).where(Digest.id == digest_id)).scalar_one()
    db.session.commit()
    return status


def cli_env(app, **settings) -> dict[str, str]:
    """Environment for `flask --app wsgi …` against the test's database and SMTP server."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SEND_", "MAIL_"))}
    env.update({
        "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
        "MAIL_URL": app.config["MAIL_URL"],
        "MAIL_FROM": app.config["MAIL_FROM"],
        "PUBLIC_URL": app.config["PUBLIC_URL"],
        "SECRET_KEY": app.config["SECRET_KEY"],
        "INSTANCE_PATH": app.instance_path,
        "BROKER_URL": "",
        "FEED_URLS": "",
        "MAIL_QUEUE_THREAD": "0",
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    })
    env.update({key: str(value) for key, value in settings.items()})
    return env


def start_cli(env: dict[str, str], *args: str, log_path: Path | None = None) -> subprocess.Popen:
    if log_path is None:
        return subprocess.Popen([FLASK, "--app", "wsgi", *args], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    with open(log_path, "ab") as out:  # the child keeps its own copy of the file
        return subprocess.Popen([FLASK, "--app", "wsgi", *args], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)


def wait_for(predicate, timeout: float, poll: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll)
    return predicate()


def kill_hard(process: subprocess.Popen) -> None:
    """kill -9, and wait until it (and its send workers, which die with it) are gone."""
    process.send_signal(signal.SIGKILL)
    process.wait(10)
