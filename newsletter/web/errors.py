"""Error pages of the whole site: ours, styled and in the reader's language, public or admin.

Registered on the app before the blueprints, so the API's JSON errors (which wrap whatever
handler was there before them) and each blueprint's own handlers keep precedence.
"""

from __future__ import annotations

import logging

from flask import Flask, render_template, request
from flask_babel import gettext as _
from werkzeug.exceptions import HTTPException, InternalServerError

from newsletter.extensions import db

log = logging.getLogger(__name__)

PAGE_STATUSES = (400, 403, 404, 405, 410, 413, 429, 500)


def _texts(status: int) -> tuple[str, str]:
    """(title, message) of an error page, in the request's language."""
    return {
        400: (_("Bad request"), _("The request could not be understood. Nothing was changed.")),
        403: (_("Not allowed"), _("You are not allowed to see this page.")),
        404: (_("Page not found"),
              _("There is nothing at this address. Check the link, or start from the front page.")),
        405: (_("This page cannot be used that way"),
              _("The page was asked for in a way it does not answer. Go back and use its buttons.")),
        410: (_("No longer here"), _("What was at this address has been removed.")),
        413: (_("Too large"), _("What was sent is too large. Try a smaller file.")),
        429: (_("Too many attempts"), _("Too many attempts. Wait a while and try again.")),
    }.get(status, (_("Something went wrong"),
                   _("Something went wrong on our side; nothing you did caused it. Try again in a moment.")))


def error_page(status: int):
    """The styled page for `status`: the admin's layout under /admin, the public one elsewhere."""
    title, message = _texts(status)
    if request.path == "/admin" or request.path.startswith("/admin/"):
        return render_template("admin/error.html", title=title, message=message), status
    return render_template("public/error.html", title=title, message=message, home=True), status


def _http_error(exc: HTTPException):
    response = error_page(exc.code or 500)
    if exc.code == 405 and getattr(exc, "valid_methods", None):
        return response[0], response[1], {"Allow": ", ".join(exc.valid_methods)}
    return response


def _server_error(exc: InternalServerError):
    db.session.rollback()  # the page must render even when the failure left a broken transaction
    return error_page(500)


def register_error_pages(app: Flask) -> None:
    for status in PAGE_STATUSES:
        if status != 500:
            app.register_error_handler(status, _http_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(InternalServerError, _server_error)
