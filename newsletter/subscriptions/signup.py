"""The subscription rules: signup (double opt-in), confirmation, unsubscribe,
preferences, data export and erasure, and the consent ledger behind them.

Views, CLI and the admin are thin over these functions. Every change to
someone's consent is a ConsentEvent. Emails are queued (mail_queue) in the same
transaction as the change that calls for them, never sent from here.
"""

from __future__ import annotations

from datetime import timedelta

from flask import current_app
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError

from newsletter.extensions import db
from newsletter.mail import outbox as mail_queue
from newsletter.models import (
    ConsentEvent,
    QueuedEmail,
    Subscriber,
    utcnow,
)
from newsletter.subscriptions import suppression, tokens
from newsletter.subscriptions.consent import check_source, record_event
from newsletter.subscriptions.validation import (
    InvalidInput,
    canonical_mailbox,
    check_language,
    check_topics,
    clean_name,
    normalise_email,
    validate_signup,
)


class SubscriberExists(ValueError):
    """add_subscriber was given an address that is already on the list; `status` is theirs."""

    def __init__(self, message: str, status: str = ""):
        super().__init__(message)
        self.status = status


class LinkSuperseded(tokens.TokenError):
    """A well-signed confirmation link that no longer applies (unsubscribed since)."""


class SubscriberErased(tokens.TokenError):
    """A well-signed link whose person has since been erased: nothing is left for it to open."""


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


# --- signup and confirmation --------------------------------------------------------


def _resend_due(subscriber: Subscriber, *, new: bool = False, mailbox: bool = True) -> bool:
    """A confirmation may go out: none to this address, nor to its mailbox however spelt (a
    +tag, upper case), within CONFIRM_RESEND_MINUTES, and fewer than CONFIRM_MAX_PER_MAILBOX
    to the mailbox in the last day."""
    now = utcnow()
    window = timedelta(minutes=current_app.config["CONFIRM_RESEND_MINUTES"])
    sent = subscriber.confirmation_sent_at
    if not new and sent is not None and now - sent < window:
        return False
    if not mailbox:  # an admin's deliberate resend: only this address's own window
        return True
    mailbox = canonical_mailbox(subscriber.email)
    local, _, domain = mailbox.rpartition("@")
    tagged = f"{_like_escape(local)}+%@{_like_escape(domain)}"
    recent = list(db.session.execute(
        select(QueuedEmail.created_at).where(
            QueuedEmail.kind == "confirm", QueuedEmail.created_at >= now - timedelta(days=1),
            or_(func.lower(QueuedEmail.to_addr) == mailbox,
                func.lower(QueuedEmail.to_addr).like(tagged, escape="\\")))
    ).scalars())
    if len(recent) >= current_app.config["CONFIRM_MAX_PER_MAILBOX"]:
        return False
    return not any(now - created < window for created in recent)


def _like_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _queue_confirmation(subscriber: Subscriber, at=None, *, new: bool = False) -> None:
    at = at or utcnow()
    if not new:  # a new subscriber's row has the time already
        subscriber.confirmation_sent_at = at
    row = mail_queue.enqueue("confirm", to=subscriber.email, subscriber_id=subscriber.id)
    row.created_at = at  # the email's link carries the signup recorded at this moment


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
    Confirmed: nothing at all. Unsubscribed or erased: pending again, and must
    confirm again (the generation bumped at unsubscribe keeps old links dead); the
    confirmation, the person's own, lifts the suppression. Bounced or complained:
    nothing, until an admin lifts it. Through the API (someone else asking for the
    person) a suppressed address is refused: Suppressed.

    A new signup for a pending address changes nothing that was chosen: its choices are kept in
    its own signup event, and the confirmation link names the signup it was sent for, so the
    choices applied are those of the signup that is confirmed (not a stranger's re-signup).
    """
    address, chosen, language, name = validate_signup(email, topics=topics, language=language, name=name)
    check_source(source)
    if source == "api":
        suppression.check_not_suppressed(address)
    elif suppression.blocks_own_signup(address):
        db.session.rollback()  # the same answer as any other signup; nothing is sent
        return
    subscriber = _locked_by_email(address)
    created = subscriber is None
    if created:
        # Its confirmation is queued below: the time goes in with the row (no UPDATE after it).
        subscriber = Subscriber(email=address, name=name, language=language, status="pending",
                                topics=chosen, confirmation_sent_at=utcnow())
        db.session.add(subscriber)
        try:
            db.session.flush()
        except IntegrityError:  # inserted by a concurrent request a moment ago
            db.session.rollback()
            created = False
            subscriber = _locked_by_email(address)
            if subscriber is None:
                raise
    if subscriber.status == "confirmed":
        return  # nothing changes, nothing is sent, nothing is told
    if subscriber.status != "pending" or subscriber.confirmation_sent_at is None:
        # A new subscription (or one that never got its email): these choices are the ones
        # shown until a confirmation applies those of its own signup.
        subscriber.status = "pending"
        subscriber.confirmation_sent_at = None
        subscriber.language, subscriber.topics = language, chosen
        if name:
            subscriber.name = name
    now = utcnow()
    event = record_event(subscriber, "signup", source=source, ip=ip, user_agent=user_agent,
                         detail={"topics": [t.slug for t in chosen], "language": language})
    event.created_at = now
    if _resend_due(subscriber, new=created):
        _queue_confirmation(subscriber, now, new=created)
    elif created:  # its mailbox had its confirmations (another spelling): none to this address yet
        subscriber.confirmation_sent_at = None
    db.session.flush()


def resend_confirmation(subscriber: Subscriber) -> bool:
    """Send a pending person their confirmation again (an admin's button): False when they are
    not pending, or had one within CONFIRM_RESEND_MINUTES."""
    if subscriber.status != "pending" or not _resend_due(subscriber, mailbox=False):
        return False
    _queue_confirmation(subscriber)
    return True


def subscriber_for_confirm(token: str) -> Subscriber:
    """The subscriber a confirmation token is for, without changing anything (GET is scanner-safe)."""
    data = tokens.read_confirm_token(token)
    subscriber = subscriber_by_uid(data.uid)
    if subscriber is None:
        raise SubscriberErased("no such subscriber")
    if subscriber.generation != data.generation or subscriber.status not in ("pending", "confirmed"):
        raise LinkSuperseded("the subscription was ended after this link was sent")
    return subscriber


def confirm_subscription(token: str, *, ip: str = "", user_agent: str = "") -> Subscriber:
    """Confirm (idempotent); the welcome email follows. TokenError/TokenExpired/LinkSuperseded."""
    subscriber = subscriber_for_confirm(token)
    if subscriber.status == "confirmed":
        return subscriber
    _apply_signup_choices(subscriber, tokens.read_confirm_token(token).signup_event)
    subscriber.status = "confirmed"
    subscriber.confirmed_at = utcnow()
    suppression.lift_on_opt_in(subscriber.email)  # their own double opt-in
    record_event(subscriber, "confirm", source="email", ip=ip, user_agent=user_agent)
    mail_queue.enqueue("welcome", to=subscriber.email, subscriber_id=subscriber.id)
    db.session.flush()
    return subscriber


def _apply_signup_choices(subscriber: Subscriber, event_id: int | None) -> None:
    """The topics and language of the signup this confirmation link was sent for."""
    if event_id is None:
        return
    event = db.session.get(ConsentEvent, event_id)
    if event is None or event.subscriber_id != subscriber.id or event.kind != "signup":
        return
    detail = event.detail or {}
    try:
        subscriber.topics = check_topics(detail.get("topics") or [])
        subscriber.language = check_language(detail.get("language") or subscriber.language)
    except InvalidInput:  # a topic removed from TOPICS since: keep what is stored
        return


def unsubscribe(subscriber: Subscriber, *, source: str, ip: str = "", user_agent: str = "") -> bool:
    """End the subscription (idempotent: False if it had ended); confirmation links sent before
    stop working."""
    if subscriber.status == "unsubscribed":
        return False
    subscriber.status = "unsubscribed"
    subscriber.unsubscribed_at = utcnow()
    subscriber.generation += 1
    record_event(subscriber, "unsubscribe", source=source, ip=ip, user_agent=user_agent)
    db.session.flush()
    return True


def update_preferences(subscriber: Subscriber, *, topics, language, source: str = "form", ip: str = "",
                       user_agent: str = "") -> None:
    """Change topics (none = all) and language, with a ledger event."""
    chosen, language = check_topics(topics), check_language(language)
    subscriber.topics, subscriber.language = chosen, language
    record_event(subscriber, "preferences", source=source, ip=ip, user_agent=user_agent,
                 detail={"topics": [t.slug for t in chosen], "language": language})
    db.session.flush()


def edit_subscriber(subscriber: Subscriber, *, name, topics, language) -> None:
    """An admin changes someone's name, topics or language (a ledger event with source "admin")."""
    subscriber.name = clean_name(name)
    update_preferences(subscriber, topics=topics, language=language, source="admin")
    db.session.flush()


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
    db.session.flush()


def add_subscriber(email, *, name: str = "", language: str | None = None, topics=(), confirmed: bool = False,
                   source: str = "admin", detail: dict | None = None) -> Subscriber:
    """Add someone by hand (admin, CLI, API): confirmed at once, or pending with a confirmation email.

    Suppressed when the address unsubscribed, bounced, complained or was erased.
    """
    address, chosen, language, name = validate_signup(email, topics=topics, language=language, name=name)
    suppression.check_not_suppressed(address)
    existing = find_subscriber(address)
    if existing is not None:
        raise SubscriberExists(f"{address} is already on the list ({existing.status})", existing.status)
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
    db.session.flush()
    return subscriber
