"""Retention: personal data is kept no longer than the settings say, then removed in batches.

Three rules, each a setting in days (0 turns a rule off):

- RETENTION_PENDING_DAYS: a pending address that never confirmed, with nothing happening
  to it for that long, is deleted; its ledger events stay, anonymised.
- RETENTION_INACTIVE_DAYS: an unsubscribed, bounced or complained person, with nothing
  happening to them for that long, is reduced to a suppression entry (the keyed hash of
  the address and why) and anonymised ledger events: nothing that names or reaches them.
- RETENTION_DELIVERIES_DAYS: Delivery rows of finished sends older than that are rolled up
  into the send's totals (totals) and deleted.

Consent events of current subscribers are never touched: they are the proof of consent.
Every batch is its own short transaction of at most RETENTION_BATCH_SIZE rows, read by
keyset (id order), so a purge of millions of rows holds little memory and never blocks a
signup or a running send for long. `purge(dry_run=True)` only counts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import and_, delete, exists, func, or_, select, update

from newsletter.delivery import totals
from newsletter.extensions import db
from newsletter.models import (
    ConsentEvent,
    Delivery,
    Digest,
    QueuedEmail,
    Subscriber,
    subscriber_topics,
    utcnow,
)
from newsletter.subscriptions import suppression

log = logging.getLogger(__name__)

RULES = ("pending", "inactive", "deliveries")
FINISHED_SENDS = ("done", "cancelled")


@dataclass
class Policy:
    """The retention periods in force (days; 0 = kept) and the cut-off times they give now."""

    pending_days: int
    inactive_days: int
    deliveries_days: int
    now: datetime

    def cutoff(self, days: int) -> datetime | None:
        return self.now - timedelta(days=days) if days > 0 else None


def current_policy(now: datetime | None = None) -> Policy:
    config = current_app.config
    return Policy(pending_days=config["RETENTION_PENDING_DAYS"],
                  inactive_days=config["RETENTION_INACTIVE_DAYS"],
                  deliveries_days=config["RETENTION_DELIVERIES_DAYS"], now=now or utcnow())


@dataclass
class PurgeReport:
    """What a purge removed (or, dry, would remove): counts only, never an address."""

    dry_run: bool = False
    pending: int = 0  # pending addresses deleted
    inactive: int = 0  # inactive people reduced to a suppression entry
    deliveries: int = 0  # delivery rows rolled up and deleted
    batches: list[tuple[str, int]] = field(default_factory=list)  # (rule, rows) per transaction

    def lines(self) -> list[str]:
        verb = "would be" if self.dry_run else "were"
        return [
            f"pending addresses that never confirmed: {self.pending} {verb} deleted",
            f"unsubscribed, bounced or complained people: {self.inactive} {verb} reduced to a "
            "suppression entry",
            f"delivery rows: {self.deliveries} {verb} rolled up into per-send totals",
        ]


# --- who and what is due -------------------------------------------------------------------------


def _quiet_since(cutoff: datetime):
    """Nothing happened to the subscriber at or after `cutoff` (added, confirmed, left, any event)."""
    return and_(
        Subscriber.created_at < cutoff,
        or_(Subscriber.confirmation_sent_at.is_(None), Subscriber.confirmation_sent_at < cutoff),
        or_(Subscriber.unsubscribed_at.is_(None), Subscriber.unsubscribed_at < cutoff),
        ~exists().where(ConsentEvent.subscriber_id == Subscriber.id, ConsentEvent.created_at >= cutoff),
    )


def _due_subscribers(rule: str, policy: Policy):
    if rule == "pending":
        cutoff = policy.cutoff(policy.pending_days)
        states: tuple[str, ...] = ("pending",)
    else:
        cutoff = policy.cutoff(policy.inactive_days)
        states = suppression.INACTIVE_STATES
    if cutoff is None:
        return None
    return and_(Subscriber.status.in_(states), _quiet_since(cutoff))


def _due_deliveries(policy: Policy):
    cutoff = policy.cutoff(policy.deliveries_days)
    if cutoff is None:
        return None
    # The sends not finished, as a short list: `NOT IN (…)` leaves the database walking the
    # primary key from the last batch on (an `IN (finished sends)` made SQLite scan the
    # digest index and sort, again at every batch). A send cannot become unfinished again.
    unfinished = list(db.session.execute(
        select(Digest.id).where(Digest.status.notin_(FINISHED_SENDS))).scalars())
    sent_or_changed = func.coalesce(Delivery.sent_at, Delivery.updated_at)
    return and_(Delivery.digest_id.notin_(unfinished), sent_or_changed < cutoff)


def preview(now: datetime | None = None) -> PurgeReport:
    """What the next purge would remove, counted (the admin's privacy page, --dry-run)."""
    policy = current_policy(now)
    report = PurgeReport(dry_run=True)
    for rule in ("pending", "inactive"):
        condition = _due_subscribers(rule, policy)
        if condition is not None:
            setattr(report, rule, db.session.execute(
                select(func.count()).select_from(Subscriber).where(condition)).scalar_one())
    condition = _due_deliveries(policy)
    if condition is not None:
        report.deliveries = db.session.execute(
            select(func.count()).select_from(Delivery).where(condition)).scalar_one()
    return report


# --- the purge -----------------------------------------------------------------------------------


def purge(now: datetime | None = None, *, dry_run: bool = False, batch_size: int | None = None,
          on_batch: Callable[[str, int], None] | None = None) -> PurgeReport:
    """Apply every retention rule, batch after batch, each batch committed on its own.

    The commits are a deliberate boundary: a purge of a million rows as one transaction
    would hold its locks (on SQLite, the whole database) for its whole length.
    """
    if dry_run:
        return preview(now)
    policy = current_policy(now)
    size = batch_size or current_app.config["RETENTION_BATCH_SIZE"]
    report = PurgeReport()

    def done(rule: str, rows: int) -> None:
        report.batches.append((rule, rows))
        setattr(report, rule, getattr(report, rule) + rows)
        if on_batch is not None:
            on_batch(rule, rows)

    for rule in ("pending", "inactive"):
        condition = _due_subscribers(rule, policy)
        if condition is not None:
            _purge_subscribers(rule, condition, size, done)
    condition = _due_deliveries(policy)
    if condition is not None:
        _roll_up_deliveries(condition, size, done)
    log.info("retention purge: %s", "; ".join(report.lines()))
    return report


def _purge_subscribers(rule: str, condition, size: int, done: Callable[[str, int], None]) -> None:
    last_id = 0
    key = suppression._key()
    while True:
        batch = db.session.execute(
            select(Subscriber.id, Subscriber.email, Subscriber.status, Subscriber.generation)
            .where(condition, Subscriber.id > last_id).order_by(Subscriber.id).limit(size)).all()
        if not batch:
            db.session.commit()
            return
        last_id = batch[-1].id
        entries = [(suppression.address_hash(row.email, key), row.status) for row in batch
                   if row.status != "pending"]
        # Someone who had unsubscribed (or bounced) and signed up again without confirming:
        # the opt-out they had stands.
        entries += [(suppression.address_hash(row.email, key), "unsubscribed") for row in batch
                    if row.status == "pending" and row.generation > 0]
        suppression.suppress_hashed(entries, source="retention")
        _remove_people([row.id for row in batch])
        db.session.commit()
        done(rule, len(batch))


def _remove_people(ids: list[int]) -> None:
    """Delete these subscribers; their deliveries go into the totals, their ledger events stay
    anonymised (kind, source, wording version and time: nothing about who)."""
    totals.roll_up_deliveries(Delivery.subscriber_id.in_(ids))
    db.session.execute(
        update(ConsentEvent).where(ConsentEvent.subscriber_id.in_(ids))
        .values(subscriber_id=None, email_hash="", ip="", user_agent="", detail={})
        .execution_options(synchronize_session=False))
    for statement in (
        delete(QueuedEmail).where(QueuedEmail.subscriber_id.in_(ids)),
        delete(subscriber_topics).where(subscriber_topics.c.subscriber_id.in_(ids)),
        delete(Subscriber).where(Subscriber.id.in_(ids)),
    ):
        db.session.execute(statement.execution_options(synchronize_session=False))


def _roll_up_deliveries(condition, size: int, done: Callable[[str, int], None]) -> None:
    last_id = 0
    while True:
        ids = db.session.execute(
            select(Delivery.id).where(condition, Delivery.id > last_id).order_by(Delivery.id).limit(size)
        ).scalars().all()
        if not ids:
            db.session.commit()
            return
        last_id = ids[-1]
        rows = totals.roll_up_deliveries(Delivery.id.in_(ids))
        db.session.commit()
        done("deliveries", rows)
