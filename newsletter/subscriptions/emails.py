"""The emails of the subscription flow (confirmation, welcome, preferences link), rendered
when the outbox sends them; registered with the outbox by the app factory."""

from __future__ import annotations

from flask_babel import force_locale, gettext

from newsletter.engine.clock import utcnow
from newsletter.engine.prepared import slot
from newsletter.i18n import moment_text
from newsletter.mail import outbox as mail_queue
from newsletter.mail.compose import prepare_message, render_email, smtp_address
from newsletter.mail.personal import personal_values
from newsletter.models import (
    QueuedEmail,
    Subscriber,
)
from newsletter.schedule import next_digest_time
from newsletter.subscriptions import tokens
from newsletter.subscriptions.consent import signup_event_for


def _prepared(cache: dict, name: str, locale: str, *, bulk: bool = False):
    key = (name, locale)
    if key not in cache:
        subject, text, html = render_email(name, locale, slot=slot)
        cache[key] = prepare_message(subject=subject, text=text, html=html, bulk=bulk)
    return cache[key]


@mail_queue.renderer("confirm")
def _confirm_email(subscriber: Subscriber, cache: dict, row: QueuedEmail) -> bytes | None:
    if subscriber.status != "pending":  # confirmed or unsubscribed since it was queued
        return None
    signup = signup_event_for(subscriber, row.created_at)
    language = (signup.detail or {}).get("language") if signup is not None else None
    return _prepared(cache, "confirm", language or subscriber.language).render(
        {"to": smtp_address(subscriber.email)[0],
         "confirm_url": tokens.confirm_url(subscriber, signup.id if signup is not None else None)})


@mail_queue.renderer("welcome")
def _welcome_email(subscriber: Subscriber, cache: dict, row: QueuedEmail) -> bytes | None:
    if subscriber.status != "confirmed":
        return None
    return _prepared(cache, "welcome", subscriber.language, bulk=True).render(
        {**personal_values(subscriber), **_welcome_values(subscriber)})


def _welcome_values(subscriber: Subscriber) -> dict[str, str]:
    """What the welcome email tells this person: their topics and when the first digest comes."""
    language = subscriber.language
    with force_locale(language):
        topics = ", ".join(t.name(language) for t in subscriber.topics) or gettext("every topic")
        first = next_digest_time(utcnow())
        when = moment_text(first, language) if first else gettext("next week")
    return {"topics": topics, "first_digest": when}


@mail_queue.renderer("preferences_link")
def _preferences_link_email(subscriber: Subscriber, cache: dict, row: QueuedEmail) -> bytes | None:
    return _prepared(cache, "preferences_link", subscriber.language).render(
        {"to": smtp_address(subscriber.email)[0], "preferences_url": tokens.preferences_url(subscriber)})
