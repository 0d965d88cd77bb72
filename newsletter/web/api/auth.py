"""Bearer-token authentication and role checks for the API."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import wraps

from flask import current_app, g, request

from newsletter.admins import api_tokens
from newsletter.extensions import client_ip
from newsletter.models import ApiToken
from newsletter.web.api import bp
from newsletter.web.api.errors import ApiError

REALM = "newsletter-api"
PUBLIC_ENDPOINTS = {"api.openapi_document"}


def _challenge(error: str | None = None, description: str = "") -> dict:
    value = f'Bearer realm="{REALM}"'
    if error:
        value += f', error="{error}", error_description="{description}"'
    return {"WWW-Authenticate": value}


def _bearer() -> str | None:
    """The token of an `Authorization: Bearer …` header; None when there is none."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


@bp.before_request
def authenticate_request() -> None:
    """401 (with a WWW-Authenticate challenge) unless a live token is presented."""
    if request.endpoint in PUBLIC_ENDPOINTS:
        return
    if not request.headers.get("Authorization"):
        raise ApiError(401, "unauthorized", "An API token is required (Authorization: Bearer <token>).",
                       headers=_challenge())
    token = api_tokens.authenticate(_bearer())
    if token is None:
        raise ApiError(401, "invalid_token", "The API token is invalid or has been revoked.",
                       headers=_challenge("invalid_token", "The token is invalid or revoked"))
    g.api_token = token
    # Bodies are limited per request (Flask 3.1): an over-long body is a 413 when it is read.
    request.max_content_length = current_app.config["API_MAX_BODY_BYTES"]


def current_token() -> ApiToken:
    return g.api_token


def requires_role(role: str) -> Callable:
    """Only tokens of `role` may call the view ("editor" means either role): 403 otherwise."""

    def decorate(view: Callable) -> Callable:
        @wraps(view)
        def checked(*args, **kwargs):
            token = current_token()
            if role == "admin" and token.role != "admin":
                raise ApiError(403, "forbidden", "This token's role may not do this (admin role needed).",
                               headers=_challenge("insufficient_scope", "admin role needed"))
            return view(*args, **kwargs)

        return checked

    return decorate


def rate_limit() -> str:
    return current_app.config["API_RATE_LIMIT"]


def rate_limit_key() -> str:
    """Per token when one is presented (hashed: the plaintext never reaches the limiter's storage)."""
    header = request.headers.get("Authorization", "")
    if header:
        return "api-token:" + hashlib.sha256(header.encode("utf-8", "replace")).hexdigest()[:32]
    return "api-ip:" + client_ip()
