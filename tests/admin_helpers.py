"""Plain helpers for the admin tests (not fixtures)."""

from __future__ import annotations

import re
from datetime import timedelta
from html.parser import HTMLParser

from sqlalchemy import func, select

from newsletter.admins import accounts
from newsletter.digests import articles
from newsletter.engine.clock import utcnow
from newsletter.extensions import db
from newsletter.models import AuditEvent, Subscriber, Topic
from newsletter.subscriptions.topics import ensure_topics

PASSWORD = "a long enough passphrase"
CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"|value="([^"]+)"[^>]*name="csrf_token"')


def make_admin(app, email: str = "boss@example.org", role: str = "admin", password: str = PASSWORD) -> int:
    with app.app_context():
        return accounts.create_admin(email, password, role=role).id


def csrf_token(client, url: str = "/admin/login") -> str:
    """The CSRF token of the form on `url` (the session's token: any page's works for any form;
    logged in, the login page leads to the dashboard)."""
    html = client.get(url, follow_redirects=True).get_data(as_text=True)
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
    ensure_topics()
    chosen = list(db.session.execute(select(Topic).where(Topic.slug.in_(topics))).scalars()) if topics else []
    rows = [
        Subscriber(
            email=f"{prefix}{i}@example.org",
            name=f"{prefix} {i}",
            status=status,
            language=language,
            confirmed_at=utcnow() if status == "confirmed" else None,
            topics=list(chosen),
        )
        for i in range(n)
    ]
    db.session.add_all(rows)
    db.session.commit()
    return [row.id for row in rows]


XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def log_in(client, app, email: str = "redaktor@norrsken.example", role: str = "editor") -> int:
    """Create an admin of `role` and log `client` in as them through the real login form."""
    admin_id = make_admin(app, email, role)
    response = login(client, email)
    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    return admin_id


def add_article(title: str, *, topic: str = "nyheter", days_ago: float = 1, summary: str = "Sammanfattning.",
                url: str | None = None):
    ensure_topics()
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:40] or "x"
    article = articles.add_article(
        title="placeholder", url=url or f"https://norrsken.example/{slug}-{utcnow().timestamp()}",
        summary="placeholder", topic_slug=topic, published=utcnow() - timedelta(days=days_ago))
    # Stored as given: titles are plain text, so whatever is in them must be escaped on output
    # (entities in a feed's title, e.g. "&lt;script&gt;", are decoded into exactly this).
    article.title, article.summary = title, summary
    db.session.commit()
    return article


class _TagCollector(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def injected(html: str, scripts_allowed: tuple[str, ...] = ()) -> list[str]:
    """What of an XSS payload became markup: <script> elements (other than our own static
    scripts), event-handler attributes, javascript: URLs, an <img src=x>. Empty when escaped."""
    parser = _TagCollector()
    parser.feed(html)
    found = []
    for tag, attrs in parser.tags:
        if tag == "script" and not any((attrs.get("src") or "").endswith(name) for name in scripts_allowed):
            found.append(f"<script {attrs}>")
        for name, value in attrs.items():
            if name.startswith("on"):
                found.append(f"<{tag} {name}=…>")
            if (value or "").strip().lower().startswith("javascript:"):
                found.append(f"<{tag} {name}=javascript:…>")
        if tag == "img" and attrs.get("src") == "x":
            found.append("<img src=x>")
    return found
