"""Admin pages for sends: the list, one send's live progress (polled as JSON), pause/resume/cancel.

A send runs in the background (a thread of the web process, or Celery workers): closing the
browser changes nothing, and the page picks the progress up again when it is opened.
"""

from __future__ import annotations

from flask import current_app, flash, jsonify, redirect, render_template, url_for
from flask_babel import format_decimal, format_number
from flask_babel import gettext as _
from sqlalchemy import func, select

from newsletter import delivery, digests
from newsletter.admins import audit
from newsletter.delivery import totals
from newsletter.digests import clicks
from newsletter.extensions import db
from newsletter.i18n import percent_text
from newsletter.models import Delivery, Digest
from newsletter.web.admin import bp
from newsletter.web.admin.auth import role_required

SENDS_LISTED = 50
FINAL_STATES = ("done", "cancelled")


def status_label(status: str) -> str:
    labels = {
        "draft": _("Draft"), "approved": _("Approved"), "scheduled": _("Scheduled"),
        "sending": _("Sending"), "paused": _("Paused"), "cancelled": _("Cancelled"), "done": _("Done"),
    }
    return labels.get(status, status)


def duration_text(seconds: int | None) -> str:
    """A short, translated duration: "2 h 5 min", "3 min 20 s", "45 s"."""
    if seconds is None:
        return "–"
    hours, rest = divmod(max(int(seconds), 0), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return _("%(h)d h %(m)d min", h=hours, m=minutes)
    if minutes:
        return _("%(m)d min %(s)d s", m=minutes, s=secs)
    return _("%(s)d s", s=secs)


def progress_view(digest_id: int) -> dict:
    """send_progress plus what the page shows: done, remaining, percent and translated texts."""
    progress = dict(delivery.send_progress(digest_id))
    total = progress["total"]
    finished = progress["sent"] + progress["failed"] + progress["bounced"] + progress["skipped"]
    remaining = max(total - finished, 0)
    if total:
        percent = 100.0 * finished / total
    else:  # a send to nobody is complete once it is done
        percent = 100.0 if progress["status"] == "done" else 0.0
    progress.update({f"{name}_text": format_number(progress[name])
                     for name in ("sent", "failed", "bounced", "skipped", "total")})
    progress.update(
        finished=finished, remaining=remaining, percent=round(percent, 1),
        percent_text=percent_text(percent / 100), remaining_text=format_number(remaining),
        status_label=status_label(progress["status"]),
        rate_text=_("%(rate)s per second", rate=format_decimal(progress.get("rate") or 0, "0.#")),
        # Only a running send has a time left; a paused one would otherwise show its last estimate.
        eta_text=duration_text(progress.get("eta_seconds") if progress["status"] == "sending" else None),
        final=progress["status"] in FINAL_STATES,
    )
    return progress


@bp.get("/sends")
@role_required("editor")
def sends():
    """Every digest with its send's state and counts, newest first."""
    listed = digests.latest_digests(SENDS_LISTED)
    counts: dict[int, dict[str, int]] = {d.id: {} for d in listed}
    if listed:
        rows = db.session.execute(
            select(Delivery.digest_id, Delivery.state, func.count())
            .where(Delivery.digest_id.in_(list(counts))).group_by(Delivery.digest_id, Delivery.state)
        ).all()
        for digest_id, state, n in rows:
            counts[digest_id][state] = n
        for digest_id, rolled in totals.totals(list(counts)).items():  # rows the purge rolled up
            for state in totals.ROLLED_STATES:
                counts[digest_id][state] = counts[digest_id].get(state, 0) + rolled[state]
    return render_template("admin/sends.html", sends=listed, counts=counts, status_label=status_label)


@bp.get("/sends/<int:digest_id>")
@role_required("editor")
def sends_detail(digest_id: int):
    """One send: a live progress bar and the pause, resume and cancel buttons."""
    digest = db.get_or_404(Digest, digest_id)
    counted = clicks.clicks(digest_id)
    shown = counted if (current_app.config["STATS_CLICKS"] or counted) else None
    return render_template("admin/send.html", digest=digest, progress=progress_view(digest_id),
                           status_label=status_label, clicks=shown)


@bp.get("/sends/<int:digest_id>/progress.json")
@role_required("editor")
def sends_progress(digest_id: int):
    """The send's progress as JSON: the page polls it every second."""
    db.get_or_404(Digest, digest_id)
    response = jsonify(progress_view(digest_id))
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/sends/<int:digest_id>/pause")
@role_required("editor")
def sends_pause(digest_id: int):
    return _change(digest_id, "pause", delivery.pause_send, _("The send is paused."))


@bp.post("/sends/<int:digest_id>/resume")
@role_required("editor")
def sends_resume(digest_id: int):
    return _change(digest_id, "resume", delivery.resume_send, _("The send goes on."))


@bp.post("/sends/<int:digest_id>/cancel")
@role_required("editor")
def sends_cancel(digest_id: int):
    return _change(digest_id, "cancel", delivery.cancel_send, _("The send is cancelled."))


def _change(digest_id: int, action: str, change, done_message: str):
    """Pause, resume or cancel: a status change the workers obey; refused from the wrong state."""
    digest = db.get_or_404(Digest, digest_id)
    before = digest.status
    try:
        change(digest_id)
    except ValueError:
        db.session.rollback()
        flash(_("This cannot be done now: the send is %(status)s.", status=status_label(before).lower()),
              "error")
        return redirect(url_for("admin.sends_detail", digest_id=digest_id), 303)
    audit.record(f"send.{action}", f"digest:{digest_id}", before=before)
    flash(done_message, "success")
    return redirect(url_for("admin.sends_detail", digest_id=digest_id), 303)
