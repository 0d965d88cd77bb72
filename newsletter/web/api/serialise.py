"""Model rows as the JSON objects of the API (the shapes in schemas.component_schemas)."""

from __future__ import annotations

from datetime import datetime

from newsletter.models import Article, Digest, Subscriber
from newsletter.subscriptions.data import iso, subscriber_profile


def subscriber_json(subscriber: Subscriber) -> dict:
    return {"uid": subscriber.uid, **subscriber_profile(subscriber)}


def article_json(article: Article) -> dict:
    return {
        "id": article.id,
        "source_id": article.source_id,
        "title": article.title,
        "url": article.url,
        "summary": article.summary,
        "body_html": article.body_html,
        "author": article.author,
        "image_url": article.image_url,
        "image_alt": article.image_alt,
        "topic": article.topic.slug if article.topic else None,
        "published_at": iso(article.published_at),
        "collected_at": iso(article.collected_at),
        "updated_at": iso(article.updated_at),
        "hidden": article.hidden,
        "feed_id": article.feed_id,
    }


def digest_json(digest: Digest) -> dict:
    return {
        "id": digest.id,
        "status": digest.status,
        "period": digest.period,
        "subject_sv": digest.subject_sv,
        "subject_en": digest.subject_en,
        "intro": digest.intro,
        "intro_en": digest.intro_en,
        "created_at": iso(digest.created_at),
        "compiled_for": iso(digest.compiled_for),
        "started_at": iso(digest.started_at),
        "finished_at": iso(digest.finished_at),
        "recipient_count": digest.recipient_count,
        "article_count": len(digest.articles),
        "error": digest.error,
    }


def progress_json(progress: dict) -> dict:
    """send_progress's dict, with datetimes as ISO strings."""
    return {key: iso(value) if isinstance(value, datetime) else value for key, value in progress.items()}
