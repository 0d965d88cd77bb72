"""The durable queue of single emails (confirmation, welcome, preferences link).

A request never talks to the SMTP server: it commits a QueuedEmail row together
with the change that calls for it, then wakes a worker thread (MAIL_QUEUE_THREAD)
that flushes the queue. The row is the durable part: a dead SMTP server only
delays mail, and a restart picks up whatever was left.

Rows are claimed a batch at a time with one UPDATE that only touches unclaimed
rows (or rows whose claim has expired), tagged with a random claim id, so two
processes (or threads) never send the same row. A row may carry finished message
bytes, or be empty and rendered when it is sent by the renderer registered for
its kind: that is how an import of 100,000 pending subscribers queues their
confirmations without rendering any of them.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from collections.abc import Callable
from datetime import timedelta

from flask import Flask, current_app
from sqlalchemy import event, func, or_, select, update

from newsletter.engine.clock import utcnow
from newsletter.engine.smtp import MailError
from newsletter.extensions import db
from newsletter.mail.compose import envelope_sender
from newsletter.mail.transports import transport_from_url
from newsletter.models import QueuedEmail, Subscriber

log = logging.getLogger(__name__)

CLAIM_SECONDS = 300  # a claim older than this belongs to a flush that died: take it over
BATCH_SIZE = 100

# kind -> renderer(subscriber, cache) -> message bytes, or None when it is no longer wanted
# (say, a confirmation for someone who has unsubscribed since). `cache` lives for one flush.
Renderer = Callable[[Subscriber, dict], "bytes | None"]
RENDERERS: dict[str, Renderer] = {}


def renderer(kind: str) -> Callable[[Renderer], Renderer]:
    """Register the function that renders queued rows of `kind` that carry no message."""

    def register(func: Renderer) -> Renderer:
        RENDERERS[kind] = func
        return func

    return register


@event.listens_for(db.session, "after_commit")
def _wake_after_commit(session) -> None:
    """Mail queued in a transaction goes out once it is committed, never before."""
    app = session.info.pop("outbox_wake", None)
    if app is not None:
        with app.app_context():
            wake()


@event.listens_for(db.session, "after_rollback")
def _nothing_to_wake(session) -> None:
    session.info.pop("outbox_wake", None)


def enqueue(kind: str, *, to: str, subscriber_id: int | None = None, message: bytes = b"") -> QueuedEmail:
    """Add a message to the session; it is durable, and the worker is woken, when the caller commits."""
    if not message and kind not in RENDERERS:
        raise ValueError(f"no message given and no renderer for {kind!r}")
    row = QueuedEmail(kind=kind, to_addr=to, subscriber_id=subscriber_id, message=message,
                      next_attempt_at=utcnow())
    db.session.add(row)
    db.session.info["outbox_wake"] = current_app._get_current_object()  # type: ignore[attr-defined]
    return row


def backoff(attempts: int) -> timedelta:
    """1, 2, 4, … minutes after each failure, at most an hour."""
    return timedelta(minutes=min(2 ** max(attempts - 1, 0), 60))


def _due():
    now = utcnow()
    return (
        QueuedEmail.sent_at.is_(None),
        QueuedEmail.failed_at.is_(None),
        QueuedEmail.next_attempt_at <= now,
        or_(QueuedEmail.claimed_until.is_(None), QueuedEmail.claimed_until < now),
    )


def _claim(size: int) -> list[QueuedEmail]:
    """Atomically claim up to `size` due rows for this flush; committed before anything is sent."""
    claim_id = secrets.token_hex(8)
    candidates = select(QueuedEmail.id).where(*_due()).order_by(QueuedEmail.id).limit(size)
    claim = update(QueuedEmail).values(
        claimed_by=claim_id, claimed_until=utcnow() + timedelta(seconds=CLAIM_SECONDS))
    if db.engine.dialect.name == "postgresql":
        # Concurrent flushes take different rows (SKIP LOCKED); a CTE joined by UPDATE … FROM,
        # because as an IN (subquery) PostgreSQL may run the locking subquery once per row.
        picked = candidates.with_for_update(skip_locked=True).cte("picked")
        claim = claim.where(QueuedEmail.id == picked.c.id)
    else:
        # The WHERE is repeated on the UPDATE itself: a row another flush claimed meanwhile
        # no longer matches, so it is not taken twice.
        claim = claim.where(QueuedEmail.id.in_(candidates.scalar_subquery()), *_due())
    db.session.execute(claim.execution_options(synchronize_session=False))
    db.session.commit()
    return list(db.session.execute(
        select(QueuedEmail).where(QueuedEmail.claimed_by == claim_id, QueuedEmail.sent_at.is_(None))
        .order_by(QueuedEmail.id)
    ).scalars())


def _message_for(row: QueuedEmail, cache: dict) -> bytes | None:
    if row.message:
        return row.message
    subscriber = db.session.get(Subscriber, row.subscriber_id) if row.subscriber_id else None
    if subscriber is None:
        return None
    return RENDERERS[row.kind](subscriber, cache)


def _release(rows: list[QueuedEmail]) -> None:
    for row in rows:
        row.claimed_until = None
        row.claimed_by = None
    db.session.commit()


def flush(limit: int | None = None) -> int:
    """Send what is due now (at most `limit` rows); returns how many were sent."""
    sent = done = 0
    cache: dict = {}
    transport = None
    max_attempts = current_app.config["MAIL_QUEUE_MAX_ATTEMPTS"]
    try:
        while limit is None or done < limit:
            batch = _claim(BATCH_SIZE if limit is None else min(BATCH_SIZE, limit - done))
            if not batch:
                break
            for index, row in enumerate(batch):
                done += 1
                try:
                    message = _message_for(row, cache)
                    if message is None:
                        row.failed_at, row.last_error = utcnow(), "not sent: no longer wanted"
                    else:
                        transport = transport or transport_from_url()
                        transport.send(envelope_sender(row.subscriber_id), row.to_addr, message)
                        row.sent_at = utcnow()
                        sent += 1
                except MailError as exc:
                    _failed(row, exc, max_attempts)
                    if exc.code is None:  # no connection: the server is down, stop for now
                        db.session.commit()
                        _release(batch[index + 1:])
                        return sent
                except Exception as exc:  # noqa: BLE001  (a broken row must not stop the queue)
                    log.exception("queued email %s (%s) could not be rendered", row.id, row.kind)
                    _failed(row, exc, max_attempts)
                row.claimed_until = None
                # One commit per message: a crash re-sends at most the one in flight.
                db.session.commit()
    finally:
        if transport is not None:
            transport.close()
    return sent


def _failed(row: QueuedEmail, exc: Exception, max_attempts: int) -> None:
    row.attempts += 1
    row.last_error = str(exc)[:500]
    row.claimed_until = None
    permanent = isinstance(exc, MailError) and exc.permanent
    # A dead server (no reply code) never makes us give up; refusals and broken rows do.
    counts = not isinstance(exc, MailError) or exc.code is not None
    if permanent or (counts and row.attempts >= max_attempts):
        row.failed_at = utcnow()
        log.warning("queued email %s to subscriber %s given up: %s", row.id, row.subscriber_id, exc)
    else:
        row.next_attempt_at = utcnow() + backoff(row.attempts)
        log.info("queued email %s will be retried: %s", row.id, exc)


def pending_count() -> int:
    """Rows neither sent nor given up."""
    return db.session.execute(
        select(func.count()).select_from(QueuedEmail)
        .where(QueuedEmail.sent_at.is_(None), QueuedEmail.failed_at.is_(None))
    ).scalar_one()


# --- the in-process worker ------------------------------------------------------


class _Worker:
    def __init__(self, app: Flask):
        self.app = app
        self.event = threading.Event()
        self.stopping = False
        self.pid = os.getpid()
        self.thread = threading.Thread(target=self.run, name="mail-queue", daemon=True)

    def run(self) -> None:
        poll = self.app.config["MAIL_QUEUE_POLL_SECONDS"]
        while not self.stopping:
            self.event.wait(timeout=poll)
            self.event.clear()
            if self.stopping:
                break
            with self.app.app_context():
                try:
                    flush()
                except Exception:  # noqa: BLE001  (the worker must outlive a database hiccup)
                    log.exception("mail queue flush failed")
                finally:
                    db.session.remove()


_workers: dict[int, _Worker] = {}
_workers_lock = threading.Lock()


def wake() -> None:
    """Have this process's worker flush the queue now (it is started on first use)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if not app.config.get("MAIL_QUEUE_THREAD"):
        return
    with _workers_lock:
        worker = _workers.get(id(app))
        # After a fork (gunicorn) the parent's thread does not exist here: start our own.
        if worker is None or worker.pid != os.getpid() or not worker.thread.is_alive():
            worker = _workers[id(app)] = _Worker(app)
            worker.thread.start()
    worker.event.set()


def stop_workers() -> None:
    """Stop every worker thread of this process (tests, shutdown)."""
    with _workers_lock:
        workers = list(_workers.values())
        _workers.clear()
    for worker in workers:
        worker.stopping = True
        worker.event.set()
        if worker.thread.is_alive():
            worker.thread.join(timeout=10)
