"""Forms of the admin pages (Flask-WTF: every form carries a CSRF token)."""

from __future__ import annotations

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from wtforms import (
    BooleanField,
    EmailField,
    HiddenField,
    PasswordField,
    RadioField,
    SelectChoice,
    SelectField,
    StringField,
    SubmitField,
    TextAreaField,
)
from wtforms.validators import EqualTo, InputRequired, Length, Optional

from newsletter.web.public.forms import LANGUAGE_CHOICES, MultiCheckboxField


class LoginForm(FlaskForm):
    email = EmailField(
        _l("Email address"),
        validators=[InputRequired(), Length(max=320)],
        render_kw={"autocomplete": "username"},
    )
    password = PasswordField(
        _l("Password"),
        validators=[InputRequired(), Length(max=1000)],
        render_kw={"autocomplete": "current-password"},
    )
    next = HiddenField()
    submit = SubmitField(_l("Log in"))


class NewPasswordMixin:
    password = PasswordField(
        _l("Password"),
        validators=[InputRequired(), Length(max=1000)],
        render_kw={"autocomplete": "new-password"},
    )
    password_again = PasswordField(
        _l("Password again"),
        validators=[InputRequired(), EqualTo("password", _l("The passwords differ."))],
        render_kw={"autocomplete": "new-password"},
    )


class SetupForm(NewPasswordMixin, FlaskForm):
    token = HiddenField(validators=[InputRequired()])
    email = EmailField(
        _l("Email address"),
        validators=[InputRequired(), Length(max=320)],
        render_kw={"autocomplete": "username"},
    )
    submit = SubmitField(_l("Create the first admin"))


class AdminForm(NewPasswordMixin, FlaskForm):
    email = EmailField(
        _l("Email address"), validators=[InputRequired(), Length(max=320)], render_kw={"autocomplete": "off"}
    )
    role = RadioField(
        _l("Role"),
        choices=[
            SelectChoice("editor", _l("Editor: articles, digests and sends")),
            SelectChoice("admin", _l("Admin: everything, including subscribers' data and other admins")),
        ],
        default="editor",
        validators=[InputRequired()],
    )
    submit = SubmitField(_l("Add"))


class PasswordChangeForm(FlaskForm):
    current = PasswordField(
        _l("Current password"), validators=[InputRequired()], render_kw={"autocomplete": "current-password"}
    )
    password = PasswordField(
        _l("New password"),
        validators=[InputRequired(), Length(max=1000)],
        render_kw={"autocomplete": "new-password"},
    )
    password_again = PasswordField(
        _l("New password again"),
        validators=[InputRequired(), EqualTo("password", _l("The passwords differ."))],
        render_kw={"autocomplete": "new-password"},
    )
    submit = SubmitField(_l("Change password"))


class ButtonForm(FlaskForm):
    """A form that is only a button (and its CSRF token): logout, unsubscribe, deactivate."""

    submit = SubmitField(_l("OK"))


class SubscriberEditForm(FlaskForm):
    """What an admin may change for someone: name, language and topics (not the address)."""

    name = StringField(_l("Name (optional)"), validators=[Optional(), Length(max=200)])
    language = RadioField(_l("Language"), choices=LANGUAGE_CHOICES)
    topics = MultiCheckboxField(_l("Topics"), choices=[])
    submit = SubmitField(_l("Save the changes"))


class SubscriberAddForm(FlaskForm):
    email = EmailField(_l("Email address"), validators=[InputRequired(), Length(max=320)])
    name = StringField(_l("Name (optional)"), validators=[Optional(), Length(max=200)])
    language = RadioField(_l("Language"), choices=LANGUAGE_CHOICES, default="sv")
    topics = MultiCheckboxField(_l("Topics"), choices=[])
    confirmed = RadioField(
        _l("Consent"),
        choices=[
            SelectChoice("pending", _l("Send a confirmation email (double opt-in)")),
            SelectChoice("confirmed", _l("Already confirmed: I have their consent and describe it below")),
        ],
        default="pending",
    )
    note = TextAreaField(
        _l("Where and when did they give their consent?"), validators=[Optional(), Length(max=1000)]
    )
    submit = SubmitField(_l("Add subscriber"))


class ImportForm(FlaskForm):
    file = FileField(_l("CSV file"), validators=[FileRequired()])
    confirmed = BooleanField(_l("The people in this file have already confirmed (consent evidence kept)"))
    submit = SubmitField(_l("Import"))


class EraseForm(FlaskForm):
    confirm_email = StringField(_l("Type the address to confirm"), validators=[InputRequired()])
    submit = SubmitField(_l("Erase for good"))


class FilterForm(FlaskForm):
    """The subscriber list's search and filters (GET: no CSRF token)."""

    class Meta:
        csrf = False

    q = StringField(_l("Search by address or name"), validators=[Optional(), Length(max=320)])
    status = SelectField(_l("State"), validators=[Optional()])
    topic = SelectField(_l("Topic"), validators=[Optional()])
    language = SelectField(_l("Language"), validators=[Optional()])
