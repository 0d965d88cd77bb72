"""Helpers of the admin content tests (articles, feeds, digest, sends): log in, CSRF, data."""

from __future__ import annotations

import re
from datetime import timedelta
from html.parser import HTMLParser

from newsletter.admins import accounts
from newsletter.digests import articles
from newsletter.engine.clock import utcnow
from newsletter.extensions import db
from newsletter.models import Subscriber
from newsletter.subscriptions.topics import ensure_topics, topics_by_slugs

PASSWORD = "correct horse battery staple 42"
XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'
CSRF_RE = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


def make_admin(app, email: str = "redaktor@norrsken.example", role: str = "editor"):
    with app.app_context():
        admin = accounts.create_admin(email, PASSWORD, role=role)
        return admin.id, admin.get_id()


def log_in(client, app, email: str = "redaktor@norrsken.example", role: str = "editor") -> int:
    """Create an admin of `role` and log the client in as them through the real login form."""
    admin_id, _ = make_admin(app, email, role)
    page = client.get("/admin/login")
    response = client.post("/admin/login", data={
        "email": email, "password": PASSWORD, "csrf_token": csrf_of(page.get_data(as_text=True)),
    })
    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    return admin_id


def csrf_of(html: str) -> str:
    match = CSRF_RE.search(html)
    assert match, "no CSRF token on the page"
    return match.group(1)


def csrf(client, url: str = "/admin/articles") -> str:
    """A CSRF token of this client's session, read from an admin page."""
    return csrf_of(client.get(url).get_data(as_text=True))


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


def add_subscribers(count: int, *, language: str = "sv", topics: tuple[str, ...] = (),
                    prefix: str = "person"):
    ensure_topics()
    chosen = topics_by_slugs(topics) if topics else []
    for n in range(count):
        db.session.add(Subscriber(email=f"{prefix}{n}@example.se", language=language, status="confirmed",
                                  confirmed_at=utcnow(), topics=list(chosen)))
    db.session.commit()


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
