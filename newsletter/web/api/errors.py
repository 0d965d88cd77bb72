"""JSON errors for everything under /api/: {"error": {"code", "message", "field"?}}.

Routing errors (404, 405) happen before Flask knows the blueprint, so blueprint
error handlers never see them; the handlers here are registered on the app and
answer in JSON only for paths under /api/, handing everything else on to the
handler that was there before (or to Flask's default page).
"""

from __future__ import annotations

import logging

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException, InternalServerError

log = logging.getLogger(__name__)

API_PREFIX = "/api/"
# Codes of Werkzeug's HTTP errors, as error codes in our JSON.
HTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 406: "not_acceptable", 409: "conflict", 411: "length_required",
    413: "payload_too_large", 414: "uri_too_long", 415: "unsupported_media_type",
    422: "invalid_input", 429: "rate_limited", 431: "headers_too_large", 500: "internal_error",
}
HANDLED_STATUSES = tuple(code for code in HTTP_CODES if code != 500)


class ApiError(Exception):
    """An error answer: `status`, a machine `code`, an English `message`, maybe a `field`."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = headers or {}


def get_or_404(model, key, message: str):
    """The row of `model` with this primary key, or an ApiError 404 with `message`."""
    from newsletter.extensions import db

    row = db.session.get(model, key)
    if row is None:
        raise ApiError(404, "not_found", message)
    return row


def error_response(status: int, code: str, message: str, field: str | None = None,
                   headers: dict | None = None):
    body: dict = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    response = jsonify(error=body)
    response.status_code = status
    response.headers.update(headers or {})
    return response


def in_api() -> bool:
    return request.path.startswith(API_PREFIX) or request.path == API_PREFIX.rstrip("/")


def _from_http_exception(exc: HTTPException):
    status = exc.code or 500
    headers = {}
    if status == 405 and getattr(exc, "valid_methods", None):
        headers["Allow"] = ", ".join(exc.valid_methods)
    if status == 429:
        message = "Too many requests: slow down and retry later."
        response = exc.get_response()
        if response.headers.get("Retry-After"):
            headers["Retry-After"] = response.headers["Retry-After"]
    else:
        message = exc.description or exc.name
    return error_response(status, HTTP_CODES.get(status, "http_error"), message, headers=headers)


def register_error_handlers(app: Flask) -> None:
    """JSON errors under /api/; other paths keep whatever handler they had."""
    previous_by_status = {
        status: app.error_handler_spec[None][status].get(_exception_class(status))
        for status in HANDLED_STATUSES
    }
    previous_generic = app.error_handler_spec[None][None].get(HTTPException)

    def make_handler(previous):
        def handle(exc: HTTPException):
            if in_api():
                return _from_http_exception(exc)
            if previous is not None:
                return previous(exc)
            return exc
        return handle

    for status in HANDLED_STATUSES:
        if _exception_class(status) is not None:
            app.register_error_handler(status, make_handler(previous_by_status[status]))
    app.register_error_handler(HTTPException, make_handler(previous_generic))
    app.register_error_handler(ApiError, lambda exc: error_response(
        exc.status, exc.code, exc.message, exc.field, exc.headers))
    previous_500 = app.error_handler_spec[None][500].get(InternalServerError)

    def server_error(exc):
        if in_api():
            return error_response(500, "internal_error", "Something went wrong on our side.")
        if previous_500 is not None:
            return previous_500(exc)
        return exc

    app.register_error_handler(500, server_error)


def _exception_class(status: int):
    from werkzeug.exceptions import default_exceptions

    return default_exceptions.get(status)
