"""Helpers for the API tests: tokens, authorised requests, test data (plain functions)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from newsletter.admins import api_tokens
from newsletter.engine.clock import utcnow
from newsletter.extensions import db
from newsletter.models import AuditEvent, Subscriber
from newsletter.subscriptions.topics import ensure_topics, topics_by_slugs

API = "/api/v1"


def make_token(app, role: str = "admin", name: str | None = None) -> str:
    """A fresh token's plaintext."""
    with app.app_context():
        _, plaintext = api_tokens.create_token(name or f"test {role}", role)
    return plaintext


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


class Api:
    """A test client that sends the bearer token and speaks JSON."""

    def __init__(self, client, token: str):
        self.client, self.token = client, token

    def __getattr__(self, method: str):
        if method not in ("get", "post", "patch", "delete", "put"):
            raise AttributeError(method)

        def call(path: str, **kwargs):
            headers = {**auth(self.token), **kwargs.pop("headers", {})}
            return getattr(self.client, method)(API + path, headers=headers, **kwargs)

        return call


def add_subscriber(email: str, *, status: str = "confirmed", language: str = "sv",
                   topics: tuple[str, ...] = ()) -> Subscriber:
    ensure_topics()
    person = Subscriber(email=email, status=status, language=language,
                        topics=topics_by_slugs(topics) if topics else [],
                        confirmed_at=utcnow() if status == "confirmed" else None)
    db.session.add(person)
    db.session.commit()
    return person


def audit_actions() -> list[str]:
    db.session.expire_all()
    return list(db.session.execute(select(AuditEvent.action).order_by(AuditEvent.id)).scalars())


def recent(days: float = 1) -> str:
    return (datetime.now(UTC) - timedelta(days=days)).isoformat()


def csrf_token(html: str) -> str:
    import re

    match = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def log_in(app, client, email: str, role: str = "admin", password: str = "a long test password") -> None:
    """Create an admin of `role` and log in through the real login form."""
    from newsletter.admins import accounts

    with app.app_context():
        accounts.create_admin(email, password, role=role)
    page = client.get("/admin/login")
    response = client.post("/admin/login", data={
        "csrf_token": csrf_token(page.get_data(as_text=True)), "email": email, "password": password})
    assert response.status_code == 302, response.get_data(as_text=True)[:500]


def wait_for_status(api, digest_id: int, statuses: tuple[str, ...], timeout: float = 20) -> dict:
    """Poll GET /digests/<id> until its status is one of `statuses`."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        body = api.get(f"/digests/{digest_id}").get_json()
        if body["status"] in statuses or time.monotonic() > deadline:
            return body
        time.sleep(0.05)
