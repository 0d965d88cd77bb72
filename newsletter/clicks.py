"""Clicks per article without tracking anyone (STATS_CLICKS): a signed redirect and a counter.

A digest's article link becomes PUBLIC_URL/r/<token>, where the token signs only
(send, article): every reader of a variant gets the very same link, so a click says
which article of which send was opened, never by whom. The redirect adds one to the
(send, article) counter and stores nothing else (no IP, no time, no cookie). With
STATS_CLICKS off, links go straight to the articles and /r/ is never in an email.
"""

from __future__ import annotations

from flask import current_app
from itsdangerous import BadSignature, URLSafeSerializer

from . import send_totals
from .extensions import db
from .models import Article, Digest

SALT = "newsletter.click"


def _serializer() -> URLSafeSerializer:
    return URLSafeSerializer(current_app.config["SECRET_KEY"], salt=SALT)


def enabled() -> bool:
    return bool(current_app.config.get("STATS_CLICKS"))


def click_url(digest_id: int, article_id: int) -> str:
    """The counted link of one article in one send: the same for every reader."""
    return f"{current_app.config['PUBLIC_URL']}/r/{_serializer().dumps([digest_id, article_id])}"


def record_click(token: str) -> str | None:
    """Count the click and return the article's address, or None for a bad or stale token."""
    try:
        digest_id, article_id = _serializer().loads(token)
    except (BadSignature, ValueError, TypeError):
        return None
    article = db.session.get(Article, article_id) if isinstance(article_id, int) else None
    if article is None or not isinstance(digest_id, int) or db.session.get(Digest, digest_id) is None:
        return article.url if article is not None else None
    if enabled():
        send_totals.count_click(digest_id, article_id)
        db.session.commit()
    return article.url
