"""Digests: list, preview the coming one, trigger a send, watch its progress, pause/resume/cancel."""

from __future__ import annotations

from flask import current_app, jsonify, request, url_for
from sqlalchemy import select

from newsletter import delivery
from newsletter import digests as digest_service
from newsletter.digests import clicks
from newsletter.engine.clock import utcnow
from newsletter.extensions import db
from newsletter.models import Digest
from newsletter.web.api import bp, schemas
from newsletter.web.api.audit import audit
from newsletter.web.api.errors import ApiError, get_or_404
from newsletter.web.api.pagination import page
from newsletter.web.api.serialise import digest_json, progress_json
from newsletter.web.api.validation import json_body, query_params

DIGEST_ID = "<int(max=2147483647):digest_id>"
RUNNING_STATES = ("sending",)
ACTIONS = {"pause": delivery.pause_send, "resume": delivery.resume_send, "cancel": delivery.cancel_send}


def _digest_or_404(digest_id: int) -> Digest:
    return get_or_404(Digest, digest_id, "No digest with this id.")


def _detail(digest: Digest) -> dict:
    progress = progress_json(delivery.send_progress(digest.id))
    progress["clicks"] = {str(article_id): n for article_id, n in clicks.clicks(digest.id).items()}
    return {**digest_json(digest), "progress": progress}


@bp.get("/digests")
def list_digests():
    """Digests, newest first."""
    return page(select(Digest), Digest.id, query_params(schemas.digest_list_params()), digest_json,
                descending=True)


@bp.get("/digests/preview")
def preview_digest():
    """The coming digest as the public sees it (no personal links); 204 when nothing is new."""
    params = query_params(schemas.preview_params())
    language = params.get("lang", current_app.config["DEFAULT_LOCALE"])
    digest_service.poll_feeds_first(fresh_seconds=digest_service.WEB_POLL_FRESH_SECONDS)
    coming = digest_service.coming_digest(utcnow())  # the draft (with its intro) and what came since
    if coming is None:
        return "", 204
    subject, text, html = digest_service.DigestRenderer(coming).render_public(language)
    return jsonify(language=language, subject=subject, text=text, html=html,
                   article_count=len(coming.articles))


@bp.post("/digests")
def trigger_digest():
    """Send the coming digest now (the draft brought up to date, or a new one): 202 with the
    digest, 204 when nothing is new, 409 while another send is running."""
    query_params([])
    data = json_body(schemas.digest_trigger()) if request.get_data(cache=True) else {}
    running = db.session.execute(
        select(Digest.id).where(Digest.status.in_(RUNNING_STATES)).limit(1)).scalar_one_or_none()
    if running is not None:
        raise ApiError(409, "send_running", f"Digest {running} is being sent; wait for it, or pause or "
                                            "cancel it first.")
    digest_service.poll_feeds_first(fresh_seconds=digest_service.WEB_POLL_FRESH_SECONDS)
    now = utcnow()
    if "intro" in data or "intro_en" in data:  # on the draft, as the admin's digest page does
        digest_service.set_intro(data.get("intro"), now, intro_en=data.get("intro_en"))
    digest = digest_service.prepare_digest(now)
    if digest is None:
        return "", 204
    recipients = delivery.start_send(digest.id)  # pinned now, so the answer has their number
    audit("api.digest.send", f"digest:{digest.id}", recipients=recipients,
          approval_required=current_app.config["DIGEST_REQUIRE_APPROVAL"])
    delivery.launch_send(digest.id)
    db.session.refresh(digest)
    headers = {"Location": url_for("api.get_digest", digest_id=digest.id)}
    return jsonify(_detail(digest)), 202, headers


@bp.get(f"/digests/{DIGEST_ID}")
def get_digest(digest_id: int):
    """A digest with the progress of its send."""
    query_params([])
    return jsonify(_detail(_digest_or_404(digest_id)))


@bp.post(f"/digests/{DIGEST_ID}/<any(pause, resume, cancel):action>")
def control_digest(digest_id: int, action: str):
    """Pause, resume or cancel a send: 409 when the digest is not in a state that allows it."""
    query_params([])
    digest = _digest_or_404(digest_id)
    try:
        ACTIONS[action](digest_id)
    except ValueError as exc:
        db.session.rollback()
        raise ApiError(409, "invalid_state", f"Cannot {action} a digest that is {digest.status}: {exc}"
                       ) from None
    audit(f"api.digest.{action}", f"digest:{digest_id}")
    db.session.refresh(digest)
    return jsonify(_detail(digest))
