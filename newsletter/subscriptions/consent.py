"""The consent ledger: one ConsentEvent per thing that happens to someone's consent, and the
proof of it: the text of every consent wording version (sv and en), stored in ConsentWording
the first time the version is used, so the proof shows what the person agreed to even after
the wording changed.
"""

from __future__ import annotations

import hashlib

from flask import current_app
from flask_babel import force_locale
from flask_babel import gettext as _
from sqlalchemy import select

from newsletter.engine import counters
from newsletter.extensions import db
from newsletter.models import (
    CONSENT_SOURCES,
    ConsentEvent,
    ConsentWording,
    Subscriber,
    utcnow,
)


def check_source(source: str) -> str:
    if source not in CONSENT_SOURCES:
        raise ValueError(f"unknown consent source {source!r}")
    return source


def record_event(subscriber: Subscriber, kind: str, *, source: str, ip: str = "", user_agent: str = "",
                 detail: dict | None = None) -> ConsentEvent:
    """One row of the consent ledger (added to the session, committed by the caller)."""
    if kind in ("signup", "confirm"):
        store_wording()  # the proof shows the text agreed to, not only its version
    event = ConsentEvent(
        subscriber_id=subscriber.id, email_hash=email_hash(subscriber.email), kind=kind,
        source=check_source(source), wording_version=current_app.config["CONSENT_VERSION"],
        ip=(ip or "")[:64], user_agent=(user_agent or "")[:400], detail=detail or {},
    )
    db.session.add(event)
    counters.subscriber_event(kind)
    return event


def email_hash(email: str) -> str:
    """The SHA-256 of the normalised address, on each ledger event while the person is on the
    list (an erasure or the retention purge empties it; the suppression list keeps a keyed hash)."""
    return hashlib.sha256(email.strip().lower().encode("utf-8")).hexdigest()


def consent_wording() -> str:
    """The consent wording of the signup form, in the current language (also the template's)."""
    return _("By subscribing you agree that we store your email address, your choices and when and from "
             "where you subscribed, to send you the newsletter. You can unsubscribe or erase your data at "
             "any time.")


def store_wording(version: str | None = None) -> None:
    """Keep the text of the wording version in force, in every language, if not kept yet (flushed)."""
    version = version or current_app.config["CONSENT_VERSION"]
    known = set(db.session.execute(
        select(ConsentWording.locale).where(ConsentWording.version == version)).scalars())
    for locale in current_app.config["LANGUAGES"]:
        if locale not in known:
            with force_locale(locale):
                text = consent_wording()
            _insert_ignoring_duplicates({"version": version, "locale": locale, "text": text,
                                         "created_at": utcnow()})


def _insert_ignoring_duplicates(values: dict) -> None:
    if db.session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    db.session.execute(insert(ConsentWording).values(**values).on_conflict_do_nothing())


def wordings(versions: set[str]) -> dict[str, dict[str, str]]:
    """{version: {locale: text}} of the versions asked for."""
    found: dict[str, dict[str, str]] = {}
    if versions:
        rows = db.session.execute(
            select(ConsentWording).where(ConsentWording.version.in_(versions))).scalars()
        for row in rows:
            found.setdefault(row.version, {})[row.locale] = row.text
    return found


def _iso(value) -> str | None:
    return value.isoformat() if value else None


def ledger_with_wordings(subscriber: Subscriber) -> list[dict]:
    """Every ledger event of the person, oldest first, each with the full wording it refers to."""
    events = db.session.execute(
        select(ConsentEvent).where(ConsentEvent.subscriber_id == subscriber.id).order_by(ConsentEvent.id)
    ).scalars().all()
    texts = wordings({e.wording_version for e in events if e.wording_version})
    return [
        {"time": _iso(e.created_at), "kind": e.kind, "source": e.source, "ip": e.ip,
         "user_agent": e.user_agent, "wording_version": e.wording_version,
         "wording": texts.get(e.wording_version, {}) if e.kind in ("signup", "confirm") else {},
         "detail": e.detail}
        for e in events
    ]


def proof_of_consent(subscriber: Subscriber) -> dict:
    """One address's proof of consent: who, their state, and the ledger with the wordings."""
    return {
        "email": subscriber.email,
        "status": subscriber.status,
        "created_at": _iso(subscriber.created_at),
        "confirmed_at": _iso(subscriber.confirmed_at),
        "unsubscribed_at": _iso(subscriber.unsubscribed_at),
        "generated_at": _iso(utcnow()),
        "events": ledger_with_wordings(subscriber),
    }
