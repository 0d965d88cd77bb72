"""Checking what people type: addresses (email-validator), names, languages and topics."""

from __future__ import annotations

import unicodedata

from flask import current_app

from newsletter.i18n import N_, Problem
from newsletter.models import (
    Topic,
)
from newsletter.subscriptions.topics import topics_by_slugs

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


def has_forbidden_characters(value: str) -> bool:
    if value.isprintable():  # fast path: no Cc, Zl or Zp (nor other unprintables) at all
        return False
    return any(unicodedata.category(char) in FORBIDDEN_CATEGORIES for char in value)


def normalise_email(raw: object) -> str:
    """The address normalised by email-validator (IDN domain as Unicode) and lower-cased."""
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidInput("email", Problem(N_("empty address")))
    if has_forbidden_characters(raw):
        raise InvalidInput("email", Problem(N_("line break or control character in the address")))
    raw = raw.strip()
    if len(raw) > MAX_EMAIL_LENGTH:
        raise InvalidInput("email", Problem(N_("address too long")))
    # Imported here: its tables cost ~20 ms at start-up, and every process (a digest send,
    # the scheduler) imports this module without ever validating an address.
    from email_validator import EmailNotValidError, validate_email

    try:
        info = validate_email(raw, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidInput("email", Problem(N_("invalid address: %(detail)s"), detail=str(exc),
                                              local=N_("not a valid email address"))) from exc
    return info.normalized.lower()


def canonical_mailbox(address: str) -> str:
    """The mailbox an address reaches: lower-cased and without a +tag, so `Anna+1@x.se` and
    `anna+2@x.se` are both `anna@x.se` (for limits; mail goes to the address as typed)."""
    local, _, domain = address.strip().lower().rpartition("@")
    return f"{local.split('+', 1)[0] or local}@{domain}"


def clean_name(raw: object) -> str:
    if raw is None:
        return ""
    if not isinstance(raw, str) or has_forbidden_characters(raw):
        raise InvalidInput("name", Problem(N_("line break or control character in the name")))
    name = " ".join(raw.split())
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInput("name", Problem(N_("name too long")))
    return name


def check_language(language: object) -> str:
    if language in (None, ""):
        return current_app.config["DEFAULT_LOCALE"]
    if not isinstance(language, str) or language.strip().lower() not in current_app.config["LANGUAGES"]:
        raise InvalidInput("language", Problem(N_("unknown language %(value)s"),
                                               value=repr(str(language)[:20])))
    return language.strip().lower()


def check_topics(slugs) -> list[Topic]:
    """Topics named by slugs (or Topic objects); none chosen means all topics."""
    slugs = list(slugs or ())
    if all(isinstance(s, Topic) for s in slugs):
        return slugs
    if not all(isinstance(s, str) and not has_forbidden_characters(s) for s in slugs):
        raise InvalidInput("topics", "malformed topic")
    try:
        return topics_by_slugs(slugs)
    except ValueError as exc:
        raise InvalidInput("topics", str(exc)) from exc


def validate_signup(email, *, topics, language, name="") -> tuple[str, list[Topic], str, str]:
    """(address, topics, language, name) checked and normalised, or InvalidInput."""
    return normalise_email(email), check_topics(topics), check_language(language), clean_name(name)
