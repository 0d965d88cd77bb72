"""The consent ledger: one ConsentEvent per thing that happens to someone's consent."""

from __future__ import annotations

from flask import current_app

from newsletter.engine.ledger import email_hash
from newsletter.extensions import db
from newsletter.models import (
    CONSENT_SOURCES,
    ConsentEvent,
    Subscriber,
)


def check_source(source: str) -> str:
    if source not in CONSENT_SOURCES:
        raise ValueError(f"unknown consent source {source!r}")
    return source


def record_event(subscriber: Subscriber, kind: str, *, source: str, ip: str = "", user_agent: str = "",
                 detail: dict | None = None) -> ConsentEvent:
    """One row of the consent ledger (added to the session, committed by the caller)."""
    event = ConsentEvent(
        subscriber_id=subscriber.id, email_hash=email_hash(subscriber.email), kind=kind,
        source=check_source(source), wording_version=current_app.config["CONSENT_VERSION"],
        ip=(ip or "")[:64], user_agent=(user_agent or "")[:400], detail=detail or {},
    )
    db.session.add(event)
    return event
