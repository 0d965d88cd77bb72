"""The OpenAPI 3.1 document of the API, built from the same schemas the API checks requests with."""

from __future__ import annotations

from flask import current_app, jsonify

from newsletter.web.api import bp, schemas

ERROR_DESCRIPTIONS = {
    400: "Malformed request (bad JSON, bad query parameter)",
    401: "Missing, invalid or revoked token",
    403: "The token's role may not do this",
    404: "No such resource",
    405: "Method not allowed",
    409: "Conflict with the current state",
    413: "Request body too large",
    415: "Body is not application/json",
    422: "Invalid field (wrong type, unknown field, bad value)",
    429: "Rate limit exceeded",
}
# The errors any authenticated operation may answer with.
COMMON_ERRORS = (400, 401, 404, 405, 429)
BODY_ERRORS = (413, 415, 422)


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str) -> dict:
    return {"content": {"application/json": {"schema": _ref(name)}}}


def _operation(operation_id: str, summary: str, ok: dict, *, params: list | None = None,
               body: str | None = None, body_required: bool = True, errors: tuple = (),
               tag: str) -> dict:
    responses = dict(ok)
    codes = set(COMMON_ERRORS) | set(errors) | (set(BODY_ERRORS) if body else set())
    for code in sorted(codes):
        response = {"description": ERROR_DESCRIPTIONS[code], **_json("Error")}
        if code == 401:
            response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}}
        responses[str(code)] = response
    operation: dict = {"operationId": operation_id, "summary": summary, "tags": [tag],
                       "responses": responses}
    if params:
        operation["parameters"] = params
    if body:
        operation["requestBody"] = {"required": body_required, **_json(body)}
    return operation


def _path_param(name: str, schema: dict) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": schema}


UID = _path_param("uid", {"type": "string", "pattern": "^[0-9a-f]{24,32}$"})
ARTICLE_ID = _path_param("article_id", {"type": "integer", "minimum": 0, "maximum": 2147483647})
FEED_ID = _path_param("feed_id", {"type": "integer", "minimum": 0, "maximum": 2147483647})
DIGEST_ID = _path_param("digest_id", {"type": "integer", "minimum": 0, "maximum": 2147483647})


def _paths() -> dict:
    ok = lambda code, description, schema=None: {  # noqa: E731
        str(code): {"description": description, **(_json(schema) if schema else {})}}
    digest_actions = {
        f"/digests/{{digest_id}}/{action}": {"post": _operation(
            f"{action}Digest", f"{action.capitalize()} the send of a digest",
            ok(200, "The digest after the change", "DigestDetail"), params=[DIGEST_ID], errors=(409,),
            tag="digests")}
        for action in ("pause", "resume", "cancel")
    }
    return {
        "/subscribers": {
            "post": _operation(
                "createSubscriber",
                "Ask for a subscription (double opt-in: a confirmation email goes out; "
                "the same answer whatever the address's state, except 409 `suppressed` for an address "
                "that unsubscribed, bounced, complained or was erased)",
                ok(202, "Accepted", "Accepted"), body="SubscriberCreate", errors=(409,), tag="subscribers"),
            "get": _operation(
                "listSubscribers", "List subscribers (by id; filter by status, topic, language)",
                ok(200, "A page of subscribers", "SubscriberList"),
                params=schemas.subscriber_list_params(), tag="subscribers"),
        },
        "/subscribers/export": {"get": _operation(
            "exportSubscribers", "All subscribers as CSV (admin role)",
            {"200": {"description": "CSV", "content": {"text/csv": {"schema": {"type": "string"}}}}},
            params=schemas.subscriber_list_params()[2:4], errors=(403,), tag="subscribers")},
        "/subscribers/{uid}": {
            "get": _operation("getSubscriber", "One subscriber", ok(200, "The subscriber", "Subscriber"),
                              params=[UID], tag="subscribers"),
            "patch": _operation("updateSubscriber", "Change topics and/or language",
                                ok(200, "The subscriber after the change", "Subscriber"), params=[UID],
                                body="SubscriberPatch", tag="subscribers"),
            "delete": _operation("eraseSubscriber", "Erase a subscriber and their data (admin role)",
                                 ok(204, "Erased"), params=[UID], errors=(403,), tag="subscribers"),
        },
        "/articles": {
            "post": _operation(
                "pushArticle", "Create an article, or update the one with this source_id (else URL)",
                {**ok(201, "Created", "Article"), **ok(200, "Updated", "Article")},
                body="ArticleCreate", tag="articles"),
            "get": _operation("listArticles", "List articles, newest first",
                              ok(200, "A page of articles", "ArticleList"),
                              params=schemas.article_list_params(), tag="articles"),
        },
        "/articles/{article_id}": {
            "get": _operation("getArticle", "One article", ok(200, "The article", "Article"),
                              params=[ARTICLE_ID], tag="articles"),
            "patch": _operation("updateArticle", "Change fields of an article",
                                ok(200, "The article after the change", "Article"), params=[ARTICLE_ID],
                                body="ArticlePatch", tag="articles"),
        },
        "/feeds": {
            "get": _operation("listFeeds", "Every feed with its last poll", ok(200, "All feeds", "FeedList"),
                              tag="feeds"),
            "post": _operation(
                "addFeed", "Add a feed, checked by fetching it (refused: not reachable, not RSS/Atom)",
                {**ok(201, "Added (its articles are stored)", "Feed"),
                 **ok(200, "Registered already (the topic given is set)", "Feed")},
                body="FeedCreate", tag="feeds"),
        },
        "/feeds/{feed_id}": {
            "get": _operation("getFeed", "One feed", ok(200, "The feed", "Feed"), params=[FEED_ID],
                              tag="feeds"),
            "patch": _operation("updateFeed",
                                "Change a feed's URL (checked by fetching it), topic, or pause it",
                                ok(200, "The feed after the change", "Feed"), params=[FEED_ID],
                                body="FeedPatch", errors=(409,), tag="feeds"),
            "delete": _operation("removeFeed", "Remove a feed (its articles stay)", ok(204, "Removed"),
                                 params=[FEED_ID], errors=(409,), tag="feeds"),
        },
        "/digests": {
            "get": _operation("listDigests", "List digests, newest first",
                              ok(200, "A page of digests", "DigestList"),
                              params=schemas.digest_list_params(), tag="digests"),
            "post": _operation(
                "sendDigest", "Compile the coming digest and start sending it",
                {**ok(202, "Compiled; the send runs in the background", "DigestDetail"),
                 **ok(204, "Nothing new: no digest")},
                body="DigestTrigger", body_required=False, errors=(409,), tag="digests"),
        },
        "/digests/preview": {"get": _operation(
            "previewDigest", "The coming digest (subject, text, HTML) without personal links",
            {**ok(200, "The coming digest", "Preview"), **ok(204, "Nothing new")},
            params=schemas.preview_params(), tag="digests")},
        "/digests/{digest_id}": {"get": _operation(
            "getDigest", "A digest and the progress of its send", ok(200, "The digest", "DigestDetail"),
            params=[DIGEST_ID], tag="digests")},
        **digest_actions,
    }


def build_document() -> dict:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"{current_app.config.get('SITE_NAME') or 'Newsletter'} API",
            "version": "1.0.0",
            "description": (
                "Subscribers, articles, feeds and digests of the newsletter service. Authenticate with a "
                "token created in the admin dashboard: `Authorization: Bearer <token>`. Tokens have "
                "the role admin or editor; editors cannot erase or export subscribers. Every error "
                'is JSON: `{"error": {"code": …, "message": …, "field": …}}`.'),
        },
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearerAuth": []}],
        "tags": [{"name": "subscribers"}, {"name": "articles"}, {"name": "feeds"}, {"name": "digests"}],
        "paths": _paths(),
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "An API token from the admin dashboard"}},
            "schemas": schemas.component_schemas(),
        },
    }


@bp.get("/openapi.json")
def openapi_document():
    """The OpenAPI document (public: it holds no data)."""
    return jsonify(build_document())
