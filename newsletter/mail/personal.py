"""Each subscriber's personal links (unsubscribe, preferences) as slot values of a bulk message."""

from __future__ import annotations

from flask import current_app

from newsletter.engine.links import PersonalLinks


def personal_links() -> PersonalLinks:
    """The app's personal links (one per public URL and secret key: the signers derive keys)."""
    config = current_app.config
    key = (config["PUBLIC_URL"], config["SECRET_KEY"])
    links = _links.get(key)
    if links is None:
        links = _links[key] = PersonalLinks(*key)
    return links


_links: dict[tuple[str, str], PersonalLinks] = {}


def personal_values(subscriber) -> dict[str, str]:
    """The per-recipient slot values of a bulk message."""
    return personal_links().values(subscriber)
