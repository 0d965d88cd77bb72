"""Fixtures: a fresh app and database per test (SQLite, and PostgreSQL when
TEST_DATABASE_URL is set), a real SMTP server (aiosmtpd), and helpers to read
the messages it received.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
import threading
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from config import TestConfig  # noqa: E402
from newsletter import create_app  # noqa: E402
from newsletter.extensions import db  # noqa: E402

FIXTURES = ROOT.parent / "shared" / "fixtures"
if not FIXTURES.exists():  # a clone without shared/ beside it: the copies in tests/fixtures
    FIXTURES = ROOT / "tests" / "fixtures"

BACKENDS = ["sqlite"]
if os.environ.get("TEST_DATABASE_URL"):
    BACKENDS.append("postgresql")
elif os.environ.get("CI"):
    raise RuntimeError("CI is set but TEST_DATABASE_URL is not: the PostgreSQL run must not be skipped")


# Files whose every test is slow: they start processes (send workers, Celery, `kill -9`) or
# send thousands of messages. `pytest -m "not slow and not browser"` is the fast subset.
SLOW_FILES = {"test_delivery_kill.py", "test_delivery_celery.py", "test_delivery_faults.py",
              "test_send_worker.py", "test_delivery_brokers.py"}


def pytest_collection_modifyitems(items):
    for item in items:
        name = item.path.name
        if name.endswith("_browser.py"):
            item.add_marker(pytest.mark.browser)
        if name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)


# --- PostgreSQL: one throwaway database per test run -----------------------------


@pytest.fixture(scope="session")
def postgres_url():
    """A fresh database on the TEST_DATABASE_URL server, dropped at the end of the run."""
    base = make_url(os.environ["TEST_DATABASE_URL"]).set(drivername="postgresql+psycopg")
    name = f"nl_test_{os.getpid()}_{secrets.token_hex(3)}"
    admin = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:  # fails (not skips) when PostgreSQL cannot be reached
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = base.set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        conn.execute(text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": name})
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    return request.getfixturevalue("postgres_url")


def _reset_database(app) -> None:
    with app.app_context():
        if db.engine.dialect.name == "postgresql":
            db.create_all()
            names = ", ".join(f'"{t.name}"' for t in db.metadata.sorted_tables)
            db.session.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
            db.session.commit()
        else:
            db.create_all()


@pytest.fixture
def app_config(database_url, tmp_path):
    """Overrides for create_app; a test may change them before `app` is used."""
    return {
        "SQLALCHEMY_DATABASE_URI": database_url,
        "INSTANCE_PATH": str(tmp_path / "instance"),
    }


@pytest.fixture
def app(app_config):
    app = create_app(app_config, config_class=TestConfig)
    _reset_database(app)
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


# --- a real SMTP server --------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class CollectingHandler:
    """An aiosmtpd handler that keeps every message; `faults` lets a test refuse some.

    `faults(rcpt) -> str | None` returns an SMTP reply (e.g. "451 try later")
    to refuse that recipient, or None to accept it.
    """

    def __init__(self):
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.lock = threading.Lock()
        self.faults = None

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.faults is not None:
            reply = self.faults(address)
            if reply:
                return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 Message accepted"


class SMTPServer:
    def __init__(self):
        self.handler = CollectingHandler()
        self.port = free_port()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port,
                                     enable_SMTPUTF8=True)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    @property
    def raw(self) -> list[bytes]:
        with self.handler.lock:
            return [data for _, _, data in self.handler.messages]

    def messages(self, to: str | None = None) -> list[EmailMessage]:
        """Parsed messages received, optionally only those for one recipient."""
        with self.handler.lock:
            items = list(self.handler.messages)
        return [
            message_from_bytes(data, policy=policy.default)  # type: ignore[misc]
            for _, rcpts, data in items
            if to is None or to in rcpts
        ]

    def clear(self) -> None:
        with self.handler.lock:
            self.handler.messages.clear()


@pytest.fixture
def smtp_server():
    server = SMTPServer()
    server.controller.start()
    yield server
    server.controller.stop()


@pytest.fixture
def smtp_app(app_config, smtp_server):
    """An app whose MAIL_URL is the real SMTP server."""
    app_config["MAIL_URL"] = smtp_server.url
    app = create_app(app_config, config_class=TestConfig)
    _reset_database(app)
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def body_text(message: EmailMessage, subtype: str = "plain") -> str:
    """The decoded text or HTML part, with line ends normalised to \n."""
    part = message.get_body(preferencelist=(subtype,))
    assert part is not None, f"no text/{subtype} part"
    return part.get_content().replace("\r\n", "\n")


# --- subscriptions ------------------------------------------------------


@pytest.fixture
def make_app(app_config):
    """Build an app with extra settings (`make_app(SIGNUP_MIN_SECONDS=3)`); disposed afterwards."""
    apps = []

    def make(**overrides):
        app = create_app({**app_config, **overrides}, config_class=TestConfig)
        _reset_database(app)
        apps.append(app)
        return app

    yield make
    for app in apps:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


# --- a real HTTP server for feeds (loopback), with ETag / Last-Modified -------


class FeedServer:
    """Serves `files` (path -> bytes, or an int status) over HTTP on loopback.

    Answers conditional GETs with 304 when If-None-Match or If-Modified-Since match,
    and records every request as (path, headers) in `requests`.
    """

    LAST_MODIFIED = "Sun, 22 Nov 2026 18:40:02 GMT"

    def __init__(self):
        import hashlib
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.files: dict[str, bytes | int] = {}
        self.requests: list[tuple[str, dict]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802  (http.server's naming)
                server.requests.append((self.path, dict(self.headers)))
                body = server.files.get(self.path, 404)
                if isinstance(body, int):
                    self.send_response(body)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                etag = '"' + hashlib.sha1(body).hexdigest()[:16] + '"'
                if self.headers.get("If-None-Match") == etag or (
                        "If-None-Match" not in self.headers
                        and self.headers.get("If-Modified-Since") == server.LAST_MODIFIED):
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.end_headers()
                    return
                self.send_response(200)
                kind = "application/atom+xml" if self.path.endswith(".atom") else "application/rss+xml"
                self.send_header("Content-Type", f"{kind}; charset=UTF-8")
                self.send_header("ETag", etag)
                self.send_header("Last-Modified", server.LAST_MODIFIED)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def feed_server():
    """The fixture feeds at /nyheter.rss and /blogg.atom over real HTTP."""
    server = FeedServer()
    server.files["/nyheter.rss"] = (FIXTURES / "nyheter.rss").read_bytes()
    server.files["/blogg.atom"] = (FIXTURES / "blogg.atom").read_bytes()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()
