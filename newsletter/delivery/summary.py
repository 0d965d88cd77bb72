"""The short report admins get when a send ends: done, cancelled, or paused by an error storm."""

from __future__ import annotations

import logging

from flask import current_app
from sqlalchemy import func, select

from newsletter.admins.notify import email_admins
from newsletter.delivery import totals
from newsletter.engine.clock import utcnow
from newsletter.extensions import db
from newsletter.models import Delivery, Digest

log = logging.getLogger(__name__)

REASONS = ("done", "cancelled", "error_storm")


def summary_context(digest_id: int, reason: str) -> dict:
    digest = db.session.get(Digest, digest_id)
    db.session.refresh(digest)
    counts = totals.with_rolled_up(digest_id, dict(db.session.execute(
        select(Delivery.state, func.count()).where(Delivery.digest_id == digest_id).group_by(Delivery.state)
    ).all()))
    started = digest.started_at
    end = digest.finished_at or utcnow()
    seconds = int((end - started).total_seconds()) if started else 0
    sent = counts.get("sent", 0)
    return {
        "digest": digest,
        "reason": reason,
        "sent": sent,
        "bounced": counts.get("bounced", 0),
        "failed": counts.get("failed", 0),
        "skipped": counts.get("skipped", 0),
        "left": counts.get("queued", 0) + counts.get("sending", 0),
        "total": sum(counts.values()),
        "seconds": seconds,
        "rate": round(sent / seconds, 1) if seconds else sent,
        "error": digest.error,
        "admin_url": f"{current_app.config['PUBLIC_URL']}/admin/",
    }


def send_summary(digest_id: int, reason: str) -> int:
    """Email the summary to every active admin (in their language); returns how many got it.
    Sent at once; what the server does not take now goes through the mail queue."""
    if reason not in REASONS:
        raise ValueError(f"unknown reason {reason!r}")
    return email_admins("send_summary", **summary_context(digest_id, reason))
