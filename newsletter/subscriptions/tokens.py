"""Signed tokens for the links in emails: one itsdangerous salt per purpose.

A token carries the subscriber's random `uid` (never the row id) and, for
confirmation, the subscriber's `generation`, so a link issued before an
unsubscribe can never subscribe them again.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app
from itsdangerous import BadData, SignatureExpired, URLSafeTimedSerializer

from newsletter.engine.links import serializer


class TokenError(Exception):
    """A token that is tampered with, for another purpose, or malformed."""


class TokenExpired(TokenError):
    """A token whose signature is fine but that is older than its max age."""


@dataclass(frozen=True)
class TokenData:
    uid: str
    generation: int = 0


def _serializer(purpose: str) -> URLSafeTimedSerializer:
    return serializer(current_app.config["SECRET_KEY"], purpose)


def make_token(purpose: str, payload) -> str:
    return _serializer(purpose).dumps(payload)


def read_token(purpose: str, token: str, max_age: int | None = None):
    """The payload of a valid token; TokenExpired or TokenError otherwise."""
    try:
        return _serializer(purpose).loads(token, max_age=max_age)
    except SignatureExpired as exc:
        raise TokenExpired(str(exc)) from exc
    except BadData as exc:
        raise TokenError(str(exc)) from exc


def confirm_token(subscriber) -> str:
    return make_token("confirm", [subscriber.uid, subscriber.generation])


def unsubscribe_token(subscriber) -> str:
    return make_token("unsubscribe", subscriber.uid)


def preferences_token(subscriber) -> str:
    return make_token("preferences", subscriber.uid)


def read_confirm_token(token: str) -> TokenData:
    payload = read_token("confirm", token, max_age=current_app.config["CONFIRM_MAX_AGE"])
    if not (isinstance(payload, list) and len(payload) == 2):
        raise TokenError("malformed confirmation token")
    return TokenData(uid=str(payload[0]), generation=int(payload[1]))


def read_subscriber_token(purpose: str, token: str) -> TokenData:
    """Unsubscribe and preferences tokens: no expiry, links in old emails keep working."""
    payload = read_token(purpose, token)
    if not isinstance(payload, str):
        raise TokenError("malformed token")
    return TokenData(uid=payload)


# The uid in the links of a test message: real uids are random and never this value.
TEST_UID = "test-message"


def test_link_url(purpose: str) -> str:
    """A link of a test message: the real link's shape, leading to a page that says it was a test."""
    return public_url(f"/{purpose}/{make_token(purpose, TEST_UID)}")


def is_test_link(purpose: str, token: str) -> bool:
    try:
        return read_token(purpose, token) == TEST_UID
    except TokenError:
        return False


def public_url(path: str) -> str:
    return current_app.config["PUBLIC_URL"] + path


def confirm_url(subscriber) -> str:
    return public_url(f"/confirm/{confirm_token(subscriber)}")


def unsubscribe_url(subscriber) -> str:
    return public_url(f"/unsubscribe/{unsubscribe_token(subscriber)}")


def preferences_url(subscriber) -> str:
    return public_url(f"/preferences/{preferences_token(subscriber)}")
