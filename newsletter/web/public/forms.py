"""Forms of the public pages (Flask-WTF: CSRF token included)."""

from __future__ import annotations

import time

from flask import current_app
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import (
    EmailField,
    HiddenField,
    RadioField,
    SelectChoice,
    SelectMultipleField,
    StringField,
    SubmitField,
)
from wtforms.validators import InputRequired, ValidationError
from wtforms.widgets import CheckboxInput, ListWidget

from newsletter.subscriptions import tokens
from newsletter.subscriptions.signup import InvalidInput, normalise_email

LANGUAGE_CHOICES = [SelectChoice("sv", "Svenska"), SelectChoice("en", "English")]


class MultiCheckboxField(SelectMultipleField):
    widget = ListWidget(prefix_label=False)
    option_widget = CheckboxInput()


def validate_address(form, field) -> None:
    try:
        field.data = normalise_email(field.data)
    except InvalidInput as exc:
        raise ValidationError(_l("Enter a valid email address, like name@example.se.")) from exc


def topic_choices(topics, locale: str) -> list[SelectChoice]:
    return [SelectChoice(t.slug, t.name(locale)) for t in topics]


SECOND_STEP_MAX_AGE = 3600  # seconds: the "press Subscribe again" page is answered soon or not at all


def signup_timestamp(second_step: bool = False) -> str:
    """A signed 'the form was shown at' stamp, for the minimum fill time. The stamp of the second
    step (the page that asks a quick person to press Subscribe again) carries no minimum."""
    return tokens.make_token("signup-form", [time.time(), "again"] if second_step else time.time())


def filled_too_fast(stamp: str | None) -> bool:
    """True for a missing, forged or too fresh stamp: perhaps not filled in by a person. Such a
    post is never silently dropped: the person is asked to press Subscribe again."""
    try:
        shown = tokens.read_token("signup-form", stamp or "")
        if isinstance(shown, list) and len(shown) == 2 and shown[1] == "again":
            return not 0 <= time.time() - float(shown[0]) < SECOND_STEP_MAX_AGE
        shown_at = float(shown)
    except (tokens.TokenError, TypeError, ValueError):
        return True
    return time.time() - shown_at < current_app.config["SIGNUP_MIN_SECONDS"]


class SubscribeForm(FlaskForm):
    email = EmailField(_l("Email address"), validators=[InputRequired(), validate_address])
    topics = MultiCheckboxField(_l("Topics"), choices=[], validate_choice=True)
    language = RadioField(_l("Language of the newsletter"), choices=LANGUAGE_CHOICES)
    # Honeypot: hidden from people (CSS and aria-hidden), filled in by bots.
    website = StringField(_l("Leave this field empty"))
    started = HiddenField()
    submit = SubmitField(_l("Subscribe"))


class PreferencesForm(FlaskForm):
    topics = MultiCheckboxField(_l("Topics"), choices=[], validate_choice=True)
    language = RadioField(_l("Language of the newsletter"), choices=LANGUAGE_CHOICES)
    submit = SubmitField(_l("Save"))


class RequestLinkForm(FlaskForm):
    email = EmailField(_l("Email address"), validators=[InputRequired(), validate_address])
    submit = SubmitField(_l("Send me a link"))


class ConfirmForm(FlaskForm):
    """Only a button (and the CSRF token): the POST is what confirms."""

    submit = SubmitField(_l("Confirm my subscription"))


class EraseForm(FlaskForm):
    submit = SubmitField(_l("Yes, erase all my data"))


class DataForm(FlaskForm):
    submit = SubmitField(_l("Download my data (JSON)"))
