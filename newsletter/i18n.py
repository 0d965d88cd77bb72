"""Language and time zone selection, and template helpers for both."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from flask import Flask, current_app, g, request

LANG_COOKIE = "lang"
TRANSLATIONS = Path(__file__).parent / "translations"


def N_(message: str) -> str:
    """Marks a message for the catalogue where it is translated later (by Problem.localized)."""
    return message


class Problem(str):
    """An English message (for logs, the command line, the API) that can also say itself in the
    page's language: `Problem(N_("duplicate of line %(line)s"), line=2)`. `local` is a shorter
    wording for the page when the English one carries a detail only English can give."""

    template: str
    params: dict
    local: str | None

    def __new__(cls, template: str, *, local: str | None = None, **params):
        problem = super().__new__(cls, template % params if params else template)
        problem.template, problem.params, problem.local = template, params, local
        return problem

    def localized(self) -> str:
        from flask_babel import gettext

        return gettext(self.local or self.template, **self.params)


def localized(value) -> str:
    """A Problem in the page's language; anything else as it is."""
    return value.localized() if isinstance(value, Problem) else ("" if value is None else str(value))


def compile_catalogs(directory: Path = TRANSLATIONS) -> None:
    """Compile every messages.po whose .mo is missing or older (the .mo files are not in git)."""
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    for po_path in directory.glob("*/LC_MESSAGES/messages.po"):
        mo_path = po_path.with_suffix(".mo")
        if mo_path.exists() and mo_path.stat().st_mtime >= po_path.stat().st_mtime:
            continue
        with po_path.open("rb") as handle:
            catalog = read_po(handle, locale=po_path.parent.parent.name)
        tmp = mo_path.with_suffix(".mo.tmp")
        with tmp.open("wb") as handle:
            write_mo(handle, catalog)
        tmp.replace(mo_path)


def supported(locale: str | None) -> str | None:
    return locale if locale in current_app.config["LANGUAGES"] else None


def select_locale() -> str:
    """A language forced for this request (a subscriber's own), else ?lang=, cookie, browser."""
    forced = supported(g.get("locale"))
    if forced:
        return forced
    if request:
        chosen = supported(request.args.get("lang")) or supported(request.cookies.get(LANG_COOKIE))
        if chosen:
            return chosen
        best = request.accept_languages.best_match(current_app.config["LANGUAGES"])
        if best:
            return best
    return current_app.config["DEFAULT_LOCALE"]


def percent_text(fraction: float, decimals: int = 1) -> str:
    """A percentage in the page's locale, with up to `decimals` digits: "63,8 %" (sv), "63.8%"
    (en), "100 %"."""
    from babel import Locale
    from flask_babel import format_percent, get_locale

    pattern = Locale.parse(format_locale(str(get_locale() or "sv"))).percent_formats[None].pattern
    if round(fraction * 100, decimals) == round(fraction * 100):  # whole: "100 %", not "100,0 %"
        decimals = 0
    if decimals:
        pattern = pattern.replace("0%", "0." + "0" * decimals + "%", 1).replace(
            "0\xa0%", "0." + "0" * decimals + "\xa0%", 1)
    return format_percent(fraction, pattern)


# The locale whose conventions format dates and numbers for a language: English readers here
# are European (day before month, 24-hour clock), not American.
FORMAT_LOCALES = {"en": "en_GB"}


def format_locale(language: str | None = None) -> str:
    """The Babel locale for formatting in `language` (default: the request's language)."""
    if language is None:
        from flask_babel import get_locale

        language = str(get_locale() or current_app.config["DEFAULT_LOCALE"])
    return FORMAT_LOCALES.get(language, language)


def moment_text(value: datetime | None, language: str | None = None) -> str:
    """A moment, short, in TIMEZONE: "mån 7 dec. 07:00" / "Mon 7 Dec 07:00"; the year is added
    when it is not this year. The one style of every time shown on a page."""
    if value is None:
        return ""
    from babel.dates import format_skeleton, format_time

    from newsletter.engine.clock import as_utc

    locale = format_locale(language)
    local = local_time(as_utc(value))
    now = local_time(datetime.now(local.tzinfo))
    day = format_skeleton("MMMEd" if local.year == now.year else "yMMMd", local, locale=locale, fuzzy=True)
    return f"{day} {format_time(local, 'HH:mm', locale=locale)}"


def day_text(value: datetime | date | None, language: str | None = None) -> str:
    """A day: "7 december 2026" / "7 December 2026". The one style of a date (the archive, the
    digest's dateline) on pages and in emails."""
    if value is None:
        return ""
    from babel.dates import format_date

    if isinstance(value, datetime):
        from newsletter.engine.clock import as_utc

        value = local_time(as_utc(value)).date()
    return format_date(value, "d MMMM y", locale=format_locale(language))


def select_timezone() -> str:
    return current_app.config["TIMEZONE"]


def local_time(value: datetime) -> datetime:
    return value.astimezone(ZoneInfo(current_app.config["TIMEZONE"]))


def remember_language(response):
    """Keep an explicit ?lang= choice in a cookie, so the visible switch sticks."""
    chosen = supported(request.args.get("lang"))
    if chosen and request.cookies.get(LANG_COOKIE) != chosen:
        response.set_cookie(LANG_COOKIE, chosen, max_age=365 * 24 * 3600, samesite="Lax",
                            httponly=True)
    return response


def register_template_helpers(app: Flask) -> None:
    app.after_request(remember_language)

    @app.template_filter("localtime")
    def localtime_filter(value: datetime, fmt: str | None = None) -> str:
        """Every time on a page in one short style (`fmt` is accepted and ignored)."""
        return moment_text(value)

    app.add_template_filter(day_text, "day")

    app.add_template_filter(localized, "localized")
    app.add_template_filter(percent_text, "percent")

    @app.template_filter("number")
    def number_filter(value) -> str:
        from flask_babel import format_number

        return format_number(value or 0)

    @app.template_filter("format_number")
    def format_number_filter(value: int) -> str:
        from flask_babel import format_number

        return format_number(value)

    @app.context_processor
    def locale_context():
        from flask_babel import get_locale

        return {"current_locale": str(get_locale() or app.config["DEFAULT_LOCALE"])}
