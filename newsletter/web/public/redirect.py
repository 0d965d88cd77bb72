"""GET /r/<token>: the counted link of an article in a digest (only with STATS_CLICKS)."""

from __future__ import annotations

from flask import abort, redirect

from newsletter.digests import clicks
from newsletter.web.public import bp


@bp.get("/r/<token>")
def click(token: str):
    """Count one click on the article (no reader identifier anywhere) and go to it."""
    url = clicks.record_click(token)
    if url is None:
        abort(404)
    response = redirect(url, code=302)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
