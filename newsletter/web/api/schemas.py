"""The JSON Schemas of the API: what requests must look like and what responses look like.

One source for both the checks (validation.py) and the published OpenAPI document
(openapi.py). Topic slugs and languages come from the settings, so the schemas are
built per app by `component_schemas()`.
"""

from __future__ import annotations

from flask import current_app

from newsletter.models import DIGEST_STATES, SUBSCRIBER_STATES

MAX_LIMIT = 200
DEFAULT_LIMIT = 50

NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
TIME = {"type": "string", "format": "date-time"}
HTTP_URL = {"type": "string", "minLength": 1, "maxLength": 1000, "pattern": "^https?://[^\\s]+$",
            "description": "An absolute http(s) URL."}


def topic_slugs() -> list[str]:
    return [item.partition("=")[0].strip() for item in current_app.config["TOPICS"]]


def languages() -> list[str]:
    return list(current_app.config["LANGUAGES"])


def _topics_schema() -> dict:
    slugs = topic_slugs()
    return {"type": "array", "items": {"type": "string", "enum": slugs}, "uniqueItems": True,
            "maxItems": max(len(slugs), 1),
            "description": "Topic slugs; an empty list means all topics."}


def subscriber_create() -> dict:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["email"],
        "properties": {
            "email": {"type": "string", "minLength": 1, "maxLength": 254, "format": "email"},
            "name": {"type": "string", "maxLength": 200},
            "language": {"type": "string", "enum": languages()},
            "topics": _topics_schema(),
        },
    }


def subscriber_patch() -> dict:
    return {
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "properties": {"language": {"type": "string", "enum": languages()}, "topics": _topics_schema()},
    }


def _article_fields() -> dict:
    return {
        "source_id": {"type": "string", "minLength": 1, "maxLength": 1000,
                      "description": "Your stable id of the post (a GUID); defaults to the URL."},
        "title": {"type": "string", "minLength": 1, "maxLength": 2000,
                  "description": "Plain text; HTML tags are stripped."},
        "url": HTTP_URL,
        "summary": {"type": "string", "maxLength": 20000, "description": "Plain text; tags stripped."},
        "body_html": {"type": "string", "maxLength": 200000,
                      "description": "HTML, sanitised (no scripts, http(s)/mailto links only)."},
        "author": {"type": "string", "maxLength": 500},
        "image_url": {"type": "string", "maxLength": 1000,
                      "description": "An http(s) URL; anything else is dropped."},
        "image_alt": {"type": "string", "maxLength": 1000},
        "topic": {"type": ["string", "null"], "enum": [*topic_slugs(), None]},
        "published_at": TIME,
        "hidden": {"type": "boolean", "description": "Leave it out of the coming digest."},
    }


def article_create() -> dict:
    return {"type": "object", "additionalProperties": False, "required": ["title", "url"],
            "properties": _article_fields()}


def article_patch() -> dict:
    fields = _article_fields()
    del fields["source_id"]
    return {"type": "object", "additionalProperties": False, "minProperties": 1, "properties": fields}


def _feed_fields() -> dict:
    return {
        "url": HTTP_URL,
        "topic": {"type": ["string", "null"], "enum": [*topic_slugs(), None],
                  "description": "Every article of the feed goes to this topic; null: by its categories."},
        "paused": {"type": "boolean", "description": "A paused feed is not polled; its articles stay."},
    }


def feed_create() -> dict:
    fields = _feed_fields()
    del fields["paused"]
    return {"type": "object", "additionalProperties": False, "required": ["url"], "properties": fields}


def feed_patch() -> dict:
    return {"type": "object", "additionalProperties": False, "minProperties": 1,
            "properties": _feed_fields()}


def digest_trigger() -> dict:
    return {"type": "object", "additionalProperties": False,
            "properties": {
                "intro": {"type": "string", "maxLength": 10000,
                          "description": "The editor's intro for Swedish readers, plain text, on top."},
                "intro_en": {"type": "string", "maxLength": 10000,
                             "description": "The intro for English readers (none when empty)."}}}


def component_schemas() -> dict:
    """Every schema of the document's components section."""
    progress_counts = {name: {"type": "integer", "minimum": 0}
                       for name in ("queued", "sending", "sent", "failed", "bounced", "skipped", "total")}
    digest_properties = {
        "id": {"type": "integer"},
        "status": {"type": "string", "enum": list(DIGEST_STATES)},
        "period": {"type": ["string", "null"]},
        "subject_sv": {"type": "string"},
        "subject_en": {"type": "string"},
        "intro": {"type": "string"},
        "intro_en": {"type": "string"},
        "created_at": TIME,
        "compiled_for": TIME,
        "started_at": NULLABLE_TIME,
        "finished_at": NULLABLE_TIME,
        "recipient_count": {"type": "integer", "minimum": 0},
        "article_count": {"type": "integer", "minimum": 0},
        "error": {"type": "string"},
    }
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {
                "type": "object", "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                               "field": {"type": "string"}},
            }},
        },
        "SubscriberCreate": subscriber_create(),
        "SubscriberPatch": subscriber_patch(),
        "Accepted": {
            "type": "object", "required": ["status", "message"],
            "properties": {"status": {"type": "string", "const": "accepted"}, "message": {"type": "string"}},
        },
        "Subscriber": {
            "type": "object",
            "required": ["uid", "email", "name", "status", "language", "topics", "follows_all_topics",
                         "created_at", "confirmed_at", "unsubscribed_at"],
            "properties": {
                "uid": {"type": "string"},
                "email": {"type": "string"},
                "name": {"type": "string"},
                "status": {"type": "string", "enum": list(SUBSCRIBER_STATES)},
                "language": {"type": "string"},
                "topics": {"type": "array", "items": {"type": "string"}},
                "follows_all_topics": {"type": "boolean"},
                "created_at": TIME,
                "confirmed_at": NULLABLE_TIME,
                "unsubscribed_at": NULLABLE_TIME,
            },
        },
        "SubscriberList": _list_of("Subscriber"),
        "ArticleCreate": article_create(),
        "ArticlePatch": article_patch(),
        "Article": {
            "type": "object",
            "required": ["id", "source_id", "title", "url", "summary", "body_html", "author", "image_url",
                         "image_alt", "topic", "published_at", "collected_at", "updated_at", "hidden",
                         "feed_id"],
            "properties": {
                "id": {"type": "integer"},
                "source_id": {"type": "string"},
                "title": {"type": "string"},
                "url": {"type": "string"},
                "summary": {"type": "string"},
                "body_html": {"type": "string"},
                "author": {"type": "string"},
                "image_url": {"type": "string"},
                "image_alt": {"type": "string"},
                "topic": {"type": ["string", "null"]},
                "published_at": TIME,
                "collected_at": TIME,
                "updated_at": TIME,
                "hidden": {"type": "boolean"},
                "feed_id": {"type": ["integer", "null"]},
            },
        },
        "ArticleList": _list_of("Article"),
        "FeedCreate": feed_create(),
        "FeedPatch": feed_patch(),
        "Feed": {
            "type": "object",
            "required": ["id", "url", "title", "topic", "paused", "last_fetched_at", "last_status",
                         "last_error", "created_at"],
            "properties": {
                "id": {"type": "integer"},
                "url": {"type": "string"},
                "title": {"type": "string"},
                "topic": {"type": ["string", "null"]},
                "paused": {"type": "boolean"},
                "last_fetched_at": NULLABLE_TIME,
                "last_status": {"type": ["string", "null"], "enum": ["ok", "not-modified", "error", None]},
                "last_error": {"type": "string"},
                "created_at": TIME,
            },
        },
        "FeedList": _list_of("Feed"),
        "DigestTrigger": digest_trigger(),
        "Digest": {"type": "object", "required": list(digest_properties), "properties": digest_properties},
        "DigestList": _list_of("Digest"),
        "Progress": {
            "type": "object",
            "required": list(progress_counts),
            "properties": {
                **progress_counts,
                "status": {"type": "string"},
                "rate": {"type": ["number", "null"], "description": "Messages per second."},
                "eta_seconds": {"type": ["integer", "null"]},
                "complaints": {"type": "integer", "minimum": 0,
                               "description": "Complaints from people this send was their latest."},
                "unsubscribes": {"type": "integer", "minimum": 0,
                                 "description": "Unsubscribes from the links of this send's emails."},
                "clicks": {"type": "object", "additionalProperties": {"type": "integer"},
                           "description": "Clicks per article id (only with STATS_CLICKS)."},
                "started_at": NULLABLE_TIME,
                "finished_at": NULLABLE_TIME,
            },
        },
        "DigestDetail": {
            "allOf": [{"$ref": "#/components/schemas/Digest"}, {
                "type": "object", "required": ["progress"],
                "properties": {"progress": {"$ref": "#/components/schemas/Progress"}},
            }],
        },
        "Preview": {
            "type": "object", "required": ["language", "subject", "text", "html", "article_count"],
            "properties": {"language": {"type": "string"}, "subject": {"type": "string"},
                           "text": {"type": "string"}, "html": {"type": "string"},
                           "article_count": {"type": "integer", "minimum": 1}},
        },
    }


def _list_of(name: str) -> dict:
    return {
        "type": "object", "required": ["data", "next_cursor"],
        "properties": {
            "data": {"type": "array", "items": {"$ref": f"#/components/schemas/{name}"}},
            "next_cursor": {"type": ["string", "null"],
                            "description": "Pass as `cursor` for the next page; null on the last page."},
        },
    }


def limit_param() -> dict:
    return {"name": "limit", "in": "query", "required": False,
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}}


def cursor_param() -> dict:
    return {"name": "cursor", "in": "query", "required": False,
            "description": "Opaque: the `next_cursor` of the previous page.",
            "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"}}


def subscriber_list_params() -> list[dict]:
    return [
        limit_param(), cursor_param(),
        {"name": "status", "in": "query", "required": False,
         "schema": {"type": "string", "enum": list(SUBSCRIBER_STATES)}},
        {"name": "topic", "in": "query", "required": False,
         "description": "Those who get this topic: who chose it, and who follow every topic (chose none).",
         "schema": {"type": "string", "enum": topic_slugs()}},
        {"name": "language", "in": "query", "required": False,
         "schema": {"type": "string", "enum": languages()}},
    ]


def article_list_params() -> list[dict]:
    return [limit_param(), cursor_param(),
            {"name": "topic", "in": "query", "required": False,
             "schema": {"type": "string", "enum": topic_slugs()}}]


def digest_list_params() -> list[dict]:
    return [limit_param(), cursor_param()]


def preview_params() -> list[dict]:
    return [{"name": "lang", "in": "query", "required": False,
             "schema": {"type": "string", "enum": languages()}}]
