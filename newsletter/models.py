"""The database schema: typed SQLAlchemy 2.0 models.

Status values are plain strings (portable across SQLite and PostgreSQL); the
allowed values are the `*_STATES` tuples next to each model.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from flask_login import UserMixin
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from newsletter.engine.clock import utcnow
from newsletter.extensions import db


def new_uid() -> str:
    """A random public identifier: tokens carry it instead of the row id, which SQLite may reuse."""
    return secrets.token_hex(12)


class UTCDateTime(db.TypeDecorator):  # type: ignore[name-defined]
    """A timezone-aware UTC datetime on every backend (SQLite drops tzinfo otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None:
            if value.tzinfo is None:
                raise ValueError("naive datetime given to a UTCDateTime column")
            value = value.astimezone(UTC)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


subscriber_topics = Table(
    "subscriber_topic",
    db.metadata,
    Column("subscriber_id", ForeignKey("subscriber.id", ondelete="CASCADE"), primary_key=True),
    Column("topic_id", ForeignKey("topic.id", ondelete="CASCADE"), primary_key=True),
)


class Topic(db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name_sv: Mapped[str] = mapped_column(String(128))
    name_en: Mapped[str] = mapped_column(String(128))
    position: Mapped[int] = mapped_column(Integer, default=0)

    def name(self, locale: str) -> str:
        return self.name_en if locale == "en" else self.name_sv

    def __repr__(self) -> str:
        return f"<Topic {self.slug}>"


SUBSCRIBER_STATES = ("pending", "confirmed", "unsubscribed", "bounced", "complained")


class Subscriber(db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    uid: Mapped[str] = mapped_column(String(32), unique=True, default=new_uid)
    # Normalised by email-validator and lower-cased: the unique key of a person.
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    language: Mapped[str] = mapped_column(String(8), default="sv")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    unsubscribed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    confirmation_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Bumped on every unsubscribe: confirmation links issued before it stop working.
    generation: Mapped[int] = mapped_column(Integer, default=0)
    topics: Mapped[list[Topic]] = relationship(secondary=subscriber_topics, lazy="selectin")

    def __repr__(self) -> str:
        return f"<Subscriber {self.id} {self.status}>"


CONSENT_KINDS = (
    "signup", "confirm", "preferences", "unsubscribe", "import", "admin",
    "bounce", "complaint", "erase", "export",
)
CONSENT_SOURCES = ("form", "embed", "api", "import", "admin", "cli", "email", "webhook", "system")


class ConsentEvent(db.Model):
    """The consent ledger: one row per thing that happened to someone's consent."""

    id: Mapped[int] = mapped_column(primary_key=True)
    # SET NULL so that an erasure (and the retention purge) can keep an anonymous trace that it
    # happened: kind, source and time, with subscriber_id and email_hash emptied.
    subscriber_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscriber.id", ondelete="SET NULL"), index=True
    )
    email_hash: Mapped[str] = mapped_column(String(64), default="", index=True)
    kind: Mapped[str] = mapped_column(String(24))
    source: Mapped[str] = mapped_column(String(24))
    wording_version: Mapped[str] = mapped_column(String(32), default="")
    ip: Mapped[str] = mapped_column(String(64), default="")
    user_agent: Mapped[str] = mapped_column(String(400), default="")
    detail: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class Feed(db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    url: Mapped[str] = mapped_column(String(1000), unique=True)
    title: Mapped[str] = mapped_column(String(300), default="")
    topic_id: Mapped[int | None] = mapped_column(ForeignKey("topic.id", ondelete="SET NULL"))
    etag: Mapped[str | None] = mapped_column(String(300))
    modified: Mapped[str | None] = mapped_column(String(100))
    last_fetched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status: Mapped[str] = mapped_column(String(32), default="")
    last_error: Mapped[str] = mapped_column(Text, default="")
    # A paused feed is not polled (its articles stay); an editor resumes it.
    paused: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    topic: Mapped[Topic | None] = relationship(lazy="joined")


class Article(db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    source_id: Mapped[str] = mapped_column(String(1000), unique=True)  # feed guid or URL
    feed_id: Mapped[int | None] = mapped_column(ForeignKey("feed.id", ondelete="SET NULL"))
    topic_id: Mapped[int | None] = mapped_column(ForeignKey("topic.id", ondelete="SET NULL"))
    title: Mapped[str] = mapped_column(String(500))  # plain text
    url: Mapped[str] = mapped_column(String(1000))
    summary: Mapped[str] = mapped_column(Text, default="")  # plain text
    body_html: Mapped[str] = mapped_column(Text, default="")  # sanitised HTML
    image_url: Mapped[str] = mapped_column(String(1000), default="")
    image_alt: Mapped[str] = mapped_column(String(500), default="")
    author: Mapped[str] = mapped_column(String(200), default="")
    published_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    collected_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    hidden: Mapped[bool] = mapped_column(Boolean, default=False)  # left out of digests
    # Put in the coming digest by an editor although it is older than DIGEST_MAX_AGE_DAYS.
    pinned: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The editor's order within its section of the coming digest (None: newest first, after these).
    digest_rank: Mapped[int | None] = mapped_column(Integer)
    topic: Mapped[Topic | None] = relationship(lazy="joined")


# Each article belongs to at most one digest: the unique article_id is also what
# keeps two concurrent compiles from putting the same articles in two digests.
digest_articles = Table(
    "digest_article",
    db.metadata,
    Column("digest_id", ForeignKey("digest.id", ondelete="CASCADE"), primary_key=True),
    Column("article_id", ForeignKey("article.id", ondelete="CASCADE"), primary_key=True),
    Column("position", Integer, nullable=False, default=0),
    UniqueConstraint("article_id", name="uq_digest_article_article_id"),
)

DIGEST_STATES = ("draft", "approved", "scheduled", "sending", "paused", "cancelled", "done")


class Digest(db.Model):
    """A compiled digest, and the send of it (a status machine the workers obey)."""

    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="draft", index=True)
    # One digest per scheduled period (e.g. "2026-W48"): a unique key that two
    # schedulers or a scheduler and a manual send cannot both insert.
    period: Mapped[str | None] = mapped_column(String(32), unique=True)
    subject_sv: Mapped[str] = mapped_column(String(300), default="")
    subject_en: Mapped[str] = mapped_column(String(300), default="")
    # The editor's intro, plain text, per language: `intro` is the Swedish one. A language
    # without one gets no intro (never the other language's).
    intro: Mapped[str] = mapped_column(Text, default="")
    intro_en: Mapped[str] = mapped_column(Text, default="", server_default="")
    # Bytes of the HTML part of the largest variant in each language, measured when compiled
    # ({"sv": 41234, "en": 40321}): the admin warns before Gmail would clip it (about 102 KB).
    html_sizes: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    compiled_for: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    recipient_count: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    articles: Mapped[list[Article]] = relationship(
        secondary=digest_articles, order_by=digest_articles.c.position, lazy="selectin"
    )

    def intro_for(self, locale: str) -> str:
        """The editor's intro for readers of this language ("" when there is none)."""
        return (self.intro_en if locale == "en" else self.intro) or ""


DELIVERY_STATES = ("queued", "sending", "sent", "failed", "bounced", "skipped")


class Delivery(db.Model):
    """The send ledger: one row per (digest, subscriber), written before anything is sent."""

    __table_args__ = (
        UniqueConstraint("digest_id", "subscriber_id"),
        Index("ix_delivery_digest_state_id", "digest_id", "state", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    digest_id: Mapped[int] = mapped_column(ForeignKey("digest.id", ondelete="CASCADE"))
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscriber.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_reply: Mapped[str] = mapped_column(String(500), default="")
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class QueuedEmail(db.Model):
    """A single message (confirmation, welcome, link) waiting to go out: durable, retried."""

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    subscriber_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscriber.id", ondelete="CASCADE"), index=True
    )
    to_addr: Mapped[str] = mapped_column(String(320))
    message: Mapped[bytes] = mapped_column(LargeBinary)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Which flush claimed the row: a batch is claimed with one UPDATE, then read back by this.
    claimed_by: Mapped[str | None] = mapped_column(String(32))
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    # Set when the message is given up (a 5xx, too many 4xx, or nothing left to send it to).
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


ADMIN_ROLES = ("admin", "editor")


class Admin(UserMixin, db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(300))
    role: Mapped[str] = mapped_column(String(16), default="admin")
    language: Mapped[str] = mapped_column(String(8), default="sv")
    # Part of the login session id: bumping it (password change) ends every other session.
    session_version: Mapped[int] = mapped_column(Integer, default=0)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    @property
    def is_active(self) -> bool:  # Flask-Login: a deactivated admin cannot log in or stay in
        return bool(self.active)

    def get_id(self) -> str:
        """The login session id: "<id>:<session_version>", so bumping the version ends sessions."""
        return f"{self.id}:{self.session_version or 0}"


class ApiToken(db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex
    role: Mapped[str] = mapped_column(String(16), default="editor")
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("admin.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AuditEvent(db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    admin_id: Mapped[int | None] = mapped_column(ForeignKey("admin.id", ondelete="SET NULL"))
    actor: Mapped[str] = mapped_column(String(320))  # email or "api:<token name>" or "cli"
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(200), default="")
    detail: Mapped[dict] = mapped_column(JSON, default=dict)
    ip: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class SchedulerLock(db.Model):
    """A named lease, so only one scheduler (or sender) does a job at a time across processes."""

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


# --- privacy: suppression, consent wordings, per-send totals -------------------------------

SUPPRESSION_REASONS = ("unsubscribed", "bounced", "complained", "erased", "imported")


class Suppression(db.Model):
    """An address that no import, admin, API call or command may make confirmed again.

    Only a keyed hash of the canonical address is kept (HMAC with a key derived from
    SECRET_KEY): it says "this address opted out" to whoever holds the address, and
    names no one to whoever reads the table.
    """

    id: Mapped[int] = mapped_column(primary_key=True)
    address_hash: Mapped[str] = mapped_column(String(64), unique=True)
    reason: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(24), default="system")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ConsentWording(db.Model):
    """The text a consent wording version showed, per language, stored the first time it is used."""

    version: Mapped[str] = mapped_column(String(32), primary_key=True)
    locale: Mapped[str] = mapped_column(String(8), primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SendTotal(db.Model):
    """A send's figures that outlive its Delivery rows: the rolled-up counts of deleted rows,
    and the counters that never name anyone (complaints, unsubscribes from its links)."""

    digest_id: Mapped[int] = mapped_column(ForeignKey("digest.id", ondelete="CASCADE"), primary_key=True)
    sent: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    bounced: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    complaints: Mapped[int] = mapped_column(Integer, default=0)
    unsubscribes: Mapped[int] = mapped_column(Integer, default=0)


class ArticleClick(db.Model):
    """Clicks on one article's link in one send (STATS_CLICKS): a counter, nothing about who."""

    digest_id: Mapped[int] = mapped_column(ForeignKey("digest.id", ondelete="CASCADE"), primary_key=True)
    article_id: Mapped[int] = mapped_column(ForeignKey("article.id", ondelete="CASCADE"), primary_key=True)
    clicks: Mapped[int] = mapped_column(Integer, default=0)


class SchedulerHeartbeat(db.Model):
    """One row per scheduler process: when it was last seen, and whether it runs the jobs."""

    instance: Mapped[str] = mapped_column(String(128), primary_key=True)  # "host:pid:random"
    role: Mapped[str] = mapped_column(String(16), default="active")  # active, standby, stopped
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class SchedulerAction(db.Model):
    """What the scheduler did last (feeds polled, digest runs, purges): shown on the dashboard."""

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(String(64), default="")
    detail: Mapped[str] = mapped_column(String(300), default="")
