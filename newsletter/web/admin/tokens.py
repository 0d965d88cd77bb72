"""API tokens (admins only): create one (its plaintext shown once), list, revoke."""

from __future__ import annotations

from flask import abort, flash, redirect, render_template, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import RadioField, SelectChoice, StringField, SubmitField
from wtforms.validators import InputRequired, Length

from newsletter.admins import api_tokens, audit
from newsletter.web.admin import bp
from newsletter.web.admin.auth import role_required


class TokenForm(FlaskForm):
    name = StringField(_l("Name (what the token is for, e.g. the website)"),
                       validators=[InputRequired(), Length(max=api_tokens.MAX_NAME_LENGTH)])
    role = RadioField(_l("Role"), default="editor", validators=[InputRequired()], choices=[
        SelectChoice("editor", _l("Editor: subscribers (no erasure or export), articles, digests and sends")),
        SelectChoice("admin", _l("Admin: everything, including erasing and exporting subscribers")),
    ])
    submit = SubmitField(_l("Create token"))


class RevokeForm(FlaskForm):
    submit = SubmitField(_l("Revoke"))


def _page(form: TokenForm, *, created=None, plaintext: str | None = None, status: int = 200):
    return render_template("admin/tokens.html", form=form, revoke_form=RevokeForm(),
                           tokens=api_tokens.list_tokens(), created=created, plaintext=plaintext), status


@bp.route("/api-tokens", methods=["GET", "POST"], endpoint="api_tokens")
@role_required("admin")
def api_tokens_page():
    """The token list and the form for a new one; a new token's plaintext is shown this once."""
    form = TokenForm()
    if form.validate_on_submit():
        try:
            token, plaintext = api_tokens.create_token(form.name.data, form.role.data, current_user.id)
        except ValueError:
            form.name.errors = [*form.name.errors, _("Give the token a name.")]
        else:
            audit.record("api_token_created", token.name, token_id=token.id, role=token.role)
            # Rendered, not redirected: the plaintext never goes into a session or a flash cookie.
            return _page(TokenForm(formdata=None), created=token, plaintext=plaintext)
    return _page(form, status=400 if form.errors else 200)


@bp.post("/api-tokens/<int:token_id>/revoke")
@role_required("admin")
def api_tokens_revoke(token_id: int):
    """Revoke a token: API calls with it are refused from now on."""
    if not RevokeForm().validate_on_submit():
        abort(400)
    token = api_tokens.revoke_token(token_id)
    if token is None:
        abort(404)
    audit.record("api_token_revoked", token.name, token_id=token.id)
    flash(_("The token “%(name)s” is revoked.", name=token.name), "success")
    return redirect(url_for("admin.api_tokens"))
