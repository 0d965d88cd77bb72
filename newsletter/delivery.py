"""The send pipeline: a per-recipient ledger (Delivery rows), then sending from it.

This is the first, sequential version: correct (pinned recipients, one row per
(digest, subscriber), state committed per batch, pause/cancel obeyed between
batches), not yet fast. The function signatures here are the interface that
views, CLI, scheduler and tasks call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

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
    return set_send_status(digest_id, "sending")


def cancel_send(digest_id: int) -> Digest:
    return set_send_status(digest_id, "cancelled")


def send_progress(digest_id: int) -> dict[str, int]:
    """Counts of the digest's deliveries by state, plus `total`."""
    rows = db.session.execute(
        select(Delivery.state, func.count()).where(Delivery.digest_id == digest_id).group_by(Delivery.state)
    ).all()
    counts = {state: 0 for state in ("queued", "sending", "sent", "failed", "bounced", "skipped")}
    counts.update({state: n for state, n in rows})
    counts["total"] = sum(n for _, n in rows)
    return counts
