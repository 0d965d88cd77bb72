"""Feeds: list them with their last poll, add one (checked by fetching it), change, pause, remove."""

from __future__ import annotations

from flask import jsonify, url_for

from newsletter.digests import feed_registry as feed_service
from newsletter.extensions import db
from newsletter.models import Feed
from newsletter.web.api import bp, schemas
from newsletter.web.api.audit import audit
from newsletter.web.api.errors import ApiError, get_or_404
from newsletter.web.api.serialise import iso
from newsletter.web.api.validation import json_body, query_params

FEED_ID = "<int(max=2147483647):feed_id>"


def feed_json(feed: Feed) -> dict:
    return {
        "id": feed.id,
        "url": feed.url,
        "title": feed.title,
        "topic": feed.topic.slug if feed.topic else None,
        "paused": feed.paused,
        "last_fetched_at": iso(feed.last_fetched_at),
        "last_status": feed.last_status or None,
        "last_error": feed.last_error,
        "created_at": iso(feed.created_at),
    }


def _feed_or_404(feed_id: int) -> Feed:
    return get_or_404(Feed, feed_id, "No feed with this id.")


def _refused(exc: feed_service.FeedRefused) -> ApiError:
    db.session.rollback()
    status = 409 if exc.reason in ("exists", "configured") else 422
    field = "topic" if exc.reason == "unknown-topic" else "url"
    return ApiError(status, f"feed_{exc.reason.replace('-', '_')}", str(exc)[:300], field=field)


@bp.get("/feeds")
def list_feeds():
    """Every feed with its last poll (FEED_URLS included)."""
    query_params([])
    return jsonify(data=[feed_json(feed) for feed in feed_service.all_feeds()], next_cursor=None)


@bp.post("/feeds")
def add_feed():
    """Add a feed once a fetch of it gave RSS or Atom: 201 (200 when it was registered already)."""
    query_params([])
    data = json_body(schemas.feed_create())
    try:
        added = feed_service.register_feed(data["url"], topic_slug=data.get("topic"))
    except feed_service.FeedRefused as exc:
        raise _refused(exc) from None
    feed = added.feed
    audit("api.feed.add", f"feed:{feed.id}", url=feed.url)
    headers = {"Location": url_for("api.get_feed", feed_id=feed.id)}
    return jsonify(feed_json(feed)), 200 if added.result is None else 201, headers


@bp.get(f"/feeds/{FEED_ID}")
def get_feed(feed_id: int):
    query_params([])
    return jsonify(feed_json(_feed_or_404(feed_id)))


@bp.patch(f"/feeds/{FEED_ID}")
def update_feed(feed_id: int):
    """Change a feed's URL (checked by fetching it), topic (null: by category) or pause it."""
    query_params([])
    data = json_body(schemas.feed_patch())
    feed = _feed_or_404(feed_id)
    try:
        feed_service.change_feed(feed, url=data.get("url"), topic_slug=data.get("topic"),
                                 by_category="topic" in data and data["topic"] is None)
    except feed_service.FeedRefused as exc:
        raise _refused(exc) from None
    if "paused" in data:
        feed_service.set_paused(feed, data["paused"])
    audit("api.feed.update", f"feed:{feed.id}", fields=sorted(data))
    return jsonify(feed_json(feed))


@bp.delete(f"/feeds/{FEED_ID}")
def delete_feed(feed_id: int):
    """Remove a feed; its articles stay."""
    query_params([])
    feed = _feed_or_404(feed_id)
    try:
        kept = feed_service.remove_feed(feed)
    except feed_service.FeedRefused as exc:
        raise _refused(exc) from None
    audit("api.feed.remove", f"feed:{feed_id}", articles_kept=kept)
    return "", 204
