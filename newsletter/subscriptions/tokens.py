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
    signup_event: int | None = None  # the signup (ConsentEvent id) whose choices a confirmation applies


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


def confirm_token(subscriber, signup_event: int | None = None) -> str:
    payload = [subscriber.uid, subscriber.generation]
    return make_token("confirm", payload if signup_event is None else [*payload, signup_event])


def unsubscribe_token(subscriber) -> str:
    return make_token("unsubscribe", subscriber.uid)


def preferences_token(subscriber) -> str:
    return make_token("preferences", subscriber.uid)


UID_MAX_LENGTH = 32  # Subscriber.uid
GENERATION_MAX = 2**31 - 1


def _uid(value) -> str:
    """A token's uid as we issue them; any other shape (signed, but not by this code) is the same
    TokenError as a tampered token."""
    if not isinstance(value, str) or not 0 < len(value) <= UID_MAX_LENGTH:
        raise TokenError("malformed token")
    return value


def read_confirm_token(token: str) -> TokenData:
    payload = read_token("confirm", token, max_age=current_app.config["CONFIRM_MAX_AGE"])
    if not (isinstance(payload, list) and len(payload) in (2, 3)):  # 2: links sent before signups had ids
        raise TokenError("malformed confirmation token")
    numbers = payload[1:]
    if any(type(n) is not int or not 0 <= n <= GENERATION_MAX for n in numbers):
        raise TokenError("malformed confirmation token")
    return TokenData(uid=_uid(payload[0]), generation=numbers[0],
                     signup_event=numbers[1] if len(numbers) == 2 else None)


def read_subscriber_token(purpose: str, token: str) -> TokenData:
    """Unsubscribe and preferences tokens: no expiry, links in old emails keep working."""
    return TokenData(uid=_uid(read_token(purpose, token)))


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


def confirm_url(subscriber, signup_event: int | None = None) -> str:
    return public_url(f"/confirm/{confirm_token(subscriber, signup_event)}")


def unsubscribe_url(subscriber) -> str:
    return public_url(f"/unsubscribe/{unsubscribe_token(subscriber)}")


def preferences_url(subscriber) -> str:
    return public_url(f"/preferences/{preferences_token(subscriber)}")
