"""API bearer tokens: created by an admin, shown once, stored as a SHA-256 hash, revocable.

A token is 32 random bytes (URL-safe base64) behind a short prefix that says what it is
("nlt_"), so one pasted into a chat or a repository is recognisable. Only its hash is
stored: a leaked database does not leak usable tokens. SHA-256 and not a slow hash,
because the token is random and long; it cannot be guessed from its hash.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from sqlalchemy import select

from newsletter.engine.clock import utcnow
from newsletter.extensions import db
from newsletter.models import ADMIN_ROLES, ApiToken

TOKEN_PREFIX = "nlt_"
MAX_NAME_LENGTH = 200
# last_used_at is written at most this often per token: no write on every API call.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_token(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def create_token(name: str, role: str, created_by: int | None = None) -> tuple[ApiToken, str]:
    """A new token (committed) and its plaintext, which is never stored and shown only now."""
    name = " ".join((name or "").split())
    if not name:
        raise ValueError("the token needs a name")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError("the name is too long")
    if role not in ADMIN_ROLES:
        raise ValueError(f"unknown role {role!r}")
    plaintext = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(name=name, role=role, token_hash=hash_token(plaintext), created_by_id=created_by)
    db.session.add(token)
    db.session.flush()
    return token, plaintext


def revoke_token(token_id: int) -> ApiToken | None:
    """Revoke a token (idempotent); None when there is no such token."""
    token = db.session.get(ApiToken, token_id)
    if token is None:
        return None
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        db.session.flush()
    return token


def authenticate(bearer: str | None) -> ApiToken | None:
    """The live token whose plaintext is `bearer`, with last_used_at updated; else None."""
    if not bearer or not bearer.startswith(TOKEN_PREFIX) or len(bearer) > 200:
        return None
    digest = hash_token(bearer)
    token = db.session.execute(select(ApiToken).where(ApiToken.token_hash == digest)).scalar_one_or_none()
    # The lookup is by hash, so timing says nothing about the plaintext; compare anyway, cheaply.
    if token is None or not hmac.compare_digest(token.token_hash, digest) or token.revoked_at is not None:
        return None
    now = utcnow()
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION:
        token.last_used_at = now
        db.session.flush()
    return token


def list_tokens() -> list[ApiToken]:
    """Every token, live ones first, newest first."""
    return list(db.session.execute(
        select(ApiToken).order_by(ApiToken.revoked_at.is_not(None), ApiToken.id.desc())
    ).scalars())
