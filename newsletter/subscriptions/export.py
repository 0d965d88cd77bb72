"""Exporting subscribers as CSV, a batch at a time (safe to open in a spreadsheet)."""

from __future__ import annotations

import csv
from typing import IO

from sqlalchemy import select

from newsletter.extensions import db
from newsletter.models import (
    Subscriber,
    Topic,
    subscriber_topics,
)
from newsletter.subscriptions.data import iso
from newsletter.subscriptions.listing import receives_topic

EXPORT_COLUMNS = ("email", "status", "language", "topics", "name", "created_at", "confirmed_at")


EXPORT_BATCH = 1000


def _spreadsheet_safe(value: str) -> str:
    # A cell starting with = + - @ (or a tab/CR) is a formula to a spreadsheet (CSV injection).
    # A leading apostrophe shows the text as typed; imports.py strips it again on import.
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def _topics_of(ids: list[int]) -> dict[int, list[str]]:
    topics: dict[int, list[str]] = {}
    rows = db.session.execute(
        select(subscriber_topics.c.subscriber_id, Topic.slug)
        .join(Topic, Topic.id == subscriber_topics.c.topic_id)
        .where(subscriber_topics.c.subscriber_id.in_(ids)).order_by(Topic.slug))
    for sid, slug in rows:
        topics.setdefault(sid, []).append(slug)
    return topics


def export_subscribers_csv(stream: IO[str], *, status: str | None = None, topic: str | None = None) -> int:
    """Write subscribers as CSV (topics `;`-separated, empty = all), streamed; returns the row count."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    query = select(Subscriber.id, Subscriber.email, Subscriber.status, Subscriber.language, Subscriber.name,
                   Subscriber.created_at, Subscriber.confirmed_at).order_by(Subscriber.id)
    if status:
        query = query.where(Subscriber.status == status)
    if topic:
        query = query.where(receives_topic(topic))
    count = 0
    # Keyset pages (not one long cursor): constant memory, and no cursor held open on PostgreSQL.
    last_id = 0
    while True:
        batch = db.session.execute(query.where(Subscriber.id > last_id).limit(EXPORT_BATCH)).all()
        if not batch:
            return count
        topics = _topics_of([row.id for row in batch])
        for row in batch:
            writer.writerow([
                _spreadsheet_safe(row.email), row.status, row.language, ";".join(topics.get(row.id, ())),
                _spreadsheet_safe(row.name), iso(row.created_at) or "", iso(row.confirmed_at) or "",
            ])
        count += len(batch)
        last_id = batch[-1].id
