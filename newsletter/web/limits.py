"""Bounds on what a client may send, for every blueprint: body sizes (413 before the body is
read), JSON nesting (a 400, never a RecursionError), and ids in URLs (404 past what a database
integer holds, never an overflow)."""

from __future__ import annotations

import json
from typing import Any

from flask import Flask, current_app, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.routing import IntegerConverter

MAX_JSON_DEPTH = 32  # nothing we accept nests deeper than a handful of levels
INTEGER_MAX = 2**31 - 1  # PostgreSQL's integer: a larger id cannot exist


class BoundedIntegerConverter(IntegerConverter):
    """`<int:…>` that matches 0 … 2**31-1 only: a larger number is a 404 like any unknown id."""

    def __init__(self, map, fixed_digits: int = 0, min: int | None = None,  # noqa: A002 - werkzeug's names
                 max: int | None = INTEGER_MAX, signed: bool = False) -> None:  # noqa: A002
        super().__init__(map, fixed_digits=fixed_digits, min=min, max=max, signed=signed)


def too_deep(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether parsed JSON nests deeper than `limit` (checked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def loads(data: str | bytes, **kwargs: Any) -> Any:
    """json.loads that raises ValueError (never RecursionError) for JSON nested too deeply."""
    try:
        value = json.loads(data, **kwargs)
    except RecursionError as exc:
        raise ValueError("the JSON is nested too deeply") from exc
    if too_deep(value):
        raise ValueError(f"the JSON is nested deeper than {MAX_JSON_DEPTH} levels")
    return value


class BoundedJSONProvider(DefaultJSONProvider):
    """request.get_json() with the nesting bound: too deep is the usual 400 (or None if silent)."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return loads(s, **kwargs)


def _body_limit() -> None:
    """The body limit of this request: the admin's import has its own, larger one; public pages
    a small one. (The API and the webhooks set theirs in their blueprints.)"""
    config = current_app.config
    if request.endpoint == "admin.subscribers_import":
        request.max_content_length = config["IMPORT_MAX_BYTES"]
    elif request.blueprint == "public":
        request.max_content_length = config["PUBLIC_MAX_BODY_BYTES"]


def init_app(app: Flask) -> None:
    """Install the bounds; before any blueprint is registered (the converter applies to routes
    as they are added)."""
    app.url_map.converters["int"] = BoundedIntegerConverter
    app.json = BoundedJSONProvider(app)
    app.before_request(_body_limit)
