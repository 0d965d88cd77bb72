"""Subscriber pages: list (search, filters, keyset pages), detail with consent events, add,
import, export (admin), unsubscribe, erase (admin, with a confirmation step).

The audit log names subscribers by id, never by address: an erasure must not
leave the address behind in the audit log.
"""

from __future__ import annotations

from flask import (
    Response,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from flask_babel import get_locale
from flask_babel import gettext as _
from flask_login import current_user
from wtforms import SelectChoice

from newsletter import privacy, subscriptions
from newsletter.admins import audit
from newsletter.extensions import client_ip, db
from newsletter.i18n import supported
from newsletter.models import SUBSCRIBER_STATES, Subscriber
from newsletter.subscriptions import imports, suppression
from newsletter.subscriptions.listing import (
    SubscriberFilter,
    consent_events,
    delivery_counts,
    subscriber_page,
)
from newsletter.subscriptions.topics import ensure_topics
from newsletter.web.admin import bp
from newsletter.web.admin.auth import role_required
from newsletter.web.admin.forms import (
    LANGUAGE_CHOICES,
    ButtonForm,
    EraseForm,
    FilterForm,
    ImportForm,
    SubscriberAddForm,
    SubscriberEditForm,
)
from newsletter.web.admin.labels import subscriber_state, suppression_label

MAX_ID = 2**31 - 1  # the id columns are 32-bit integers on PostgreSQL


def _target(subscriber: Subscriber) -> str:
    return f"subscriber:{subscriber.id}"


def _int_arg(name: str) -> int | None:
    """A page key from the query; ids are 32-bit, so a larger one is the largest."""
    value = request.args.get(name, "")
    return min(int(value), MAX_ID) if value.isdigit() and len(value) < 30 else None


def _filter_form(topics, locale: str) -> tuple[FilterForm, SubscriberFilter]:
    form = FilterForm(request.args)
    form.status.choices = [SelectChoice("", _("All states"))] + [
        SelectChoice(s, subscriber_state(s)) for s in SUBSCRIBER_STATES]
    form.topic.choices = [SelectChoice("", _("All topics"))] + [
        SelectChoice(t.slug, t.name(locale)) for t in topics]
    form.language.choices = [SelectChoice("", _("All languages")), *LANGUAGE_CHOICES]
    valid = {f.name: {choice.value for choice in f.choices} for f in (form.status, form.topic, form.language)}
    flt = SubscriberFilter(
        q=(form.q.data or "").strip(),
        **{name: (getattr(form, name).data or "") if (getattr(form, name).data or "") in values else ""
           for name, values in valid.items()},
    )
    return form, flt


@bp.get("/subscribers")
@role_required("editor")
def subscribers():
    """The list: search by address or name, filter by state, topic and language, newest first."""
    locale = str(get_locale())
    topics = ensure_topics()
    form, flt = _filter_form(topics, locale)
    page = subscriber_page(flt, before=_int_arg("before"), after=_int_arg("after"),
                           size=current_app.config["ADMIN_PAGE_SIZE"])
    return render_template("admin/subscribers.html", form=form, flt=flt, page=page,
                           topic_names={t.slug: t.name(locale) for t in topics})


@bp.get("/subscribers/<int(max=2147483647):subscriber_id>")
@role_required("editor")
def subscribers_detail(subscriber_id: int):
    """One subscriber: their data, topics, consent events and deliveries."""
    subscriber = db.get_or_404(Subscriber, subscriber_id)
    form = _edit_form(SubscriberEditForm(formdata=None, name=subscriber.name, language=subscriber.language,
                                         topics=subscriptions.topic_slugs(subscriber)))
    return _detail_page(subscriber, form)


def _edit_form(form):
    form.topics.choices = [SelectChoice(t.slug, t.name(str(get_locale()))) for t in ensure_topics()]
    return form


def _detail_page(subscriber: Subscriber, edit_form, status: int = 200):
    return render_template("admin/subscriber.html", subscriber=subscriber, events=consent_events(subscriber),
                           deliveries=delivery_counts(subscriber), button=ButtonForm(),
                           edit_form=edit_form), status


@bp.post("/subscribers/<int(max=2147483647):subscriber_id>/edit")
@role_required("editor")
def subscribers_edit(subscriber_id: int):
    """Change someone's name, language and topics (recorded in the consent ledger as the admin's)."""
    subscriber = db.get_or_404(Subscriber, subscriber_id)
    form = _edit_form(SubscriberEditForm())
    if form.validate_on_submit():
        try:
            subscriptions.edit_subscriber(subscriber, name=form.name.data or "",
                                          topics=form.topics.data or [], language=form.language.data)
        except subscriptions.InvalidInput:
            form.name.errors = [*form.name.errors, _("The name is too long or contains a line break.")]
        else:
            audit.record("subscriber_edited", _target(subscriber))
            flash(_("The changes are saved."), "success")
            return redirect(url_for("admin.subscribers_detail", subscriber_id=subscriber.id), 303)
    return _detail_page(subscriber, form, 400)


def _add_error(form: SubscriberAddForm, exc: subscriptions.InvalidInput) -> None:
    messages = {
        "email": (form.email, _("Enter a valid email address, like name@example.se.")),
        "name": (form.name, _("The name is too long or contains a line break.")),
        "language": (form.language, _("Choose a language.")),
        "topics": (form.topics, _("Choose among the topics shown.")),
    }
    field, message = messages.get(exc.field, (form.email, str(exc)))
    field.errors = [*field.errors, message]


@bp.route("/subscribers/new", methods=["GET", "POST"])
@role_required("editor")
def subscribers_new():
    """Add someone: pending with a confirmation email, or confirmed with a note on their consent."""
    from flask_babel import get_locale

    form = SubscriberAddForm()
    form.topics.choices = [SelectChoice(t.slug, t.name(str(get_locale()))) for t in ensure_topics()]
    if request.method == "GET":
        form.language.data = supported(str(get_locale())) or current_app.config["DEFAULT_LOCALE"]
    if form.validate_on_submit():
        confirmed = form.confirmed.data == "confirmed"
        note = (form.note.data or "").strip()
        if confirmed and not note:
            form.note.errors = [*form.note.errors,
                                _("Say where and when they gave their consent: it is kept as evidence.")]
        else:
            try:
                subscriber = subscriptions.add_subscriber(
                    form.email.data, name=form.name.data or "", language=form.language.data,
                    topics=form.topics.data or [], confirmed=confirmed, source="admin",
                    detail={"note": note, "by": current_user.email, "ip": client_ip()})
            except subscriptions.SubscriberExists as exc:
                form.email.errors = [*form.email.errors, {
                    "unsubscribed": _("That address has unsubscribed: it is not added back. Only they "
                                      "can subscribe again, through the form."),
                    "bounced": _("That address bounced: its mail server refused it, so it is not "
                                 "added back."),
                    "complained": _("That address reported a digest as spam: it is not added back."),
                }.get(exc.status, _("That address is already on the list."))]
            except suppression.Suppressed as exc:
                db.session.rollback()
                form.email.errors = [*form.email.errors, _(
                    "That address is on the suppression list (%(reason)s): it was left as it is. Only the "
                    "person's own signup brings it back.", reason=suppression_label(exc.reason))]
            except subscriptions.InvalidInput as exc:
                _add_error(form, exc)
            else:
                audit.record("subscriber_added", _target(subscriber), confirmed=confirmed)
                flash(_("Subscriber added.") if confirmed else
                      _("Subscriber added. A confirmation email is on its way."), "success")
                return redirect(url_for("admin.subscribers_detail", subscriber_id=subscriber.id))
    return render_template("admin/subscriber_new.html", form=form), (400 if form.errors else 200)


@bp.post("/subscribers/<int(max=2147483647):subscriber_id>/unsubscribe")
@role_required("editor")
def subscribers_unsubscribe(subscriber_id: int):
    """End someone's subscription (a consent event with source "admin")."""
    subscriber = db.get_or_404(Subscriber, subscriber_id)
    form = ButtonForm()
    if not form.validate_on_submit():
        abort(400)
    if subscriber.status != "unsubscribed":
        subscriptions.unsubscribe(subscriber, source="admin", ip=client_ip(),
                                  user_agent=request.user_agent.string or "")
        audit.record("subscriber_unsubscribed", _target(subscriber))
        flash(_("Unsubscribed."), "success")
    return redirect(url_for("admin.subscribers_detail", subscriber_id=subscriber.id))


@bp.post("/subscribers/<int(max=2147483647):subscriber_id>/resend")
@role_required("editor")
def subscribers_resend(subscriber_id: int):
    """Send a pending person their confirmation email again."""
    subscriber = db.get_or_404(Subscriber, subscriber_id)
    if not ButtonForm().validate_on_submit():
        abort(400)
    if subscriptions.resend_confirmation(subscriber):
        audit.record("subscriber_confirmation_resent", _target(subscriber))
        flash(_("A new confirmation email is on its way."), "success")
    else:
        flash(_("No email was sent: they are not pending, or got one a few minutes ago."), "error")
    return redirect(url_for("admin.subscribers_detail", subscriber_id=subscriber.id), 303)


@bp.route("/subscribers/<int(max=2147483647):subscriber_id>/erase", methods=["GET", "POST"])
@role_required("admin")
def subscribers_erase(subscriber_id: int):
    """Erase someone and all their data, after typing their address to confirm."""
    subscriber = db.get_or_404(Subscriber, subscriber_id)
    form = EraseForm()
    if form.validate_on_submit():
        if (form.confirm_email.data or "").strip().lower() != subscriber.email:
            form.confirm_email.errors = [*form.confirm_email.errors,
                                         _("That is not the subscriber's address. Nothing was erased.")]
        else:
            target = _target(subscriber)
            privacy.erase_person(subscriber, source="admin")
            audit.record("subscriber_erased", target)
            flash(_("The subscriber and all their data are erased."), "success")
            return redirect(url_for("admin.subscribers"))
    return render_template("admin/subscriber_erase.html", subscriber=subscriber, form=form), \
        (400 if form.errors else 200)


@bp.get("/subscribers/export.csv")
@role_required("admin")
def subscribers_export():
    """Download the list as CSV (state and topic filters apply)."""
    status = request.args.get("status") if request.args.get("status") in SUBSCRIBER_STATES else None
    topic = request.args.get("topic") or None
    if topic and topic not in {t.slug for t in ensure_topics()}:
        topic = None
    # Audited before it streams (rows: those matching then), so a download cut short is in the log too.
    count = subscriptions.export_count(status=status, topic=topic)
    audit.record("subscribers_exported", "subscribers", rows=count, status=status or "", topic=topic or "")
    lines = subscriptions.export_lines(status=status, topic=topic)
    return Response(stream_with_context(lines), mimetype="text/csv; charset=utf-8", headers={
        "Content-Disposition": "attachment; filename=subscribers.csv"})


@bp.route("/subscribers/import", methods=["GET", "POST"])
@role_required("admin")
def subscribers_import():
    """Import a CSV file: our export, or a Mailchimp or listmonk export."""
    form = ImportForm()
    report = None
    if imports is None:
        return render_template("admin/subscriber_import.html", form=form, report=None, unavailable=True)
    if form.validate_on_submit():
        upload, confirmed = form.file.data, bool(form.confirmed.data)
        filename = (upload.filename or "upload.csv")[:200]
        try:
            report = imports.import_csv(
                upload.stream, confirmed=confirmed, source="admin", filename=filename,
                actor=current_user.email,
                command="admin upload" + (" (confirmed by the admin)" if confirmed else ""))
        except imports.ImportFailed as exc:
            form.file.errors = [*form.file.errors,
                                _("Nothing was imported: %(reason)s", reason=exc.localized())]
        else:
            audit.record("subscribers_imported", filename, added=report.added, updated=report.updated,
                         skipped=report.skipped, errors=len(report.errors), confirmed=confirmed,
                         layout=report.layout)
    return render_template("admin/subscriber_import.html", form=form, report=report, unavailable=False), \
        (400 if form.errors else 200)
