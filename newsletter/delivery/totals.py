"""A send's figures without per-person rows: rolled-up delivery counts and anonymous counters.

Delivery rows name a subscriber; the retention purge and an erasure delete them, and
first add their final states (sent, failed, bounced, skipped) to the send's SendTotal,
so the admin and the API go on showing the same figures. Complaints, unsubscribes that
came from a send's emails, and (with STATS_CLICKS) clicks per article are counters only:
nothing in them says who. (Clicks are counted in digests/clicks.py.)
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

from sqlalchemy import delete, select

from newsletter.extensions import db
from newsletter.models import Delivery, SendTotal, utcnow

ROLLED_STATES = ("sent", "failed", "bounced", "skipped")  # queued/sending rows are dropped, not counted
COUNTERS = ("complaints", "unsubscribes")
# An unsubscribe or complaint belongs to the latest send the person got, if it was this recent.
ATTRIBUTION_DAYS = 30


def _upsert(table, keys: dict, increments: dict) -> None:
    """INSERT keys+increments, or add the increments to the existing row (one statement)."""
    db.session.execute(upsert_adding(table, keys, increments))


def upsert_adding(table, keys: dict, increments: dict):
    """The statement that inserts a counter row, or adds `increments` to the existing one
    (INSERT … ON CONFLICT DO UPDATE, on PostgreSQL and SQLite alike)."""
    if db.session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    columns = {c.name: 0 for c in table.__table__.columns if c.name not in keys}
    statement = insert(table).values(**keys, **{**columns, **increments})
    return statement.on_conflict_do_update(
        index_elements=list(keys),
        set_={name: getattr(table, name) + getattr(statement.excluded, name) for name in increments})


def add_totals(counts: Counter) -> None:
    """Add {(digest_id, state): n} to the sends' rolled-up totals."""
    by_digest: dict[int, dict[str, int]] = {}
    for (digest_id, state), n in counts.items():
        if state in ROLLED_STATES and n:
            by_digest.setdefault(digest_id, {})[state] = by_digest.get(digest_id, {}).get(state, 0) + n
    for digest_id in sorted(by_digest):  # one order for the row locks of concurrent purges
        _upsert(SendTotal, {"digest_id": digest_id}, by_digest[digest_id])


def roll_up_deliveries(condition) -> int:
    """Delete the Delivery rows matching `condition`, adding their final states to the totals."""
    rows = db.session.execute(
        delete(Delivery).where(condition).returning(Delivery.digest_id, Delivery.state)
        .execution_options(synchronize_session=False)).all()
    add_totals(Counter((digest_id, state) for digest_id, state in rows))
    return len(rows)


def totals(digest_ids: list[int]) -> dict[int, dict[str, int]]:
    """The rolled-up counts and counters of these sends (absent: all zero)."""
    if not digest_ids:
        return {}
    rows = db.session.execute(select(SendTotal).where(SendTotal.digest_id.in_(digest_ids))).scalars()
    return {row.digest_id: {name: getattr(row, name) or 0 for name in (*ROLLED_STATES, *COUNTERS)}
            for row in rows}


def with_rolled_up(digest_id: int, counts: dict[str, int]) -> dict[str, int]:
    """Live counts by state plus what was rolled up from deleted rows."""
    rolled = totals([digest_id]).get(digest_id, {})
    merged = dict(counts)
    for state in ROLLED_STATES:
        merged[state] = merged.get(state, 0) + rolled.get(state, 0)
    return merged


def latest_send_of(subscriber_id: int) -> int | None:
    """The digest the person was last sent, if within ATTRIBUTION_DAYS."""
    since = utcnow() - timedelta(days=ATTRIBUTION_DAYS)
    return db.session.execute(
        select(Delivery.digest_id).where(Delivery.subscriber_id == subscriber_id,
                                         Delivery.state.in_(("sent", "bounced")), Delivery.sent_at >= since)
        .order_by(Delivery.id.desc()).limit(1)).scalar_one_or_none()


def count_for_latest_send(subscriber_id: int, counter: str) -> int | None:
    """Add one to a counter (complaints, unsubscribes) of the person's latest send; flushed only."""
    if counter not in COUNTERS:
        raise ValueError(f"unknown counter {counter!r}")
    digest_id = latest_send_of(subscriber_id)
    if digest_id is not None:
        _upsert(SendTotal, {"digest_id": digest_id}, {counter: 1})
    return digest_id
