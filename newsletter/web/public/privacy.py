"""The public privacy page: what is kept, why, for how long (the settings in force), and rights."""

from __future__ import annotations

from flask import current_app, render_template

from newsletter.subscriptions import consent
from newsletter.web.public import bp

# The consent wording of the form, as stored for the proof (consent.store_wording).
bp.add_app_template_global(consent.consent_wording, "consent_wording")


@bp.app_template_global()
def privacy_url(locale: str | None = None) -> str:
    """The privacy page's absolute address (emails link to it), in a language if given."""
    base = f"{current_app.config['PUBLIC_URL']}/privacy"
    return f"{base}?lang={locale}" if locale else base


@bp.get("/privacy")
def privacy():
    """What we keep, why and for how long, and how to get a copy or erase it."""
    config = current_app.config
    return render_template(
        "public/privacy.html", pending_days=config["RETENTION_PENDING_DAYS"],
        inactive_days=config["RETENTION_INACTIVE_DAYS"], deliveries_days=config["RETENTION_DELIVERIES_DAYS"],
        clicks=config["STATS_CLICKS"], sender=config["MAIL_FROM"])
