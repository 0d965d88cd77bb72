"""Articles: feed ingestion (requests + feedparser), hand-made articles, sanitising (nh3).

Titles and summaries are stored as plain text (tags stripped, entities
unescaped); templates escape them on output. The optional body is HTML that has
been through nh3: no scripts, no event handlers, only http(s)/mailto links.
Feedparser sanitises too, but we never rely on a parser's side effect for safety.
"""

from __future__ import annotations

import html
import logging
import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit
from zoneinfo import ZoneInfo

import nh3
from flask import current_app
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from newsletter.engine.clock import utcnow
from newsletter.extensions import db
from newsletter.models import Article, Topic
from newsletter.subscriptions.topics import ensure_topics, topic_for_category, topics_by_slugs

log = logging.getLogger(__name__)

URL_SCHEMES = {"http", "https", "mailto"}
BODY_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "cite", "code", "em", "figcaption", "figure", "h2", "h3",
    "h4", "hr", "i", "img", "li", "ol", "p", "pre", "q", "s", "small", "strong", "sub", "sup", "u", "ul",
}
BODY_ATTRIBUTES = {"a": {"href", "title"}, "img": {"src", "alt", "width", "height"}, "abbr": {"title"}}


# --- sanitising ------------------------------------------------------------------


def plain_text(value: str | None, limit: int | None = None) -> str:
    """HTML or text from a feed as one line of plain text: tags (and script content) gone, entities
    decoded, whitespace collapsed."""
    if not value:
        return ""
    text = html.unescape(nh3.clean(value, tags=set(), attributes={}))
    text = " ".join(text.split())
    if limit and len(text) > limit:
        text = text[: limit - 1].rsplit(" ", 1)[0] + "…"
    return text


def summary_text(value: str | None, limit: int = 600) -> str:
    """A summary as plain text; WordPress's trailing "[…]" becomes an ellipsis."""
    text = plain_text(value, limit)
    text = re.sub(r"\s*\[(?:…|\.\.\.)\]$", "…", text)
    return text


def sanitise_html(value: str | None) -> str:
    """Body HTML safe for an email or page: a small tag set, http(s)/mailto URLs only."""
    if not value:
        return ""
    return nh3.clean(
        value,
        tags=BODY_TAGS,
        attributes=BODY_ATTRIBUTES,
        url_schemes=URL_SCHEMES,
        link_rel="noopener noreferrer",
        strip_comments=True,
    ).strip()


def safe_url(value: str | None, base: str = "") -> str:
    """An absolute http(s) URL, or "" for anything else (javascript:, data:, junk)."""
    if not value:
        return ""
    url = urljoin(base, value.strip()) if base else value.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return ""
    return url


class _FirstImage(HTMLParser):
    def __init__(self):
        super().__init__()
        self.src = ""
        self.alt = ""

    def handle_starttag(self, tag, attrs):
        if tag == "img" and not self.src:
            values = dict(attrs)
            self.src = values.get("src") or ""
            self.alt = values.get("alt") or ""


def first_image(body_html: str, base: str = "") -> tuple[str, str]:
    """(src, alt) of the first image in already sanitised HTML."""
    parser = _FirstImage()
    parser.feed(body_html)
    return safe_url(parser.src, base), plain_text(parser.alt, 500)


# --- feeds -------------------------------------------------------------------------


def _topic(slug: str | None) -> Topic | None:
    if not slug:
        return None
    ensure_topics()
    return topics_by_slugs([slug])[0]


# --- hand-made articles ----------------------------------------------------------------


def _aware(value: datetime | str | None) -> datetime | None:
    """A tz-aware datetime; ISO strings and naive values are read as TIMEZONE local time."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError as exc:
            raise ValueError(f"not an ISO date or time: {value!r}") from exc
    if value.tzinfo is None:
        value = value.replace(tzinfo=ZoneInfo(current_app.config["TIMEZONE"]))
    return value.astimezone(UTC)


def _clean_fields(fields: dict) -> dict:
    clean: dict = {}
    if "title" in fields:
        clean["title"] = plain_text(fields["title"], 500)
        if not clean["title"]:
            raise ValueError("the title is empty")
    if "url" in fields:
        clean["url"] = safe_url(fields["url"])
        if not clean["url"]:
            raise ValueError(f"not an http(s) URL: {fields['url']!r}")
    if "summary" in fields:
        clean["summary"] = summary_text(fields["summary"], 2000)
    if "body_html" in fields:
        clean["body_html"] = sanitise_html(fields["body_html"])
    if "author" in fields:
        clean["author"] = plain_text(fields["author"], 200)
    if "image_url" in fields:
        clean["image_url"] = safe_url(fields["image_url"])
    if "image_alt" in fields:
        clean["image_alt"] = plain_text(fields["image_alt"], 500)
    if "topic_slug" in fields:
        clean["topic"] = _topic(fields["topic_slug"]) or topic_for_category([])
    if "published" in fields:
        clean["published_at"] = _aware(fields["published"]) or utcnow()
    if "hidden" in fields:
        clean["hidden"] = bool(fields["hidden"])
    return clean


def add_article(*, title: str, url: str, summary: str = "", topic_slug: str | None = None,
                published: datetime | str | None = None, author: str = "", image_url: str = "",
                image_alt: str = "", body_html: str = "", now: datetime | None = None) -> Article:
    """An article that is in no feed. ValueError for bad input or a URL already known."""
    clean = _clean_fields({
        "title": title, "url": url, "summary": summary, "topic_slug": topic_slug, "author": author,
        "image_url": image_url, "image_alt": image_alt, "body_html": body_html,
    })
    now = now or utcnow()
    clean["published_at"] = _aware(published) or now
    if db.session.execute(select(Article.id).where(Article.source_id == clean["url"])).first():
        raise ValueError(f"an article with the URL {clean['url']} exists already")
    article = Article(source_id=clean["url"], collected_at=now, **clean)
    db.session.add(article)
    try:
        db.session.commit()
    except IntegrityError as exc:
        db.session.rollback()
        raise ValueError(f"an article with the URL {clean['url']} exists already") from exc
    return article


def update_article(article: Article, **fields) -> Article:
    """Change an article's fields (same names as add_article, plus `hidden`)."""
    allowed = {"title", "url", "summary", "topic_slug", "published", "author", "image_url", "image_alt",
               "body_html", "hidden"}
    unknown = set(fields) - allowed
    if unknown:
        raise ValueError(f"unknown article field: {', '.join(sorted(unknown))}")
    for name, value in _clean_fields(fields).items():
        setattr(article, name, value)
    db.session.commit()
    return article


def set_hidden(article: Article, hidden: bool) -> Article:
    """Leave an article out of (or put it back into) the coming digest."""
    article.hidden = hidden
    db.session.commit()
    return article


def recent_articles(days: int = 30) -> list[Article]:
    cutoff = utcnow() - timedelta(days=days)
    return list(db.session.execute(
        select(Article).where(Article.published_at >= cutoff).order_by(Article.published_at.desc())
    ).scalars())


def upsert_article(*, source_id: str | None = None, now: datetime | None = None,
                   **fields) -> tuple[Article, bool]:
    """Create or update an article pushed by a website (the API); (article, created).

    Matched by `source_id` when given, else by URL (as source id, or as the URL of an article
    that a feed brought in). Fields are sanitised like feed input. ValueError for bad input.
    """
    allowed = {"title", "url", "summary", "topic_slug", "published", "author", "image_url", "image_alt",
               "body_html", "hidden"}
    unknown = set(fields) - allowed
    if unknown:
        raise ValueError(f"unknown article field: {', '.join(sorted(unknown))}")
    clean = _clean_fields(fields)
    key = (source_id or "").strip()[:1000] or clean.get("url", "")
    if not key:
        raise ValueError("an article needs a source id or URL")
    article = _article_by_key(key, by_url=not source_id)
    if article is None:
        if "title" not in clean or "url" not in clean:
            raise ValueError("a new article needs a title and a URL")
        now = now or utcnow()
        clean.setdefault("published_at", now)
        if "topic" not in clean:
            clean["topic"] = topic_for_category([])
        article = Article(source_id=key, collected_at=now, **clean)
        try:
            with db.session.begin_nested():  # the same post pushed twice at once: one row
                db.session.add(article)
        except IntegrityError:
            article = _article_by_key(key, by_url=False)
        else:
            db.session.commit()
            return article, True
    for name, value in clean.items():
        setattr(article, name, value)
    db.session.commit()
    return article, False


def _article_by_key(key: str, *, by_url: bool) -> Article | None:
    article = db.session.execute(select(Article).where(Article.source_id == key)).scalar_one_or_none()
    if article is None and by_url:
        article = db.session.execute(
            select(Article).where(Article.url == key).order_by(Article.id).limit(1)
        ).scalar_one_or_none()
    return article
