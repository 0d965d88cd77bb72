"""A run: finish interrupted sends, compile the coming digest and send it now (or plan it: a dry run)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from flask import current_app
from sqlalchemy import select

from newsletter import delivery
from newsletter.digests.drafts import coming_digest, prepare_digest
from newsletter.digests.render import DigestRenderer
from newsletter.extensions import db
from newsletter.leases import send_lease
from newsletter.models import Digest, Subscriber

log = logging.getLogger(__name__)


def plan_send(now: datetime | None = None) -> dict | None:
    """What `send_now` would send (a dry run): articles, subject and how many would get it."""
    digest = coming_digest(now)
    if digest is None:
        return None
    renderer = DigestRenderer(digest)
    recipients = variants = 0
    seen: set = set()
    confirmed = select(Subscriber).where(Subscriber.status == "confirmed")
    for subscriber in db.session.execute(confirmed).scalars():
        key = renderer.variant(subscriber)
        if key is not None:
            recipients += 1
            if key not in seen:
                seen.add(key)
                variants += 1
    return {
        "articles": digest.articles,
        "subject": renderer.subject(current_app.config["DEFAULT_LOCALE"]),
        "recipients": recipients,
        "variants": variants,
    }


def finish_interrupted_sends() -> list[int]:
    """Send the rest of every digest left in status "sending" (a crash, a restart) or "approved"."""
    ids = list(db.session.execute(
        select(Digest.id).where(Digest.status.in_(("sending", "approved"))).order_by(Digest.id)
    ).scalars())
    for digest_id in ids:
        log.info("finishing the send of digest %s", digest_id)
        delivery.send_digest(digest_id)
    return ids


def send_now(now: datetime | None = None, *, period: str | None = None,
             poll: Callable[[], object] | None = None) -> Digest | None:
    """Finish interrupted sends, then (`poll`, e.g. polling the feeds) compile and send a new
    digest. None when nothing is new."""
    with send_lease():
        finish_interrupted_sends()
        if poll is not None:
            poll()
        digest = prepare_digest(now, period=period)  # the editor's draft, if there is one
        if digest is None:
            return None
        delivery.send_digest(digest.id)
        db.session.refresh(digest)
        return digest
