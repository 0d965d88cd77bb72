"""Plain helpers for the admin tests (not fixtures)."""

from __future__ import annotations

import re

from sqlalchemy import func, select

from newsletter.admins import accounts
from newsletter.extensions import db
from newsletter.models import AuditEvent, Subscriber, Topic

PASSWORD = "a long enough passphrase"
CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"|value="([^"]+)"[^>]*name="csrf_token"')


def make_admin(app, email: str = "boss@example.org", role: str = "admin", password: str = PASSWORD) -> int:
    with app.app_context():
        return accounts.create_admin(email, password, role=role).id


def csrf_token(client, url: str = "/admin/login") -> str:
    """The CSRF token of the form on `url` (the session's token: any page's works for any form)."""
    html = client.get(url).get_data(as_text=True)
    match = CSRF.search(html)
    assert match, f"no csrf_token on {url}"
    return match.group(1) or match.group(2)


def login(client, email: str = "boss@example.org", password: str = PASSWORD):
    return client.post(
        "/admin/login", data={"csrf_token": csrf_token(client), "email": email, "password": password}
    )


def logged_in(app, role: str = "admin", email: str | None = None):
    """A new test client logged in as a new admin of `role`."""
    email = email or f"{role}@example.org"
    make_admin(app, email, role)
    client = app.test_client()
    response = login(client, email)
    assert response.status_code == 302, response.get_data(as_text=True)
    return client


def post_form(client, url: str, data: dict | None = None, page: str | None = None):
    """POST like a browser: with the CSRF token of the page the form is on."""
    return client.post(url, data={"csrf_token": csrf_token(client, page or "/admin/"), **(data or {})})


def count(model, *where) -> int:
    return db.session.execute(select(func.count()).select_from(model).where(*where)).scalar_one()


def audit_actions() -> list[tuple[str, str, str]]:
    """(actor, action, target) of every audit row, oldest first."""
    db.session.expire_all()
    return [
        (e.actor, e.action, e.target)
        for e in db.session.execute(select(AuditEvent).order_by(AuditEvent.id)).scalars()
    ]


def add_subscribers(
    n: int,
    *,
    status: str = "confirmed",
    language: str = "sv",
    topics: tuple[str, ...] = (),
    prefix: str = "person",
) -> list[int]:
    """`n` subscribers inserted directly (fast), returning their ids in insertion order."""
    from newsletter.subscriptions.topics import ensure_topics

    ensure_topics()
    chosen = list(db.session.execute(select(Topic).where(Topic.slug.in_(topics))).scalars()) if topics else []
    rows = [
        Subscriber(
            email=f"{prefix}{i}@example.org",
            name=f"{prefix} {i}",
            status=status,
            language=language,
            topics=list(chosen),
        )
        for i in range(n)
    ]
    db.session.add_all(rows)
    db.session.commit()
    return [row.id for row in rows]
