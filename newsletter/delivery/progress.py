"""How far a send is: its deliveries by state, rate and time left."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from newsletter.delivery import totals
from newsletter.engine.clock import as_utc, utcnow
from newsletter.extensions import db
from newsletter.models import Delivery, Digest

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
    # Rows the retention purge rolled up (or an erasure took away) still count.
    rolled = totals.totals([digest_id]).get(digest_id, {})
    for state in totals.ROLLED_STATES:
        progress[state] += rolled.get(state, 0)
    progress["total"] = sum(progress[state] for state in PROGRESS_STATES)
    progress.update({counter: rolled.get(counter, 0) for counter in totals.COUNTERS})
    digest = db.session.get(Digest, digest_id)
    if digest is not None:
        db.session.refresh(digest)
    status = digest.status if digest is not None else "missing"
    started = digest.started_at if digest is not None else None
    finished = digest.finished_at if digest is not None else None
    rate = 0.0
    now = utcnow()
    if started is not None and status == "sending":
        since = now - timedelta(seconds=RATE_WINDOW_SECONDS)
        recent = db.session.execute(
            select(func.count()).select_from(Delivery)
            .where(Delivery.digest_id == digest_id, Delivery.state == "sent", Delivery.sent_at >= since)
        ).scalar_one()
        window = min(RATE_WINDOW_SECONDS, max((now - started).total_seconds(), 0.001))
        rate = recent / window
    elif started is not None and progress["sent"]:
        last = db.session.execute(select(func.min(Delivery.sent_at), func.max(Delivery.sent_at)).where(
            Delivery.digest_id == digest_id, Delivery.state == "sent")).one()
        if last[0] is not None and last[1] is not None:
            elapsed = (as_utc(last[1]) - as_utc(started)).total_seconds()
            rate = progress["sent"] / elapsed if elapsed > 0 else float(progress["sent"])
    remaining = progress["queued"] + progress["sending"]
    eta = None
    if status == "done" or (remaining == 0 and started is not None and status != "cancelled"):
        eta = 0
    elif status == "sending" and rate > 0:
        eta = int(round(remaining / rate))
    db.session.commit()
    progress.update(
        status=status,
        rate=round(rate, 1),
        eta_seconds=eta,
        started_at=started.isoformat() if started else None,
        finished_at=finished.isoformat() if finished else None,
    )
    return progress
