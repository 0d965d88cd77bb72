"""The send's status machine: sending -> paused <-> sending, -> cancelled, -> done; pause,
resume and cancel are status changes the senders obey; the admins get a summary at the end.
"""

from __future__ import annotations

import logging

from sqlalchemy import func, select, update

from newsletter.delivery.bounces import record_send_bounces
from newsletter.delivery.summary import send_summary
from newsletter.engine.clock import utcnow
from newsletter.engine.ledger import (
    OPEN_STATES,
)
from newsletter.extensions import db
from newsletter.models import Delivery, Digest

log = logging.getLogger(__name__)


def finish_send(digest_id: int) -> bool:
    """Mark the send done if nothing is left; True for the one caller that did it (it reports)."""
    with db.engine.begin() as conn:
        left = conn.execute(select(func.count()).select_from(Delivery).where(
            Delivery.digest_id == digest_id, Delivery.state.in_(OPEN_STATES))).scalar()
        if left:
            return False
        rows = conn.execute(select(func.count()).select_from(Delivery)
                            .where(Delivery.digest_id == digest_id)).scalar()
        done = conn.execute(update(Digest).where(  # and every recipient is pinned (pinning_done)
            Digest.id == digest_id, Digest.status == "sending", Digest.recipient_count >= rows)
            .values(status="done", finished_at=utcnow())).rowcount
    if done:
        log.info("digest %s sent", digest_id)
        report_outcome(digest_id, "done")
    return bool(done)


def report_outcome(digest_id: int, reason: str) -> None:
    """A send ended or stopped (done, cancelled, an error storm): the 5xx replies it met are
    applied to the subscribers, then the admins get a summary. Never fails the send."""
    try:
        record_send_bounces(digest_id)
    except Exception:  # noqa: BLE001  (applied again at the next stop or end of this send)
        db.session.rollback()
        log.exception("could not apply the bounces of digest %s", digest_id)
    try:
        send_summary(digest_id, reason)
    except Exception:  # noqa: BLE001  (a failed report must not fail the send)
        log.exception("could not send the summary of digest %s", digest_id)


def set_send_status(digest_id: int, status: str) -> Digest:
    """Pause, resume or cancel: a status change that the sending workers obey."""
    allowed = {"paused": {"sending"}, "sending": {"paused"}, "cancelled": {"sending", "paused"}}
    digest = db.session.get(Digest, digest_id)
    if digest is None:
        raise LookupError(f"no digest {digest_id}")
    db.session.refresh(digest)
    if digest.status not in allowed[status]:
        raise ValueError(f"cannot go from {digest.status} to {status}")
    digest.status = status
    if status == "cancelled":
        digest.finished_at = utcnow()
    if status == "sending":
        digest.error = ""
    db.session.commit()
    return digest


def pause_send(digest_id: int) -> Digest:
    digest = set_send_status(digest_id, "paused")
    record_send_bounces(digest_id)
    return digest


def cancel_send(digest_id: int) -> Digest:
    digest = set_send_status(digest_id, "cancelled")
    report_outcome(digest_id, "cancelled")
    return digest
