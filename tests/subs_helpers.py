"""Plain helpers for the subscription tests (not fixtures)."""

from __future__ import annotations

import re

from sqlalchemy import func, select

from newsletter.extensions import db
from newsletter.models import ConsentEvent, QueuedEmail, Subscriber

CONFIRM_LINK = re.compile(r"https?://[^\s\"'<>]+/confirm/[A-Za-z0-9_.\-]+")


def form_fields(html: str) -> dict[str, str]:
    """The hidden inputs of a page (csrf_token, started)."""
    fields = {}
    for tag in re.findall(r"<input[^>]*type=\"hidden\"[^>]*>", html):
        name = re.search(r'name="([^"]+)"', tag)
        value = re.search(r'value="([^"]*)"', tag)
        if name:
            fields[name.group(1)] = value.group(1) if value else ""
    return fields


def signup(client, email: str, *, topics=("nyheter",), language="sv", headers=None, **extra):
    """GET the form (for its CSRF token and stamp) and POST it like a browser."""
    page = client.get("/subscribe", headers=headers or {})
    data = {**form_fields(page.get_data(as_text=True)), "email": email, "topics": list(topics),
            "language": language, "website": ""}
    data.update(extra)
    return client.post("/subscribe", data=data, headers=headers or {})


def count(model, *where) -> int:
    return db.session.execute(select(func.count()).select_from(model).where(*where)).scalar_one()


def nothing_stored() -> bool:
    return count(Subscriber) == 0 and count(QueuedEmail) == 0 and count(ConsentEvent) == 0


def subscriber(email: str) -> Subscriber | None:
    db.session.expire_all()
    return db.session.execute(select(Subscriber).where(Subscriber.email == email)).scalar_one_or_none()


def confirm_links(text: str) -> set[str]:
    return set(CONFIRM_LINK.findall(text))
