"""Admin accounts: one's own account page; the Admins and Audit pages (admin only)."""

from __future__ import annotations

from flask import abort, current_app, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import current_user, login_user

from newsletter.admins import accounts, audit
from newsletter.extensions import db
from newsletter.models import Admin
from newsletter.web.admin import bp
from newsletter.web.admin.auth import _account_error, role_required
from newsletter.web.admin.forms import AdminForm, ButtonForm, PasswordChangeForm


@bp.route("/account", methods=["GET", "POST"])
@role_required("editor")
def account():
    """Change one's own password: every other session of this account ends."""
    form = PasswordChangeForm()
    if form.validate_on_submit():
        admin = current_user._get_current_object()  # type: ignore[attr-defined]
        try:
            accounts.change_password(admin, form.current.data, form.password.data)
        except accounts.AccountError as exc:
            field = form.current if exc.code == "wrong_password" else form.password
            field.errors = [*field.errors, _account_error(exc)]
        else:
            login_user(admin)  # this session continues under the new session version
            audit.record("password_changed", admin.email)
            flash(_("Your password is changed. You were logged out everywhere else."), "success")
            return redirect(url_for("admin.account"))
    return render_template("admin/account.html", form=form), (400 if form.errors else 200)


@bp.route("/admins", methods=["GET", "POST"])
@role_required("admin")
def admins():
    """The admin accounts, and a form to add one (admin only)."""
    form = AdminForm()
    if form.validate_on_submit():
        try:
            admin = accounts.create_admin(form.email.data, form.password.data, role=form.role.data)
        except accounts.AccountError as exc:
            field = form.email if exc.code in ("email", "exists") else form.password
            field.errors = [*field.errors, _account_error(exc)]
        else:
            audit.record("admin_created", admin.email, role=admin.role)
            flash(_("Account created for %(email)s.", email=admin.email), "success")
            return redirect(url_for("admin.admins"))
    status = 400 if form.errors else 200
    return render_template("admin/admins.html", form=form, admins=accounts.list_admins(),
                           button=ButtonForm()), status


@bp.post("/admins/<int(max=2147483647):admin_id>/active")
@role_required("admin")
def admins_active(admin_id: int):
    """Deactivate (ends their sessions) or reactivate an account."""
    admin = db.get_or_404(Admin, admin_id)
    if not ButtonForm().validate_on_submit():
        abort(400)
    active = request.form.get("active") == "1"
    if admin.id == current_user.id and not active:
        flash(_("You cannot deactivate your own account."), "error")
        return redirect(url_for("admin.admins"))
    try:
        accounts.set_active(admin, active)
    except accounts.AccountError as exc:
        flash(_account_error(exc), "error")
    else:
        audit.record("admin_activated" if active else "admin_deactivated", admin.email)
        flash(_("Account reactivated.") if active else _("Account deactivated."), "success")
    return redirect(url_for("admin.admins"))


@bp.get("/audit", endpoint="audit")
@role_required("admin")
def audit_log():
    """Every admin action, newest first (keyset pages)."""
    before = request.args.get("before", "")
    action = request.args.get("action", "")
    size = current_app.config["ADMIN_PAGE_SIZE"]
    events = audit.list_events(before_id=min(int(before), 2**31 - 1) if before.isdigit() and len(before) < 30
                               else None,
                               limit=size + 1, action=action or None)
    more = len(events) > size
    events = events[:size]
    return render_template("admin/audit.html", events=events, actions=audit.known_actions(), action=action,
                           older=events[-1].id if more and events else None)
