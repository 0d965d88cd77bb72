"""A run: finish interrupted sends, compile the coming digest and send it now (or plan it: a dry run)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime

from flask import current_app
from sqlalchemy import select

from newsletter import delivery
from newsletter.delivery.audience import variant_counts
from newsletter.delivery.progress import send_progress
from newsletter.digests.drafts import coming_digest, prepare_digest
from newsletter.digests.render import DigestRenderer
from newsletter.extensions import db
from newsletter.leases import send_lease
from newsletter.models import Digest

log = logging.getLogger(__name__)


def plan_send(now: datetime | None = None) -> dict | None:
    """What `send_now` would send (a dry run): articles, subject and how many would get it."""
    digest = coming_digest(now)
    if digest is None:
        return None
    renderer = DigestRenderer(digest)
    counts = variant_counts(renderer.rule)
    counts.pop(None, None)  # those who get nothing this time
    return {
        "articles": digest.articles,
        "subject": renderer.subject(current_app.config["DEFAULT_LOCALE"]),
        "recipients": sum(counts.values()),
        "variants": len(counts),
    }


def workers_send() -> bool:
    """With BROKER_URL set every send goes to the Celery workers, never the process asking."""
    return bool(current_app.config.get("BROKER_URL"))


def finish_interrupted_sends() -> list[int]:
    """Send the rest of every digest left in status "sending" (a crash, a restart) or "approved";
    with BROKER_URL they are handed to the workers (a batch queued twice sends nothing twice)."""
    ids = list(db.session.execute(
        select(Digest.id).where(Digest.status.in_(("sending", "approved"))).order_by(Digest.id)
    ).scalars())
    for digest_id in ids:
        log.info("finishing the send of digest %s", digest_id)
        if workers_send():
            delivery.launch_send(digest_id)
        else:
            delivery.send_digest(digest_id)
    return ids


def send_now(now: datetime | None = None, *, period: str | None = None,
             poll: Callable[[], object] | None = None) -> Digest | None:
    """Finish interrupted sends, then (`poll`, e.g. polling the feeds) compile and send a new
    digest. None when nothing is new. With BROKER_URL the sends are handed to the Celery
    workers and this returns at once (`wait_for_workers` follows one); else it returns when
    the send is done."""
    with send_lease():
        finish_interrupted_sends()
        if poll is not None:
            poll()
        digest = prepare_digest(now, period=period)  # the editor's draft, if there is one
        if digest is None:
            return None
        if workers_send():
            delivery.launch_send(digest.id)
        else:
            delivery.send_digest(digest.id)
        db.session.refresh(digest)
        return digest


class NotPickedUp(Exception):
    """No Celery worker started the send within SEND_PICKUP_SECONDS."""


FINAL_STATES = ("done", "cancelled", "paused")


def wait_for_workers(digest_id: int, report: Callable[[dict], None], *, pickup_seconds: float,
                     poll: float = 1.0) -> dict:
    """Follow a send the workers make, from the ledger, until it is done, cancelled or paused;
    `report(progress)` at every poll. NotPickedUp if no worker has started it (pinned its
    recipients) within `pickup_seconds`; the send stays queued for a worker that comes later."""
    deadline = time.monotonic() + pickup_seconds
    while True:
        progress = send_progress(digest_id)
        report(progress)
        if progress["status"] in FINAL_STATES:
            return progress
        if progress["started_at"] is None and time.monotonic() > deadline:
            raise NotPickedUp(digest_id)
        time.sleep(poll)
