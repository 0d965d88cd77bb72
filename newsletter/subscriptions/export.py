"""Exporting subscribers as CSV, a batch at a time (safe to open in a spreadsheet)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import IO

from sqlalchemy import Select, func, literal_column, select

from newsletter.extensions import db
from newsletter.models import (
    Subscriber,
    Topic,
    subscriber_topics,
)
from newsletter.subscriptions.data import iso
from newsletter.subscriptions.topics import follows_topic

EXPORT_COLUMNS = ("email", "status", "language", "topics", "name", "created_at", "confirmed_at")


# Rows per keyset query: big enough that the queries cost little next to writing the CSV,
# small enough that memory stays flat (a few MB) at any list size.
EXPORT_BATCH = 5000


def _spreadsheet_safe(value: str) -> str:
    # A cell starting with = + - @ (or a tab/CR) is a formula to a spreadsheet (CSV injection).
    # A leading apostrophe shows the text as typed; imports.py strips it again on import.
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def _topics_between(connection, first: int, last: int) -> dict[int, list[str]]:
    """The chosen topics of the subscribers with ids in [first, last]: one range scan of the
    link table's primary key (no list of ids as parameters)."""
    topics: dict[int, list[str]] = {}
    links = subscriber_topics.c
    rows = connection.execute(
        select(links.subscriber_id, Topic.slug).join(Topic, Topic.id == links.topic_id)
        .where(links.subscriber_id.between(first, last)).order_by(links.subscriber_id, Topic.slug))
    for sid, slug in rows:
        topics.setdefault(sid, []).append(slug)
    return topics


def export_filter(query: Select, *, status: str | None = None, topic: str | None = None) -> Select:
    """The export's filters: the state, and who receives a topic (the list's rule)."""
    if status:
        query = query.where(Subscriber.status == status)
    if topic:
        query = query.where(follows_topic(topic))
    return query


def export_count(*, status: str | None = None, topic: str | None = None) -> int:
    """How many rows `export_lines` gives for these filters (for the audit log)."""
    return db.session.execute(export_filter(select(func.count(Subscriber.id)), status=status,
                                            topic=topic)).scalar_one()


def export_lines(*, status: str | None = None, topic: str | None = None) -> Iterator[str]:
    """The CSV (topics `;`-separated, empty = all), header first, a batch of lines at a time."""
    for lines, _rows in _export_chunks(status, topic):
        yield lines


def export_subscribers_csv(stream: IO[str], *, status: str | None = None, topic: str | None = None) -> int:
    """Write subscribers as CSV to `stream` (see `export_lines`); returns the row count."""
    count = 0
    for lines, rows in _export_chunks(status, topic):
        stream.write(lines)
        count += rows
    return count


def _export_chunks(status: str | None, topic: str | None) -> Iterator[tuple[str, int]]:
    """(CSV text, rows in it): keyset pages on the primary key, each read on a connection of its
    own, not one long cursor or transaction: flat memory at any size, and nothing held open
    while a slow client downloads (a web response streams this), nor in the caller's session."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    yield buffer.getvalue(), 0
    if db.engine.dialect.name == "postgresql":
        yield from _copy_chunks(status, topic)
        return
    query = export_filter(select(
        Subscriber.id, Subscriber.email, Subscriber.status, Subscriber.language, Subscriber.name,
        Subscriber.created_at, Subscriber.confirmed_at).order_by(Subscriber.id), status=status, topic=topic)
    last_id = 0
    while True:
        with db.engine.connect() as connection:
            batch = connection.execute(query.where(Subscriber.id > last_id).limit(EXPORT_BATCH)).all()
            if not batch:
                return
            topics = _topics_between(connection, batch[0].id, batch[-1].id)
        buffer.seek(0)
        buffer.truncate()
        writer.writerows(
            (_spreadsheet_safe(row.email), row.status, row.language, ";".join(topics.get(row.id, ())),
             _spreadsheet_safe(row.name), iso(row.created_at) or "", iso(row.confirmed_at) or "")
            for row in batch)
        yield buffer.getvalue(), len(batch)
        last_id = batch[-1].id


# --- PostgreSQL: the database writes the CSV ------------------------------------------------------


def _safe_sql(column: str) -> str:
    """`_spreadsheet_safe` in SQL."""
    return (f"CASE WHEN left({column}, 1) IN ('=', '+', '-', '@', E'\\t', E'\\r') "
            f"THEN '''' || {column} ELSE {column} END")


def _iso_sql(column: str) -> str:
    """`iso` in SQL: UTC, microseconds only when there are any (as datetime.isoformat)."""
    utc = f"({column} AT TIME ZONE 'UTC')"
    return (f"to_char({utc}, 'YYYY-MM-DD\"T\"HH24:MI:SS') || CASE WHEN "
            f"mod(date_part('microseconds', {utc})::bigint, 1000000) = 0 THEN '' "
            f"ELSE to_char({utc}, '.US') END"
            " || '+00:00'")


COPY_BLOCK = 1 << 16


def _copy_chunks(status: str | None, topic: str | None) -> Iterator[tuple[str, int]]:
    """The rows as COPY ... TO STDOUT (FORMAT csv) writes them: the same cells and quoting as
    the csv module (empty cells are NULLs, which COPY leaves unquoted), many times faster than
    building them in Python; read in blocks, so memory stays flat."""
    topics = ("(SELECT string_agg(t.slug, ';' ORDER BY t.slug) FROM subscriber_topic l JOIN topic t "
              "ON t.id = l.topic_id WHERE l.subscriber_id = subscriber.id)")
    query = export_filter(select(
        literal_column(_safe_sql("subscriber.email")), Subscriber.status, Subscriber.language,
        literal_column(topics), literal_column(f"NULLIF({_safe_sql('subscriber.name')}, '')"),
        literal_column(_iso_sql("subscriber.created_at")),
        literal_column(_iso_sql("subscriber.confirmed_at")),
    ).select_from(Subscriber).order_by(Subscriber.id), status=status, topic=topic)
    sql = str(query.compile(dialect=db.engine.dialect, compile_kwargs={"literal_binds": True}))
    raw = db.engine.raw_connection()
    try:
        with raw.cursor() as cursor, cursor.copy(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv)") as copy:
            pending = b""
            for block in copy:
                pending += bytes(block)
                if len(pending) >= COPY_BLOCK:
                    cut = pending.rfind(b"\n") + 1  # whole lines: a block may end inside a character
                    text, pending = pending[:cut], pending[cut:]
                    yield text.decode("utf-8"), text.count(b"\n")
            if pending:
                yield pending.decode("utf-8"), pending.count(b"\n")
        raw.commit()
    finally:
        raw.close()
