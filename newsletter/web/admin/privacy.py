"""Privacy in the admin: the retention policy in force and what the next purge removes, the
suppression list (an admin lifts a bounce or complaint, audited), and proof of consent."""

from __future__ import annotations

import json

from flask import Response, flash, redirect, render_template, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import EmailField, SubmitField
from wtforms.validators import InputRequired

from newsletter import privacy as retention
from newsletter import subscriptions
from newsletter.admins import audit
from newsletter.extensions import db
from newsletter.models import Subscriber
from newsletter.subscriptions import consent, suppression
from newsletter.web.admin import bp
from newsletter.web.admin.auth import role_required
from newsletter.web.admin.labels import suppression_label


class LiftForm(FlaskForm):
    email = EmailField(_l("Address"), validators=[InputRequired()])
    submit = SubmitField(_l("Lift the suppression"))


@bp.route("/privacy", methods=["GET", "POST"])
@role_required("admin")
def privacy():
    """The retention policy in force, what the next daily purge removes, and the suppression list."""
    form = LiftForm()
    if form.validate_on_submit():
        try:
            address = subscriptions.normalise_email(form.email.data)
        except subscriptions.InvalidInput:
            address = None
        lifted = suppression.lift_by_admin(address) if address else None
        if lifted is None:
            db.session.rollback()
            form.email.errors = [*form.email.errors, _(
                "That address has no bounce or complaint suppression. An unsubscribe or an erasure is "
                "lifted only by the person's own new signup.")]
        else:
            audit.record("suppression_lifted", "email-hmac:" + suppression.address_hash(address)[:32],
                         reason=lifted)
            flash(_("The suppression (%(reason)s) is lifted: the person may sign up again and confirm.",
                    reason=suppression_label(lifted)), "success")
            return redirect(url_for("admin.privacy"))
    return render_template("admin/privacy.html", policy=retention.current_policy(), due=retention.preview(),
                           counts=suppression.suppression_counts(), form=form), (400 if form.errors else 200)


@bp.get("/subscribers/<int(max=2147483647):subscriber_id>/consent")
@role_required("editor")
def subscribers_consent(subscriber_id: int):
    """One address's proof of consent, readable: every event with the wording agreed to."""
    subscriber = db.get_or_404(Subscriber, subscriber_id)
    return render_template("admin/consent_proof.html", subscriber=subscriber,
                           proof=consent.proof_of_consent(subscriber))


@bp.get("/subscribers/<int(max=2147483647):subscriber_id>/consent.json")
@role_required("editor")
def subscribers_consent_json(subscriber_id: int):
    """One address's proof of consent as a JSON download (audited)."""
    subscriber = db.get_or_404(Subscriber, subscriber_id)
    body = json.dumps(consent.proof_of_consent(subscriber), ensure_ascii=False, indent=2)
    audit.record("consent_proof_exported", f"subscriber:{subscriber.id}")
    return Response(body, mimetype="application/json", headers={
        "Content-Disposition": f'attachment; filename="consent-{subscriber.uid}.json"',
        "Cache-Control": "no-store"})
