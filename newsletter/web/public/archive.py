"""The public archive of sent digests: a list, each digest as a web page, and an Atom feed."""

from __future__ import annotations

from flask import Response, abort, current_app, render_template
from flask_babel import get_locale

from newsletter import digests
from newsletter.extensions import db
from newsletter.models import Digest
from newsletter.web.public import bp


def _locale() -> str:
    return str(get_locale() or current_app.config["DEFAULT_LOCALE"])


def _public_digest(digest_id: int) -> Digest:
    digest = db.session.get(Digest, digest_id)
    if digest is None or digest.status not in digests.PUBLIC_STATES:  # drafts are not public
        abort(404)
    return digest


@bp.get("/archive")
def archive_index():
    """Sent digests, newest first."""
    return render_template("public/archive.html", digests=digests.public_digests(), locale=_locale())


@bp.get("/archive/<int:digest_id>")
def archive_digest(digest_id: int):
    """One digest as a web page: the email's own rendering, without any personal link."""
    renderer = digests.DigestRenderer(_public_digest(digest_id))
    _subject, _text, html = renderer.render_public(_locale(), capped=False)  # every article
    response = Response(html, mimetype="text/html")
    # The page is the email: it needs no script at all, so forbid any.
    response.headers["Content-Security-Policy"] = "script-src 'none'; object-src 'none'; base-uri 'none'"
    return response


@bp.get("/archive/feed.xml")
def archive_feed():
    """An Atom feed of the archive, for feed readers."""
    items = digests.public_digests()[:20]
    body = render_template("public/archive_feed.xml", digests=items, locale=_locale(),
                           public_url=current_app.config["PUBLIC_URL"])
    return Response(body, mimetype="application/atom+xml")
