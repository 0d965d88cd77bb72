"""Admin pages for the coming digest: preview (HTML in a sandboxed iframe, and text), the editor's
intro, a test to oneself, and "send now" (or "approve and send") after a confirmation step."""

from __future__ import annotations

from flask import Response, abort, current_app, flash, redirect, render_template, request, url_for
from flask_babel import get_locale
from flask_babel import gettext as _
from flask_login import current_user

from newsletter import delivery, digests
from newsletter.admins import audit
from newsletter.engine.clock import utcnow
from newsletter.engine.smtp import MailError
from newsletter.web.admin import bp
from newsletter.web.admin.auth import role_required
from newsletter.web.admin.content_forms import IntroForm, TestSendForm

# The preview is an email, not a page of ours: no scripts, no forms, no same-origin access,
# even if something slipped through the sanitiser. The iframe's sandbox says the same.
# Gmail clips a message whose HTML passes about 102 KB (and hides the unsubscribe footer): warn
# well before it.
SIZE_WARNING_BYTES = 90 * 1024

PREVIEW_CSP = "sandbox; default-src 'none'; img-src https: http: data:; style-src 'unsafe-inline'; " \
              "font-src https: data:; frame-ancestors 'self'"


def _language(value: str | None) -> str:
    languages = current_app.config["LANGUAGES"]
    if value in languages:
        return value
    current = str(get_locale() or "")
    return current if current in languages else current_app.config["DEFAULT_LOCALE"]


def _next_run():
    """The next scheduled digest run (aware datetime), or None if the schedule is broken."""
    try:
        from newsletter import scheduler  # APScheduler: imported by the pages that show the next run only

        trigger = scheduler.digest_trigger(current_app)
        return trigger.get_next_fire_time(None, utcnow())
    except ValueError:
        return None


def _poll_feeds() -> None:
    """Poll the feeds not polled within the last minute; say which failed."""
    results = digests.poll_feeds_first(fresh_seconds=digests.WEB_POLL_FRESH_SECONDS)
    for result in results:
        if not result.ok:
            flash(_("%(url)s could not be fetched: %(error)s", url=result.url, error=result.error), "error")


@bp.get("/digest")
@role_required("editor")
def digest():
    """The coming digest as subscribers will see it, with the intro, test and send controls."""
    language = _language(request.args.get("preview"))
    _poll_feeds()
    now = utcnow()
    coming = digests.coming_digest(now)
    renderer = digests.DigestRenderer(coming) if coming is not None else None
    rendered = renderer.render_public(language) if renderer is not None else None
    sizes = renderer.html_sizes() if renderer is not None else {}
    draft = digests.current_draft()
    intro_form = IntroForm(intro=draft.intro if draft is not None else "",
                           intro_en=draft.intro_en if draft is not None else "")
    test_form = TestSendForm(language=language)
    return render_template(
        "admin/digest.html", coming=coming, rendered=rendered, language=language, draft=draft,
        intro_form=intro_form, test_form=test_form, next_run=_next_run(), sizes=sizes,
        size_warning=SIZE_WARNING_BYTES, section_max=current_app.config["DIGEST_SECTION_MAX"],
        require_approval=current_app.config["DIGEST_REQUIRE_APPROVAL"],
        sending=[d for d in digests.latest_digests(5) if d.status in ("sending", "paused")],
    )


@bp.get("/digest/preview/<language>.html")
@role_required("editor")
def digest_preview_html(language: str):
    """The coming digest's HTML part, as a separate document for the preview iframe."""
    if language not in current_app.config["LANGUAGES"]:
        abort(404)
    rendered = digests.preview_coming(language)
    html = rendered[2] if rendered else render_template("admin/digest_nothing.html")
    response = Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = PREVIEW_CSP
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/digest/preview/<language>.txt")
@role_required("editor")
def digest_preview_text(language: str):
    """The coming digest's text part."""
    if language not in current_app.config["LANGUAGES"]:
        abort(404)
    rendered = digests.preview_coming(language)
    if rendered is None:
        abort(404)
    response = Response(f"{rendered[0]}\n\n{rendered[1]}", mimetype="text/plain")
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/digest/intro")
@role_required("editor")
def digest_intro():
    """Save the editor's intro on the draft (a draft is compiled if there is none)."""
    form = IntroForm()
    if not form.validate_on_submit():
        errors = form.intro.errors + form.intro_en.errors
        flash(_("The intro could not be saved: %(errors)s", errors=" ".join(errors)), "error")
        return redirect(url_for("admin.digest"), 303)
    draft = digests.set_intro(form.intro.data or "", intro_en=form.intro_en.data or "")
    if draft is None:
        flash(_("There is nothing new for a digest yet, so there is nothing to write an intro for."), "error")
    else:
        audit.record("digest.intro", f"digest:{draft.id}", length=len(draft.intro),
                     length_en=len(draft.intro_en))
        flash(_("The intro was saved on the draft."), "success")
    return redirect(url_for("admin.digest"), 303)


@bp.post("/digest/test")
@role_required("editor")
def digest_test():
    """Send the coming digest to the logged-in admin's own address."""
    form = TestSendForm()
    language = _language(form.language.data)
    try:
        sent = delivery.send_test(current_user.email, locale=language)
    except MailError as exc:
        flash(_("The test could not be sent: %(reason)s", reason=str(exc)), "error")
        return redirect(url_for("admin.digest", preview=language), 303)
    if not sent:
        flash(_("There is nothing new for a digest, so no test was sent."), "error")
    else:
        audit.record("digest.test", "digest:coming", to=current_user.email, language=language)
        flash(_("A test was sent to %(email)s.", email=current_user.email), "success")
    return redirect(url_for("admin.digest", preview=language), 303)


@bp.route("/digest/send", methods=["GET", "POST"])
@role_required("editor")
def digest_send():
    """GET: the confirmation step (how many it goes to); POST: compile, send in the background."""
    require_approval = current_app.config["DIGEST_REQUIRE_APPROVAL"]
    _poll_feeds()
    if request.method == "GET":
        plan = delivery.plan_send()
        return render_template("admin/digest_send.html", plan=plan, require_approval=require_approval)
    digest = digests.prepare_digest()
    if digest is None:
        flash(_("There is nothing new for a digest: nothing was sent."), "error")
        return redirect(url_for("admin.digest"), 303)
    if require_approval:
        audit.record("digest.approve", f"digest:{digest.id}")
    recipients = delivery.start_send(digest.id)  # pins the recipients, so the progress page has a total
    delivery.launch_send(digest.id)
    audit.record("send.start", f"digest:{digest.id}", recipients=recipients)
    flash(_("The digest is being sent. Recipients: %(count)d.", count=recipients), "success")
    return redirect(url_for("admin.sends_detail", digest_id=digest.id), 303)
