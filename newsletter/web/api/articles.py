"""Articles: a website pushes its posts (create or update, by source id or URL), and lists them."""

from __future__ import annotations

from flask import jsonify, url_for
from sqlalchemy import select

from newsletter import digests as article_service
from newsletter.extensions import db
from newsletter.models import Article, Topic
from newsletter.web.api import bp, schemas
from newsletter.web.api.audit import audit
from newsletter.web.api.errors import ApiError, get_or_404
from newsletter.web.api.pagination import page
from newsletter.web.api.serialise import article_json
from newsletter.web.api.validation import invalid, json_body, query_params

# The API's field names -> the names articles.py takes.
FIELD_NAMES = {"topic": "topic_slug", "published_at": "published"}


def _service_fields(data: dict) -> dict:
    return {FIELD_NAMES.get(name, name): value for name, value in data.items() if name != "source_id"}


def _article_or_404(article_id: int) -> Article:
    return get_or_404(Article, article_id, "No article with this id.")


def _rejected(exc: ValueError) -> ApiError:
    db.session.rollback()
    return invalid("", str(exc)[:300])


@bp.post("/articles")
def push_article():
    """Create an article, or update the one with the same source_id (or URL): 201 or 200."""
    query_params([])
    data = json_body(schemas.article_create())
    try:
        article, created = article_service.upsert_article(source_id=data.get("source_id"),
                                                          **_service_fields(data))
    except ValueError as exc:
        raise _rejected(exc) from None
    audit("api.article.create" if created else "api.article.update", f"article:{article.id}",
          source_id=article.source_id)
    headers = {"Location": url_for("api.get_article", article_id=article.id)}
    return jsonify(article_json(article)), 201 if created else 200, headers


@bp.get("/articles")
def list_articles():
    """Articles, newest first (by id)."""
    params = query_params(schemas.article_list_params())
    query = select(Article)
    if "topic" in params:
        query = query.join(Topic, Topic.id == Article.topic_id).where(Topic.slug == params["topic"])
    return page(query, Article.id, params, article_json, descending=True)


@bp.get("/articles/<int(max=2147483647):article_id>")
def get_article(article_id: int):
    query_params([])
    return jsonify(article_json(_article_or_404(article_id)))


@bp.patch("/articles/<int(max=2147483647):article_id>")
def update_article(article_id: int):
    """Change some fields of an article (sanitised like feed input)."""
    query_params([])
    data = json_body(schemas.article_patch())
    article = _article_or_404(article_id)
    try:
        article_service.update_article(article, **_service_fields(data))
    except ValueError as exc:
        raise _rejected(exc) from None
    audit("api.article.update", f"article:{article.id}", fields=sorted(data))
    return jsonify(article_json(article))
