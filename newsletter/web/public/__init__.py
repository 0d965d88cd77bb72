"""Public pages: subscribe, confirm, unsubscribe, preferences, archive, health."""

from flask import Blueprint

bp = Blueprint("public", __name__)

from newsletter.web.public import archive, privacy, redirect, routes  # noqa: E402,F401  (registers the views on bp)
