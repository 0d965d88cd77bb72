"""The subscription rules: signup (double opt-in), confirmation, unsubscribe,
preferences, data export and erasure, and the consent ledger behind them.

Views, CLI and the admin are thin over these functions. Every change to
someone's consent is a ConsentEvent. Emails are queued (mail_queue) in the same
transaction as the change that calls for them, never sent from here.
"""

from __future__ import annotations

import csv
import unicodedata
from datetime import timedelta
from typing import IO

from flask import current_app
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from . import mail_queue, tokens
from .extensions import db
from .ledger import email_hash
from .mail import prepare_message, render_email, slot, smtp_address
from .models import (
    CONSENT_SOURCES,
    ConsentEvent,
    Delivery,
    QueuedEmail,
    Subscriber,
    Topic,
    subscriber_topics,
    utcnow,
)
from .monitoring import metrics
from .topics import ensure_topics, topics_by_slugs

MAX_EMAIL_LENGTH = 254
MAX_NAME_LENGTH = 200
# Control characters, and the Unicode line and paragraph separators: nothing a person types
# into a one-line field, and CR/LF is how header injection starts.
FORBIDDEN_CATEGORIES = {"Cc", "Zl", "Zp"}


class InvalidInput(ValueError):
    """A value that cannot be accepted. `field` names it; the message (English) says why."""

    def __init__(self, field: str, reason: str):
        super().__init__(reason)
        self.field = field
        self.reason = reason


class SubscriberExists(ValueError):
    """add_subscriber was given an address that is already on the list."""


class LinkSuperseded(tokens.TokenError):
    """A well-signed confirmation link that no longer applies (unsubscribed since)."""


# --- validation -----------------------------------------------------------------


def has_forbidden_characters(value: str) -> bool:
    if value.isprintable():  # fast path: no Cc, Zl or Zp (nor other unprintables) at all
        return False
    return any(unicodedata.category(char) in FORBIDDEN_CATEGORIES for char in value)


def normalise_email(raw: object) -> str:
    """The address normalised by email-validator (IDN domain as Unicode) and lower-cased."""
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidInput("email", "empty address")
    if has_forbidden_characters(raw):
        raise InvalidInput("email", "line break or control character in the address")
    raw = raw.strip()
    if len(raw) > MAX_EMAIL_LENGTH:
        raise InvalidInput("email", "address too long")
    # Imported here: its tables cost ~20 ms at start-up, and every process (a digest send,
    # the scheduler) imports this module without ever validating an address.
    from email_validator import EmailNotValidError, validate_email

    try:
        info = validate_email(raw, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidInput("email", f"invalid address: {exc}") from exc
    return info.normalized.lower()


def clean_name(raw: object) -> str:
    if raw is None:
        return ""
    if not isinstance(raw, str) or has_forbidden_characters(raw):
        raise InvalidInput("name", "line break or control character in the name")
    name = " ".join(raw.split())
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInput("name", "name too long")
    return name


def check_language(language: object) -> str:
    if language in (None, ""):
        return current_app.config["DEFAULT_LOCALE"]
    if not isinstance(language, str) or language.strip().lower() not in current_app.config["LANGUAGES"]:
        raise InvalidInput("language", f"unknown language {str(language)[:20]!r}")
    return language.strip().lower()


def check_topics(slugs) -> list[Topic]:
    """Topics named by slugs (or Topic objects); none chosen means all topics."""
    slugs = list(slugs or ())
    if all(isinstance(s, Topic) for s in slugs):
        return slugs
    if not all(isinstance(s, str) and not has_forbidden_characters(s) for s in slugs):
        raise InvalidInput("topics", "malformed topic")
    if slugs:
        ensure_topics()  # the configured topics exist even before anyone has seen the form
    try:
        return topics_by_slugs(slugs)
    except ValueError as exc:
        raise InvalidInput("topics", str(exc)) from exc


def validate_signup(email, *, topics, language, name="") -> tuple[str, list[Topic], str, str]:
    """(address, topics, language, name) checked and normalised, or InvalidInput."""
    return normalise_email(email), check_topics(topics), check_language(language), clean_name(name)


def _check_source(source: str) -> str:
    if source not in CONSENT_SOURCES:
        raise ValueError(f"unknown consent source {source!r}")
    return source


def record_event(subscriber: Subscriber, kind: str, *, source: str, ip: str = "", user_agent: str = "",
                 detail: dict | None = None) -> ConsentEvent:
    """One row of the consent ledger (added to the session, committed by the caller)."""
    event = ConsentEvent(
        subscriber_id=subscriber.id, email_hash=email_hash(subscriber.email), kind=kind,
        source=_check_source(source), wording_version=current_app.config["CONSENT_VERSION"],
        ip=(ip or "")[:64], user_agent=(user_agent or "")[:400], detail=detail or {},
    )
    db.session.add(event)
    metrics.subscriber_event(kind)
    return event


# --- lookups ----------------------------------------------------------------------


def find_subscriber(email: str) -> Subscriber | None:
    """The subscriber with this address (normalised), or None, also for an invalid address."""
    try:
        address = normalise_email(email)
    except InvalidInput:
        return None
    return db.session.execute(select(Subscriber).where(Subscriber.email == address)).scalar_one_or_none()


def subscriber_by_uid(uid: str) -> Subscriber | None:
    return db.session.execute(select(Subscriber).where(Subscriber.uid == uid)).scalar_one_or_none()


def subscriber_from_token(purpose: str, token: str) -> Subscriber | None:
    """The subscriber an unsubscribe or preferences token names (None if erased); TokenError."""
    return subscriber_by_uid(tokens.read_subscriber_token(purpose, token).uid)


def topic_slugs(subscriber: Subscriber) -> list[str]:
    return sorted(t.slug for t in subscriber.topics)


# --- signup and confirmation --------------------------------------------------------


def _resend_due(subscriber: Subscriber) -> bool:
    sent = subscriber.confirmation_sent_at
    window = timedelta(minutes=current_app.config["CONFIRM_RESEND_MINUTES"])
    return sent is None or utcnow() - sent >= window


def _queue_confirmation(subscriber: Subscriber) -> None:
    subscriber.confirmation_sent_at = utcnow()
    mail_queue.enqueue("confirm", to=subscriber.email, subscriber_id=subscriber.id)


def _locked_by_email(address: str) -> Subscriber | None:
    # FOR UPDATE (PostgreSQL) serialises two signups of one address: one resend, not two.
    return db.session.execute(
        select(Subscriber).where(Subscriber.email == address).with_for_update()
    ).scalar_one_or_none()


def request_signup(email, *, topics, language, name: str = "", source: str = "form", ip: str = "",
                   user_agent: str = "") -> None:
    """Ask for a subscription: the same outcome for the caller whatever the address's state.

    New: a pending subscriber and a confirmation email. Pending: the choices are
    updated and the confirmation resent, at most once per CONFIRM_RESEND_MINUTES.
    Confirmed: nothing at all. Unsubscribed or bounced: pending again, and must
    confirm again (the generation bumped at unsubscribe keeps old links dead).
    """
    address, chosen, language, name = validate_signup(email, topics=topics, language=language, name=name)
    _check_source(source)
    subscriber = _locked_by_email(address)
    if subscriber is None:
        subscriber = Subscriber(email=address, name=name, language=language, status="pending",
                                topics=chosen)
        db.session.add(subscriber)
        try:
            db.session.flush()
        except IntegrityError:  # inserted by a concurrent request a moment ago
            db.session.rollback()
            subscriber = _locked_by_email(address)
            if subscriber is None:
                raise
    if subscriber.status == "confirmed":
        db.session.rollback()  # nothing changes, nothing is sent, nothing is told
        return
    if subscriber.status != "pending":
        subscriber.status = "pending"
        subscriber.confirmation_sent_at = None  # a new subscription: confirm it now
    subscriber.language, subscriber.topics = language, chosen
    if name:
        subscriber.name = name
    record_event(subscriber, "signup", source=source, ip=ip, user_agent=user_agent,
                 detail={"topics": [t.slug for t in chosen], "language": language})
    if _resend_due(subscriber):
        _queue_confirmation(subscriber)
    db.session.commit()
    mail_queue.wake()


def subscriber_for_confirm(token: str) -> Subscriber:
    """The subscriber a confirmation token is for, without changing anything (GET is scanner-safe)."""
    data = tokens.read_confirm_token(token)
    subscriber = subscriber_by_uid(data.uid)
    if subscriber is None:
        raise tokens.TokenError("no such subscriber")
    if subscriber.generation != data.generation or subscriber.status not in ("pending", "confirmed"):
        raise LinkSuperseded("the subscription was ended after this link was sent")
    return subscriber


def confirm_subscription(token: str, *, ip: str = "", user_agent: str = "") -> Subscriber:
    """Confirm (idempotent); the welcome email follows. TokenError/TokenExpired/LinkSuperseded."""
    subscriber = subscriber_for_confirm(token)
    if subscriber.status == "confirmed":
        return subscriber
    subscriber.status = "confirmed"
    subscriber.confirmed_at = utcnow()
    record_event(subscriber, "confirm", source="email", ip=ip, user_agent=user_agent)
    mail_queue.enqueue("welcome", to=subscriber.email, subscriber_id=subscriber.id)
    db.session.commit()
    mail_queue.wake()
    return subscriber


def unsubscribe(subscriber: Subscriber, *, source: str, ip: str = "", user_agent: str = "") -> None:
    """End the subscription (idempotent); confirmation links sent before stop working."""
    if subscriber.status == "unsubscribed":
        return
    subscriber.status = "unsubscribed"
    subscriber.unsubscribed_at = utcnow()
    subscriber.generation += 1
    record_event(subscriber, "unsubscribe", source=source, ip=ip, user_agent=user_agent)
    db.session.commit()


def update_preferences(subscriber: Subscriber, *, topics, language, source: str = "form", ip: str = "",
                       user_agent: str = "") -> None:
    """Change topics (none = all) and language, with a ledger event."""
    chosen, language = check_topics(topics), check_language(language)
    subscriber.topics, subscriber.language = chosen, language
    record_event(subscriber, "preferences", source=source, ip=ip, user_agent=user_agent,
                 detail={"topics": [t.slug for t in chosen], "language": language})
    db.session.commit()


def request_preferences_link(email, *, ip: str = "", user_agent: str = "") -> None:
    """Email a fresh preferences link if the address is known; the caller cannot tell."""
    address = normalise_email(email)
    subscriber = find_subscriber(address)
    if subscriber is None:
        return
    since = utcnow() - timedelta(minutes=current_app.config["CONFIRM_RESEND_MINUTES"])
    recent = db.session.execute(
        select(func.count()).select_from(QueuedEmail).where(
            QueuedEmail.subscriber_id == subscriber.id, QueuedEmail.kind == "preferences_link",
            QueuedEmail.created_at >= since)
    ).scalar_one()
    if recent:
        return
    mail_queue.enqueue("preferences_link", to=subscriber.email, subscriber_id=subscriber.id)
    db.session.commit()
    mail_queue.wake()


def add_subscriber(email, *, name: str = "", language: str | None = None, topics=(), confirmed: bool = False,
                   source: str = "admin", detail: dict | None = None) -> Subscriber:
    """Add someone by hand (admin, CLI, API): confirmed at once, or pending with a confirmation email."""
    address, chosen, language, name = validate_signup(email, topics=topics, language=language, name=name)
    if find_subscriber(address) is not None:
        raise SubscriberExists(f"{address} is already on the list")
    now = utcnow()
    subscriber = Subscriber(email=address, name=name, language=language, topics=chosen,
                            status="confirmed" if confirmed else "pending",
                            confirmed_at=now if confirmed else None)
    db.session.add(subscriber)
    db.session.flush()
    record_event(subscriber, "import" if source == "import" else "admin", source=source,
                 detail={"confirmed": confirmed, **(detail or {})})
    if not confirmed:
        _queue_confirmation(subscriber)
    db.session.commit()
    mail_queue.wake()
    return subscriber


# --- the person's data -----------------------------------------------------------------


def iso(value) -> str | None:
    """A datetime as ISO 8601, None as None (for JSON)."""
    return value.isoformat() if value else None


def subscriber_profile(subscriber: Subscriber) -> dict:
    """The person's subscription as plain data (the data export and the API share it)."""
    return {
        "email": subscriber.email,
        "name": subscriber.name,
        "status": subscriber.status,
        "language": subscriber.language,
        "topics": topic_slugs(subscriber),
        "follows_all_topics": not subscriber.topics,
        "created_at": iso(subscriber.created_at),
        "confirmed_at": iso(subscriber.confirmed_at),
        "unsubscribed_at": iso(subscriber.unsubscribed_at),
    }


def subscriber_data(subscriber: Subscriber) -> dict:
    """Everything we hold about the person (GDPR access and portability)."""
    events = db.session.execute(
        select(ConsentEvent).where(ConsentEvent.subscriber_id == subscriber.id).order_by(ConsentEvent.id)
    ).scalars()
    deliveries = db.session.execute(
        select(Delivery).where(Delivery.subscriber_id == subscriber.id).order_by(Delivery.id)
    ).scalars()
    return {
        **subscriber_profile(subscriber),
        "consent_events": [
            {"kind": e.kind, "source": e.source, "time": iso(e.created_at), "wording_version":
             e.wording_version, "ip": e.ip, "user_agent": e.user_agent, "detail": e.detail}
            for e in events
        ],
        "deliveries": [
            {"digest": d.digest_id, "state": d.state, "sent_at": iso(d.sent_at)} for d in deliveries
        ],
    }


def erase_subscriber(subscriber: Subscriber, *, source: str) -> None:
    """Delete the person and everything about them; the ledger keeps an anonymous 'erase' trace."""
    hashed, sid = email_hash(subscriber.email), subscriber.id
    # Explicit deletes, not ON DELETE CASCADE: SQLite does not enforce foreign keys by default.
    for statement in (
        delete(ConsentEvent).where(ConsentEvent.subscriber_id == sid),
        delete(Delivery).where(Delivery.subscriber_id == sid),
        delete(QueuedEmail).where(QueuedEmail.subscriber_id == sid),
    ):
        db.session.execute(statement.execution_options(synchronize_session=False))
    db.session.delete(subscriber)  # with its topic links (the ORM removes the secondary rows)
    db.session.add(ConsentEvent(subscriber_id=None, email_hash=hashed, kind="erase",
                                source=_check_source(source),
                                wording_version=current_app.config["CONSENT_VERSION"]))
    db.session.commit()


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
        query = query.where(Subscriber.topics.any(Topic.slug == topic))
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


# --- the emails of this flow, rendered when the queue sends them ------------------------------


def _prepared(cache: dict, name: str, locale: str, *, bulk: bool = False):
    key = (name, locale)
    if key not in cache:
        subject, text, html = render_email(name, locale, slot=slot)
        cache[key] = prepare_message(subject=subject, text=text, html=html, bulk=bulk)
    return cache[key]


@mail_queue.renderer("confirm")
def _confirm_email(subscriber: Subscriber, cache: dict) -> bytes | None:
    if subscriber.status != "pending":  # confirmed or unsubscribed since it was queued
        return None
    return _prepared(cache, "confirm", subscriber.language).render(
        {"to": smtp_address(subscriber.email)[0], "confirm_url": tokens.confirm_url(subscriber)})


@mail_queue.renderer("welcome")
def _welcome_email(subscriber: Subscriber, cache: dict) -> bytes | None:
    if subscriber.status != "confirmed":
        return None
    from .delivery import personal_values

    return _prepared(cache, "welcome", subscriber.language, bulk=True).render(personal_values(subscriber))


@mail_queue.renderer("preferences_link")
def _preferences_link_email(subscriber: Subscriber, cache: dict) -> bytes | None:
    return _prepared(cache, "preferences_link", subscriber.language).render(
        {"to": smtp_address(subscriber.email)[0], "preferences_url": tokens.preferences_url(subscriber)})
