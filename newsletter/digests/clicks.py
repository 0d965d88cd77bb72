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
from sqlalchemy import select

from newsletter.extensions import db
from newsletter.models import Article, ArticleClick, Digest

SALT = "newsletter.click"


def _serializer() -> URLSafeSerializer:
    return URLSafeSerializer(current_app.config["SECRET_KEY"], salt=SALT)


def enabled() -> bool:
    return bool(current_app.config.get("STATS_CLICKS"))


def click_url(digest_id: int, article_id: int) -> str:
    """The counted link of one article in one send: the same for every reader."""
    return f"{current_app.config['PUBLIC_URL']}/r/{_serializer().dumps([digest_id, article_id])}"


def _count(digest_id: int, article_id: int) -> None:
    if db.session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    statement = insert(ArticleClick).values(digest_id=digest_id, article_id=article_id, clicks=1)
    db.session.execute(statement.on_conflict_do_update(
        index_elements=["digest_id", "article_id"], set_={"clicks": ArticleClick.clicks + 1}))


def record_click(token: str) -> str | None:
    """Count the click (with STATS_CLICKS) and return the article's address; None for a bad token."""
    try:
        digest_id, article_id = _serializer().loads(token)
    except (BadSignature, ValueError, TypeError):
        return None
    article = db.session.get(Article, article_id) if isinstance(article_id, int) else None
    if article is None:
        return None
    if enabled() and isinstance(digest_id, int) and db.session.get(Digest, digest_id) is not None:
        _count(digest_id, article_id)  # committed with the request
    return article.url


def clicks(digest_id: int) -> dict[int, int]:
    """Clicks per article id of one send."""
    rows = db.session.execute(
        select(ArticleClick.article_id, ArticleClick.clicks).where(ArticleClick.digest_id == digest_id))
    return {article_id: n for article_id, n in rows}
