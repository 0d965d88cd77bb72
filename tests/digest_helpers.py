"""Helpers of the digest tests: the fixture feeds, a frozen "now", subscribers, the scheduler run
at a given time, and the real `flask` command line."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading
import zlib
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import time_machine
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED
from apscheduler.schedulers.background import BackgroundScheduler

from newsletter import scheduler
from newsletter.digests import feeds
from newsletter.extensions import db
from newsletter.models import Article, Digest, Subscriber
from newsletter.subscriptions.topics import ensure_topics, topics_by_slugs

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"


def digest_count() -> int:
    return db.session.execute(db.select(db.func.count()).select_from(Digest)).scalar_one()


def run_scheduler_at(app, at: datetime, timeout: float = 20) -> bool:
    """Start a real BackgroundScheduler as a process coming up at `at` (the clock frozen there,
    ticking), let a catch-up run finish if one was scheduled, and stop it. True if it caught up."""
    catch_up_id = f"{scheduler.WEEKLY_JOB}-catch-up"
    with time_machine.travel(at, tick=True):
        background = BackgroundScheduler(timezone=ZoneInfo(app.config["TIMEZONE"]))
        finished = threading.Event()
        errors: list[BaseException] = []

        def listen(event) -> None:
            if event.job_id == catch_up_id:
                if event.exception is not None:
                    errors.append(event.exception)
                finished.set()

        background.add_listener(listen, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
        scheduler.build_scheduler(app, background)
        caught_up = background.get_job(catch_up_id) is not None
        background.start()
        try:
            if caught_up:
                assert finished.wait(timeout), "the catch-up run did not finish"
        finally:
            background.shutdown(wait=True)
    assert not errors, errors
    return caught_up


def png(width: int, height: int, rgb: tuple[int, int, int] = (120, 150, 180)) -> bytes:
    """A plain one-colour PNG, for pictures the browser tests serve in place of remote images."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def cli_env(database_url: str, **settings: str) -> dict[str, str]:
    """Environment for a real `flask --app wsgi …` subprocess on the test's database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIGEST_", "FEED_", "MAIL_"))}
    env.update({
        "DATABASE_URL": database_url,
        "SECRET_KEY": "test-secret-key",
        "PUBLIC_URL": "http://newsletter.test",
        "MAIL_FROM": "Föreningen Norrsken <nyhetsbrev@norrsken.example>",
        "MAIL_QUEUE_THREAD": "0",
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(settings)
    return env


def flask_cli(args: list[str], env: dict[str, str], instance: Path) -> subprocess.Popen:
    """Start `flask --app wsgi ARGS` from the project root; stdout and stderr are captured."""
    flask = Path(sys.executable).with_name("flask")
    return subprocess.Popen([str(flask), "--app", "wsgi", *args], cwd=ROOT,
                            env={**env, "INSTANCE_PATH": str(instance)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


class CliProcess:
    """A running `flask --app wsgi …` subprocess whose output lines are collected as they come."""

    def __init__(self, args: list[str], env: dict[str, str], instance: Path):
        self.args = args
        self.process = flask_cli(args, env, instance)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._readers = [threading.Thread(target=self._read, args=(stream,), daemon=True)
                         for stream in (self.process.stdout, self.process.stderr)]
        for reader in self._readers:
            reader.start()

    def _read(self, stream) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        stream.close()

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(self, *texts: str, timeout: float = 30) -> bool:
        """Wait until a line containing one of `texts` was printed (True) or the time is up (False)."""
        with self._changed:
            return self._changed.wait_for(
                lambda: any(text in line for line in self.lines for text in texts), timeout)

    def finish(self, timeout: float = 60) -> int:
        """Wait for the process to exit (killed after `timeout`) and its output to be read."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"{self.args} did not finish:\n{self.output}") from None
        for reader in self._readers:
            reader.join(10)
        return code


# Monday of ISO week 48, 07:00 in Stockholm: the default DIGEST_SCHEDULE fires then.
NOW = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)

# The fixture feeds hold 8 items: one guid is repeated and one item is older than a week.
CURRENT_TITLES = {
    "Nytt bibliotek i Ålidhem öppnar i vår (uppdaterad)",
    "Pressmeddelande: 12 miljoner till upprustning av lekplatser",
    "Öppet möte om kollektivtrafiken",
    "Krönika: Därför behöver vi fler mötesplatser 🏠",
    "Tankar efter en vecka i Stockholm",
    "Ideella krafter gör skillnad",
}
OLD_TITLE = "Årsmötet 2026: protokoll och nya styrelsen"


def load_fixture_feeds(feed_server, now: datetime = NOW) -> list:
    """Register both fixture feeds and poll them at `now`."""
    feeds.add_feed(feed_server.url("/nyheter.rss"))
    feeds.add_feed(feed_server.url("/blogg.atom"))
    return feeds.fetch_all_feeds(now)


def subscriber(email: str, *, language: str = "sv", topics: tuple[str, ...] = (),
               status: str = "confirmed") -> Subscriber:
    ensure_topics()
    person = Subscriber(email=email, language=language, status=status,
                        topics=topics_by_slugs(topics) if topics else [])
    db.session.add(person)
    db.session.commit()
    return person


def all_articles() -> list[Article]:
    return list(db.session.execute(db.select(Article).order_by(Article.id)).scalars())
