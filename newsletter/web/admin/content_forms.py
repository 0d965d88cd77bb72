"""Forms of the content pages of the admin (articles, feeds, digest): Flask-WTF, CSRF included."""

from __future__ import annotations

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import (
    DateTimeLocalField,
    RadioField,
    SelectChoice,
    SelectField,
    StringField,
    SubmitField,
    TextAreaField,
    URLField,
)
from wtforms.validators import URL, InputRequired, Length, Optional

from newsletter.web.public.forms import LANGUAGE_CHOICES


def topic_choices(topics, locale: str) -> list[SelectChoice]:
    return [SelectChoice(t.slug, t.name(locale)) for t in topics]


class ArticleForm(FlaskForm):
    title = StringField(_l("Title"), validators=[InputRequired(), Length(max=500)])
    url = URLField(_l("Link (URL)"), validators=[InputRequired(), URL(require_tld=False), Length(max=1000)])
    summary = TextAreaField(_l("Summary"), validators=[Optional(), Length(max=2000)])
    topic = SelectField(_l("Section"), choices=[])
    author = StringField(_l("Author"), validators=[Optional(), Length(max=200)])
    published = DateTimeLocalField(_l("Published"), validators=[Optional()],
                                   format=["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"])
    image_url = URLField(_l("Image (URL)"), validators=[Optional(), URL(require_tld=False), Length(max=1000)])
    image_alt = StringField(_l("Image description (alt text)"), validators=[Optional(), Length(max=500)])
    submit = SubmitField(_l("Save"))


class FeedForm(FlaskForm):
    url = URLField(_l("Feed address (RSS or Atom)"),
                   validators=[InputRequired(), URL(require_tld=False), Length(max=1000)])
    topic = SelectField(_l("Section"), choices=[])
    submit = SubmitField(_l("Add feed"))


class IntroForm(FlaskForm):
    intro = TextAreaField(_l("Intro in Swedish"), validators=[Optional(), Length(max=5000)])
    intro_en = TextAreaField(_l("Intro in English"), validators=[Optional(), Length(max=5000)])
    submit = SubmitField(_l("Save intro"))


class TestSendForm(FlaskForm):
    language = RadioField(_l("Language"), choices=LANGUAGE_CHOICES, default="sv")
    submit = SubmitField(_l("Send a test to me"))
