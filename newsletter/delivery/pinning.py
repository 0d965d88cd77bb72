"""Pinning a send's recipients: one queued Delivery row per confirmed subscriber the digest has
something for (they follow every topic, or one of its articles' topics), unique per
(digest, subscriber), written before anything is sent; a big list in chunks. Someone whose
topics have nothing this time is not a recipient: not pinned, not counted, not in the progress.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import exists, func, insert, or_, select, text, update

from newsletter.engine.clock import utcnow
from newsletter.extensions import db
from newsletter.models import Delivery, Digest, Subscriber, subscriber_topics

# A big list is pinned in chunks, each its own transaction, in subscriber order: the first
# PIN_FIRST before anything goes out, the rest by a thread while the senders send (on
# PostgreSQL the foreign-key checks alone cost about 10 µs a row: 1 s per 100,000).
PIN_FIRST = 2000


PIN_CHUNK = 10000


def start_send(digest_id: int, first: int | None = None) -> int:
    """Pin the recipients as queued Delivery rows; idempotent. Returns the count pinned so far.

    The recipients are the subscribers confirmed when the send started (`started_at`), so
    pinning can be finished later, by anyone, with the same result. `first`: pin only that
    many now and leave the rest to `pin_rest`; None pins them all (and finishes a pinning
    that was cut short, e.g. by a crash).
    """
    digest = db.session.get(Digest, digest_id)
    if digest is None:
        raise LookupError(f"no digest {digest_id}")
    if digest.started_at is None:
        if digest.status in ("cancelled", "done"):
            raise ValueError(f"digest {digest_id} is {digest.status}")
        # Lock the digest row first, so two processes starting together pin once.
        started = utcnow()
        taken = db.session.execute(
            update(Digest).where(Digest.id == digest_id, Digest.started_at.is_(None))
            .values(started_at=started, status="sending")
            .execution_options(synchronize_session=False)
        ).rowcount
        if taken:
            if _pin(digest, started, after=0, limit=first) is None:
                _pinned(digest_id)
        db.session.commit()
        db.session.refresh(digest)
    if first is None:
        pin_rest(digest_id)
    return db.session.execute(select(func.count()).select_from(Delivery)
                              .where(Delivery.digest_id == digest_id)).scalar_one()


def pin_rest(digest_id: int, chunk: int | None = None) -> None:
    """Pin the recipients not pinned yet, a chunk per transaction; nothing if all are."""
    digest = db.session.get(Digest, digest_id)
    db.session.refresh(digest)
    if digest.started_at is None or pinning_done(digest_id):
        return
    after = db.session.execute(select(func.max(Delivery.subscriber_id))
                               .where(Delivery.digest_id == digest_id)).scalar() or 0
    while after is not None:
        after = _pin(digest, digest.started_at, after=after, limit=chunk or PIN_CHUNK)
        db.session.commit()
    _pinned(digest_id)
    db.session.commit()


def pinning_done(digest_id: int) -> bool:
    """All recipients are pinned: `recipient_count` is set when the last chunk is (erasure
    may delete rows later, never add them)."""
    rows = db.session.execute(select(func.count()).select_from(Delivery)
                              .where(Delivery.digest_id == digest_id)).scalar_one()
    count = db.session.execute(select(Digest.recipient_count).where(Digest.id == digest_id)).scalar_one()
    return count >= rows


def recipient_filter(digest: Digest):
    """Who the digest has something for: those who follow every topic (chose none), and those
    who follow one of its articles' topics (the rule of `sending.VariantRule`)."""
    topic_ids = [article.topic_id for article in digest.articles if article.topic_id is not None]
    follows = subscriber_topics.c.subscriber_id == Subscriber.id
    return or_(~exists().where(follows), exists().where(follows, subscriber_topics.c.topic_id.in_(topic_ids)))


def _pin(digest: Digest, started: datetime, *, after: int, limit: int | None) -> int | None:
    """Pin the recipients whose subscriber id is above `after`, at most `limit` of them (in the
    session's transaction). Returns the last subscriber id pinned, or None when none are left."""
    digest_id = digest.id
    who = [Subscriber.status == "confirmed", Subscriber.id > after,
           or_(Subscriber.confirmed_at.is_(None), Subscriber.confirmed_at <= started),
           recipient_filter(digest)]
    last = None
    if limit is not None:
        last = db.session.execute(select(Subscriber.id).where(*who).order_by(Subscriber.id)
                                  .offset(limit - 1).limit(1)).scalar()
        if last is not None:
            who.append(Subscriber.id <= last)
    if db.engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as upsert

        pin = upsert(Delivery).on_conflict_do_nothing(index_elements=["digest_id", "subscriber_id"])
    else:  # SQLite
        pin = insert(Delivery).prefix_with("OR IGNORE")
    db.session.execute(pin.from_select(
        ["digest_id", "subscriber_id", "state", "attempts", "last_reply"],
        select(db.literal(digest_id), Subscriber.id, db.literal("queued"), db.literal(0), db.literal(""))
        .where(*who).order_by(Subscriber.id),
    ))
    return last


def _pinned(digest_id: int) -> None:
    """The last chunk is in: the recipient count, and fresh statistics for the claim queries."""
    if db.engine.dialect.name == "postgresql":
        db.session.execute(text("ANALYZE delivery"))
    db.session.execute(
        update(Digest).where(Digest.id == digest_id).values(recipient_count=select(
            func.count()).select_from(Delivery).where(Delivery.digest_id == digest_id)
            .scalar_subquery())
    )
