"""One digest, whoever asks at the same moment: two `flask --app wsgi digest send` processes,
or two schedulers (one started by mistake) and an admin's manual send, on one database (SQLite
file or PostgreSQL) and a real SMTP server. The SMTP server holds the first message until
another process is provably waiting for the send lease, so the runs really overlap."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from datetime import datetime, timedelta

from digest_helpers import NOW, CliProcess, cli_env, digest_count, subscriber

from newsletter import delivery, digests
from newsletter.digests import articles
from newsletter.engine.clock import utcnow
from newsletter.extensions import db
from newsletter.models import Delivery, Digest

WAITING = "waiting for another process that holds the lease 'digest-send'"
PEOPLE = [(f"p{i:02d}@example.se", ("sv", "en")[i % 2], ((), ("blogg",), ("nyheter", "blogg"))[i % 3])
          for i in range(24)]


def _setup(now: datetime) -> None:
    articles.add_article(title="Nytt bibliotek i Ålidhem", url="https://norrsken.example/bibliotek/",
                         published=now - timedelta(hours=5))
    articles.add_article(title="Tankar om våren", url="https://norrsken.example/blogg/var/",
                         topic_slug="blogg", published=now - timedelta(hours=2))
    for email, language, topics in PEOPLE:
        subscriber(email, language=language, topics=topics)


def _hold_first_message(smtp_server) -> threading.Event:
    """The SMTP server answers nobody until the returned event is set (or 30 s pass)."""
    release = threading.Event()
    smtp_server.handler.faults = lambda _rcpt: release.wait(30) and None
    return release


def _printing(processes: list[CliProcess], text: str, timeout: float = 30) -> list[CliProcess]:
    """The processes that printed `text`, once one has (or the time is up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not any(text in p.output for p in processes):
        time.sleep(0.05)
    return [p for p in processes if text in p.output]


def _release_when_one_waits(processes: list[CliProcess], release: threading.Event) -> list[CliProcess]:
    waiting = _printing(processes, WAITING)
    release.set()
    return waiting


def _assert_one_digest_and_one_copy_each(app, smtp_server) -> None:
    received = Counter(rcpt for _, rcpts, _ in smtp_server.handler.messages for rcpt in rcpts)
    assert received == Counter(email for email, _, _ in PEOPLE)  # everybody, exactly once
    with app.app_context():
        assert digest_count() == 1
        digest = db.session.execute(db.select(Digest)).scalar_one()
        assert digest.status == "done" and len(digest.articles) == 2
        states = Counter(db.session.execute(db.select(Delivery.state)).scalars())
        assert states == {"sent": len(PEOPLE)}
        assert delivery.send_progress(digest.id)["sent"] == len(PEOPLE)


def test_two_digest_send_processes_make_one_digest(smtp_app, smtp_server, database_url, tmp_path):
    with smtp_app.app_context():
        _setup(utcnow())
    release = _hold_first_message(smtp_server)
    env = cli_env(database_url, MAIL_URL=smtp_server.url)
    senders = [CliProcess(["digest", "send"], env, tmp_path / f"instance{n}") for n in (1, 2)]
    waiting = _release_when_one_waits(senders, release)
    codes = [p.finish() for p in senders]
    outputs = [p.output for p in senders]
    assert codes == [0, 0], outputs
    assert len(waiting) == 1, outputs  # the two really ran at the same time
    assert sorted("(done)" in out for out in outputs) == [False, True], outputs
    assert sum("nothing new: no digest compiled" in out for out in outputs) == 1, outputs
    _assert_one_digest_and_one_copy_each(smtp_app, smtp_server)


def test_two_schedulers_and_a_manual_send_at_the_same_moment_make_one_digest(
        smtp_app, smtp_server, database_url, tmp_path):
    with smtp_app.app_context():
        _setup(utcnow())
    # A daily schedule that fired two minutes ago: a scheduler starts with its catch-up run.
    fired = (utcnow() - timedelta(minutes=2)).replace(second=0, microsecond=0)
    env = cli_env(database_url, MAIL_URL=smtp_server.url, TIMEZONE="UTC",
                  DIGEST_SCHEDULE=f"{fired.minute} {fired.hour} * * *", FEED_POLL_MINUTES="0")
    release = _hold_first_message(smtp_server)
    schedulers = [CliProcess(["scheduler"], env, tmp_path / f"scheduler{n}") for n in (1, 2)]
    manual = CliProcess(["digest", "send"], env, tmp_path / "manual")
    try:
        waiting = _release_when_one_waits([*schedulers, manual], release)
        assert manual.finish() == 0, manual.output
        # The scheduler started second is a standby: it waits for the first one's lease.
        standby = _printing(schedulers, "holds the lease 'scheduler'")
        active = [s for s in schedulers if s not in standby]
        assert len(standby) == 1 and len(active) == 1, [s.output for s in schedulers]
        period = f"{fired:%Y-%m-%dT%H:%M}"  # a daily schedule: runs are keyed by their local time
        ended = (f" of {period}: done", f"no digest for {period}: nothing new")  # it sent, or manual did
        assert active[0].wait_for(*ended, timeout=30), active[0].output
    finally:
        for run in schedulers:
            run.process.send_signal(signal.SIGTERM)
        codes = [run.finish() for run in schedulers]
    assert codes == [0, 0], [s.output for s in schedulers]
    assert len(waiting) == 1, [s.output for s in (*schedulers, manual)]
    assert "was missed; making it now" in active[0].output
    _assert_one_digest_and_one_copy_each(smtp_app, smtp_server)
    with smtp_app.app_context():  # the leases are released on SIGTERM
        leases = db.session.execute(db.text("select name from scheduler_lock")).scalars().all()
        assert "scheduler" not in leases and "digest-send" not in leases


def test_compiles_racing_in_two_threads_make_one_digest(app):
    """Without the send lease, the unique keys alone decide (a compile from the admin's view)."""
    with app.app_context():
        _setup(NOW)
    barrier = threading.Barrier(2)
    made: list[int | None] = []

    def compile_(period: str | None) -> None:
        with app.app_context():
            barrier.wait()
            digest = digests.compile_digest(NOW, period=period)
            made.append(digest.id if digest else None)

    threads = [threading.Thread(target=compile_, args=(p,)) for p in ("2026-W48", None)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(made) == 2 and made.count(None) == 1, made
    with app.app_context():
        assert digest_count() == 1
        assert db.session.execute(db.text("select count(*) from digest_article")).scalar() == 2
