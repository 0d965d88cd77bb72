"""The durable mail queue: sending outside the request, retries, give-ups, no double sends."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import time_machine
from conftest import free_port
from sqlalchemy import select
from subs_helpers import subscriber

from newsletter import subscriptions
from newsletter.engine.clock import utcnow
from newsletter.extensions import db
from newsletter.mail import outbox as mail_queue
from newsletter.models import QueuedEmail


def _rows():
    db.session.expire_all()
    return list(db.session.execute(select(QueuedEmail).order_by(QueuedEmail.id)).scalars())


def test_a_dead_smtp_server_loses_nothing_and_the_mail_goes_out_later(smtp_app, smtp_server):
    live_url = smtp_app.config["MAIL_URL"]
    smtp_app.config["MAIL_URL"] = f"smtp://127.0.0.1:{free_port()}"  # nothing listens there
    with smtp_app.app_context(), time_machine.travel(utcnow(), tick=False) as traveller:
        subscriptions.request_signup("anna@example.se", topics=[], language="sv")
        subscriptions.request_signup("erik@example.se", topics=[], language="en")
        assert mail_queue.flush() == 0
        rows = _rows()
        assert [r.attempts for r in rows] == [1, 0]  # stopped at the first connection failure
        assert all(r.sent_at is None and r.failed_at is None and r.claimed_until is None for r in rows)
        assert "connection failed" in rows[0].last_error
        assert mail_queue.flush() == 0  # anna's row waits for its back-off; erik's is tried, and fails
        assert [r.attempts for r in _rows()] == [1, 1]
        smtp_app.config["MAIL_URL"] = live_url
        traveller.shift(timedelta(minutes=5))
        assert mail_queue.flush() == 2
        assert mail_queue.pending_count() == 0
    assert sorted(m["To"] for m in smtp_server.messages()) == ["anna@example.se", "erik@example.se"]


def test_a_temporary_refusal_is_retried_with_back_off_then_given_up(smtp_app, smtp_server):
    smtp_server.handler.faults = lambda rcpt: "451 4.7.1 try again later"
    smtp_app.config["MAIL_QUEUE_MAX_ATTEMPTS"] = 3
    with smtp_app.app_context(), time_machine.travel(utcnow(), tick=False) as traveller:
        subscriptions.request_signup("anna@example.se", topics=[], language="sv")
        assert mail_queue.flush() == 0
        [row] = _rows()
        assert row.attempts == 1 and row.failed_at is None and row.next_attempt_at > utcnow()
        assert mail_queue.flush() == 0 and _rows()[0].attempts == 1  # not due yet
        traveller.shift(mail_queue.backoff(1) + timedelta(seconds=1))
        mail_queue.flush()
        assert _rows()[0].attempts == 2
        traveller.shift(mail_queue.backoff(2) + timedelta(seconds=1))
        mail_queue.flush()
        [row] = _rows()
        assert row.attempts == 3 and row.failed_at is not None and row.last_error.startswith("451")
    assert smtp_server.messages() == []


def test_a_permanent_refusal_is_recorded_and_not_retried(smtp_app, smtp_server):
    smtp_server.handler.faults = lambda rcpt: "550 5.1.1 no such user"
    with smtp_app.app_context():
        subscriptions.request_signup("gone@example.se", topics=[], language="sv")
        assert mail_queue.flush() == 0
        [row] = _rows()
        assert row.attempts == 1 and row.failed_at is not None and row.last_error.startswith("550")


def test_a_confirmation_queued_for_someone_who_left_meanwhile_is_not_sent(smtp_app, smtp_server):
    with smtp_app.app_context():
        subscriptions.request_signup("anna@example.se", topics=[], language="sv")
        subscriptions.unsubscribe(subscriber("anna@example.se"), source="email")
        assert mail_queue.flush() == 0
        [row] = _rows()
        assert row.failed_at is not None and "no longer wanted" in row.last_error
    assert smtp_server.messages() == []


def test_concurrent_flushes_never_send_a_row_twice(smtp_app, smtp_server):
    with smtp_app.app_context():
        for i in range(60):
            subscriptions.add_subscriber(f"p{i}@example.se", source="admin")
    errors = []

    def worker():
        try:
            with smtp_app.app_context():
                mail_queue.flush()
                db.session.remove()
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    recipients = [m["To"] for m in smtp_server.messages()]
    assert len(recipients) == 60 and len(set(recipients)) == 60
    with smtp_app.app_context():
        assert mail_queue.pending_count() == 0


def test_the_worker_thread_sends_after_the_request_has_answered(make_app, smtp_server):
    app = make_app(MAIL_URL=smtp_server.url, MAIL_QUEUE_THREAD=True)
    try:
        with app.app_context():
            subscriptions.request_signup("thread@example.se", topics=[], language="sv")
        deadline = time.monotonic() + 10
        while not smtp_server.messages() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [m["To"] for m in smtp_server.messages()] == ["thread@example.se"]
    finally:
        mail_queue.stop_workers()
