"""Admin accounts: the Admins page (admin only) and one's own account page."""

from __future__ import annotations

from flask import flash, redirect, render_template, url_for
from flask_babel import gettext as _
from flask_login import current_user, login_user

from .. import accounts, audit
from . import bp
from .auth import _account_error, role_required
from .forms import PasswordChangeForm


@bp.route("/account", methods=["GET", "POST"])
@role_required("editor")
def account():
    """Change one's own password: every other session of this account ends."""
    form = PasswordChangeForm()
    if form.validate_on_submit():
        try:
            accounts.change_password(current_user, form.current.data, form.password.data)
        except accounts.AccountError as exc:
            field = form.current if exc.code == "wrong_password" else form.password
            field.errors = [*field.errors, _account_error(exc)]
        else:
            login_user(current_user)  # this session continues under the new session version
            audit.record("password_changed", current_user.email)
            flash(_("Your password is changed. You were logged out everywhere else."), "success")
            return redirect(url_for("admin.account"))
    return render_template("admin/account.html", form=form), (400 if form.errors else 200)
