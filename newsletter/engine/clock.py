"""Time in UTC, as every part of the service stores and compares it."""

from __future__ import annotations

from datetime import UTC, datetime

# SQLAlchemy's storage format for DateTime on SQLite (models.UTCDateTime stores UTC): the
# send ledger writes exactly what the ORM writes, so both compare and sort alike.
SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """A datetime read back without a zone (SQLite, an aggregate) is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)
