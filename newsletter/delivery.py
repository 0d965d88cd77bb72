"""The send pipeline: a per-recipient ledger (Delivery rows), then sending from it.

This is the first, sequential version: correct (pinned recipients, one row per
(digest, subscriber), state committed per batch, pause/cancel obeyed between
batches), not yet fast. The function signatures here are the interface that
views, CLI, scheduler and tasks call.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta

from flask import current_app
from sqlalchemy import func, insert, select

from . import tokens
from .extensions import db
from .mail import MailError, PreparedMessage, envelope_sender, smtp_address, transport_from_url
from .models import Delivery, Digest, Subscriber, utcnow

log = logging.getLogger(__name__)

# Given a subscriber, the prepared message they get, or None when nothing in it is for them.
MessageFactory = Callable[[Subscriber], "PreparedMessage | None"]


def personal_values(subscriber: Subscriber) -> dict[str, str]:
    """The per-recipient slot values of a bulk message."""
    return {
        "to": smtp_address(subscriber.email)[0],
        "unsubscribe_url": tokens.unsubscribe_url(subscriber),
        "preferences_url": tokens.preferences_url(subscriber),
    }


def start_send(digest_id: int) -> int:
    """Pin the recipients (confirmed now) as queued Delivery rows; idempotent. Returns the count."""
    digest = db.session.get(Digest, digest_id)
    if digest is None:
        raise LookupError(f"no digest {digest_id}")
    if digest.started_at is None:
        if digest.status in ("cancelled", "done"):
            raise ValueError(f"digest {digest_id} is {digest.status}")
        db.session.execute(
            insert(Delivery).from_select(
                ["digest_id", "subscriber_id", "state"],
                select(db.literal(digest_id), Subscriber.id, db.literal("queued"))
                .where(Subscriber.status == "confirmed"),
            )
        )
        digest.started_at = utcnow()
        digest.status = "sending"
        digest.recipient_count = db.session.execute(
            select(func.count()).select_from(Delivery).where(Delivery.digest_id == digest_id)
        ).scalar_one()
        db.session.commit()
    return digest.recipient_count


def _default_factory(digest: Digest) -> MessageFactory:
    from .digests import DigestRenderer  # the digest module renders each variant once

    return DigestRenderer(digest).message_for


def send_digest(digest_id: int, message_for: MessageFactory | None = None,
                batch_size: int = 200) -> dict[str, int]:
    """Send every queued delivery of the digest, batch by batch; returns the progress counts."""
    start_send(digest_id)
    digest = db.session.get(Digest, digest_id)
    if digest.status != "sending":  # paused, cancelled or done: nothing to do now
        return send_progress(digest_id)
    message_for = message_for or _default_factory(digest)
    transport = transport_from_url()
    sender = envelope_sender()
    try:
        while True:
            db.session.refresh(digest)
            if digest.status != "sending":  # paused or cancelled: the worker obeys
                break
            batch = db.session.execute(
                select(Delivery, Subscriber)
                .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
                .where(Delivery.digest_id == digest_id, Delivery.state == "queued")
                .order_by(Delivery.id)
                .limit(batch_size)
            ).all()
            if not batch:
                digest.status = "done"
                digest.finished_at = utcnow()
                db.session.commit()
                break
            for delivery, subscriber in batch:
                _send_one(transport, sender, delivery, subscriber, message_for)
            db.session.commit()
    finally:
        transport.close()
    return send_progress(digest_id)


def _send_one(transport, sender: str, delivery: Delivery, subscriber: Subscriber,
              message_for: MessageFactory) -> None:
    delivery.attempts += 1
    if subscriber.status != "confirmed":  # unsubscribed or bounced since the send started
        delivery.state = "skipped"
        return
    prepared = message_for(subscriber)
    if prepared is None:
        delivery.state = "skipped"
        return
    try:
        transport.send(sender, subscriber.email, prepared.render(personal_values(subscriber)))
    except MailError as exc:
        delivery.last_reply = str(exc)[:500]
        delivery.state = "bounced" if exc.permanent else "failed"
        if exc.permanent:
            subscriber.status = "bounced"
        log.warning("delivery %s to subscriber %s: %s", delivery.id, subscriber.id, exc)
        return
    delivery.state = "sent"
    delivery.sent_at = utcnow()


def set_send_status(digest_id: int, status: str) -> Digest:
    """Pause, resume or cancel: a status change that the sending workers obey."""
    allowed = {"paused": {"sending"}, "sending": {"paused"}, "cancelled": {"sending", "paused"}}
    digest = db.session.get(Digest, digest_id)
    if digest is None:
        raise LookupError(f"no digest {digest_id}")
    if digest.status not in allowed[status]:
        raise ValueError(f"cannot go from {digest.status} to {status}")
    digest.status = status
    if status == "cancelled":
        digest.finished_at = utcnow()
    db.session.commit()
    return digest


def pause_send(digest_id: int) -> Digest:
    return set_send_status(digest_id, "paused")


def resume_send(digest_id: int) -> Digest:
    """Back to "sending", and the send is launched again (in the background)."""
    digest = set_send_status(digest_id, "sending")
    launch_send(digest_id)
    return digest


def cancel_send(digest_id: int) -> Digest:
    return set_send_status(digest_id, "cancelled")


PROGRESS_STATES = ("queued", "sending", "sent", "failed", "bounced", "skipped")
RATE_WINDOW_SECONDS = 10


def send_progress(digest_id: int) -> dict:
    """Counts of the digest's deliveries by state, `total`, and the send's status, rate
    (messages a second: over the last RATE_WINDOW_SECONDS while sending, else on average),
    eta_seconds (None when unknown), started_at and finished_at (ISO 8601 or None)."""
    rows = db.session.execute(
        select(Delivery.state, func.count()).where(Delivery.digest_id == digest_id).group_by(Delivery.state)
    ).all()
    progress: dict = {state: 0 for state in PROGRESS_STATES}
    progress.update({state: n for state, n in rows})
    progress["total"] = sum(n for _, n in rows)
    digest = db.session.get(Digest, digest_id)
    status = digest.status if digest is not None else "missing"
    started = digest.started_at if digest is not None else None
    finished = digest.finished_at if digest is not None else None
    rate = 0.0
    if started is not None and status == "sending":
        since = utcnow() - timedelta(seconds=RATE_WINDOW_SECONDS)
        recent = db.session.execute(
            select(func.count()).select_from(Delivery)
            .where(Delivery.digest_id == digest_id, Delivery.state == "sent", Delivery.sent_at >= since)
        ).scalar_one()
        window = min(RATE_WINDOW_SECONDS, max((utcnow() - started).total_seconds(), 0.001))
        rate = recent / window
    elif started is not None and progress["sent"]:
        elapsed = ((finished or utcnow()) - started).total_seconds()
        rate = progress["sent"] / elapsed if elapsed > 0 else 0.0
    remaining = progress["queued"] + progress["sending"]
    eta = None
    if status in ("done", "cancelled"):
        eta = 0 if status == "done" else None
    elif remaining == 0 and started is not None:
        eta = 0
    elif rate > 0:
        eta = int(round(remaining / rate))
    progress.update(
        status=status,
        rate=round(rate, 1),
        eta_seconds=eta,
        started_at=started.isoformat() if started else None,
        finished_at=finished.isoformat() if finished else None,
    )
    return progress


# --- launching in the background -------------------------------------------------------

_running: dict[tuple[int, int], threading.Thread] = {}
_running_lock = threading.Lock()


def launch_send(digest_id: int) -> None:
    """Start (or resume) the send in the background and return at once: a Celery task when
    BROKER_URL is set, else a thread of this process (one per digest at a time)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if app.config.get("BROKER_URL"):
        from . import tasks

        tasks.launch(digest_id)
        return
    key = (id(app), digest_id)
    with _running_lock:
        thread = _running.get(key)
        if thread is not None and thread.is_alive():
            return  # already sending here: it obeys the status, and picks up what is queued
        thread = threading.Thread(target=_send_in_thread, args=(app, digest_id),
                                  name=f"send-digest-{digest_id}", daemon=True)
        _running[key] = thread
        thread.start()


def _send_in_thread(app, digest_id: int) -> None:
    with app.app_context():
        try:
            send_digest(digest_id)
        except Exception:  # noqa: BLE001  (a background send must log, not vanish)
            log.exception("background send of digest %s failed", digest_id)
        finally:
            db.session.remove()


def wait_for_sends(timeout: float | None = None) -> None:
    """Wait for this process's background sends to end (tests, shutdown)."""
    with _running_lock:
        threads = list(_running.values())
    for thread in threads:
        thread.join(timeout)
