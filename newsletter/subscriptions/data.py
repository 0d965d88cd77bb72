"""A subscriber's own data: their profile, a copy of everything kept (access), and erasure."""

from __future__ import annotations

from flask import current_app
from sqlalchemy import delete, select

from newsletter.extensions import db
from newsletter.models import (
    ConsentEvent,
    Delivery,
    Digest,
    QueuedEmail,
    Subscriber,
)
from newsletter.subscriptions import suppression
from newsletter.subscriptions.consent import check_source, ledger_with_wordings
from newsletter.subscriptions.topics import topic_slugs


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
    deliveries = db.session.execute(
        select(Delivery.digest_id, Delivery.state, Delivery.sent_at, Digest.subject_sv, Digest.subject_en)
        .join(Digest, Digest.id == Delivery.digest_id)
        .where(Delivery.subscriber_id == subscriber.id).order_by(Delivery.id)
    ).all()
    return {
        **subscriber_profile(subscriber),
        # The proof of consent: every ledger event with the full wording agreed to.
        "consent_events": ledger_with_wordings(subscriber),
        "deliveries": [
            {"digest": d.digest_id, "subject": d.subject_en if subscriber.language == "en" else d.subject_sv,
             "state": d.state, "sent_at": iso(d.sent_at)} for d in deliveries
        ],
    }


def erase_subscriber(subscriber: Subscriber, *, source: str) -> None:
    """Delete the person and everything about them; the ledger keeps an anonymous 'erase' trace,
    the suppression list the keyed hash of the address (privacy.erase_person also keeps the
    sends' totals: use that)."""
    sid = subscriber.id
    # The keyed hash on the suppression list keeps the address out; the ledger's trace keeps no
    # hash at all (a plain SHA-256 of an address is found again by hashing a list of addresses).
    suppression.suppress([subscriber.email], reason="erased", source=source)
    # Explicit deletes, not ON DELETE CASCADE: SQLite does not enforce foreign keys by default.
    for statement in (
        delete(ConsentEvent).where(ConsentEvent.subscriber_id == sid),
        delete(Delivery).where(Delivery.subscriber_id == sid),
        delete(QueuedEmail).where(QueuedEmail.subscriber_id == sid),
    ):
        db.session.execute(statement.execution_options(synchronize_session=False))
    db.session.delete(subscriber)  # with its topic links (the ORM removes the secondary rows)
    db.session.add(ConsentEvent(subscriber_id=None, email_hash="", kind="erase",
                                source=check_source(source),
                                wording_version=current_app.config["CONSENT_VERSION"]))
    db.session.flush()
