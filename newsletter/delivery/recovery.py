"""Taking back the claims of senders that are gone, so an interrupted send resumes from the ledger."""

from __future__ import annotations

import logging
from datetime import timedelta

from flask import current_app
from sqlalchemy import func, select, update

from newsletter.engine.clock import as_utc, utcnow
from newsletter.engine.ledger import (
    OPEN_STATES,
    owner_alive,
)
from newsletter.extensions import db
from newsletter.models import Delivery, Digest

log = logging.getLogger(__name__)


def recover_stale(digest_id: int | None = None) -> int:
    """Hand back the claims of processes that are gone; returns how many rows were freed.

    "sending" rows of a dead claim may have been sent (they were in flight): they are
    sent again. Reserved ("queued") rows were not: they are just freed.
    """
    timeout = timedelta(seconds=current_app.config["SEND_CLAIM_TIMEOUT"])
    open_rows = [Delivery.claimed_by.is_not(None), Delivery.state.in_(OPEN_STATES)]
    if digest_id is not None:
        open_rows.append(Delivery.digest_id == digest_id)
    with db.engine.connect() as conn:
        owners = conn.execute(
            select(Delivery.claimed_by, func.max(Delivery.updated_at)).where(*open_rows)
            .group_by(Delivery.claimed_by)
        ).all()
    dead = []
    now = utcnow()
    for token, last_change in owners:
        alive = owner_alive(token)
        if alive is False or (alive is None and last_change is not None
                              and as_utc(last_change) < now - timeout):
            dead.append(token)
    freed = 0
    for start in range(0, len(dead), 200):
        with db.engine.begin() as conn:
            freed += conn.execute(
                update(Delivery).where(Delivery.claimed_by.in_(dead[start:start + 200]), *open_rows)
                .values(state="queued", claimed_by=None, updated_at=now)
            ).rowcount
    if freed:
        log.warning("took back %d deliveries claimed by %d stopped senders", freed, len(dead))
    return freed


def resume_interrupted() -> list[int]:
    """Recover stale claims of every unfinished send; returns the ids of sends still "sending"."""
    recover_stale()
    return list(db.session.execute(
        select(Digest.id).where(Digest.status == "sending").order_by(Digest.id)).scalars())
