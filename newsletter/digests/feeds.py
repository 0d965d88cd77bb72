"""RSS/Atom feeds: registering them and polling them into articles."""

from __future__ import annotations

import calendar
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from flask import current_app
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from newsletter.digests.articles import _topic, first_image, plain_text, safe_url, sanitise_html, summary_text
from newsletter.engine import counters
from newsletter.engine.clock import utcnow
from newsletter.extensions import db
from newsletter.models import Article, Feed
from newsletter.subscriptions.topics import topic_for_category

log = logging.getLogger(__name__)

FETCH_TIMEOUT = 20  # seconds, connect and read: a hanging site never holds up the digest


USER_AGENT = "newsletter-digest/1.0 (+feed reader)"


@dataclass
class FetchResult:
    """What one poll of one feed did."""

    feed_id: int
    url: str
    status: str  # "ok", "not-modified" or "error"
    added: int = 0
    updated: int = 0
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status != "error"


def add_feed(url: str, *, topic_slug: str | None = None) -> Feed:
    """Register a feed (idempotent by URL); `topic_slug` puts all its articles in that topic."""
    url = (url or "").strip()
    if not safe_url(url):
        raise ValueError(f"not an http(s) URL: {url!r}")
    topic = _topic(topic_slug)
    feed = db.session.execute(select(Feed).where(Feed.url == url)).scalar_one_or_none()
    if feed is None:
        feed = Feed(url=url)
        db.session.add(feed)
    if topic is not None:
        feed.topic = topic
    db.session.commit()
    return feed


def ensure_configured_feeds() -> list[Feed]:
    """Every URL in FEED_URLS as a Feed row; all feeds."""
    known = set(db.session.execute(select(Feed.url)).scalars())
    for url in current_app.config.get("FEED_URLS") or []:
        if url not in known:
            try:
                add_feed(url)
            except (ValueError, IntegrityError) as exc:  # a bad setting, or another process added it
                db.session.rollback()
                log.warning("FEED_URLS entry %r not registered: %s", url, exc)
    return list(db.session.execute(select(Feed).order_by(Feed.id)).scalars())


def fetch_all_feeds(now: datetime | None = None) -> list[FetchResult]:
    """Poll every feed that is not paused; a broken one is logged and skipped, never stops the others."""
    return [fetch_feed(feed, now=now) for feed in ensure_configured_feeds() if not feed.paused]


def poll_feeds(now: datetime | None = None, *, time_limit: float, fresh_seconds: float = 0,
               ) -> list[FetchResult]:
    """Poll every feed that is not paused within `time_limit` seconds in all (before a digest
    is compiled).

    Feeds polled less than `fresh_seconds` ago are left as they are (a preview followed by
    "send now" polls once). A feed not reached in time is reported as an error, like a broken one.
    """
    started = time.monotonic()
    results = []
    fresh_after = (now or utcnow()) - timedelta(seconds=fresh_seconds)
    for feed in ensure_configured_feeds():
        if feed.paused:
            continue
        if fresh_seconds and feed.last_fetched_at and feed.last_fetched_at >= fresh_after:
            continue
        left = time_limit - (time.monotonic() - started)
        if left <= 0.5:
            results.append(FetchResult(feed_id=feed.id, url=feed.url, status="error",
                                       error="not polled: the time limit was reached"))
            continue
        results.append(fetch_feed(feed, now=now, timeout=min(FETCH_TIMEOUT, left)))
    return results


# The admin's preview, its "send now" and the API poll the feeds too, but not the ones polled less
# than this many seconds ago: looking at the preview and then sending polls once.
WEB_POLL_FRESH_SECONDS = 60


def poll_feeds_first(now: datetime | None = None, *, fresh_seconds: float = 0) -> list[FetchResult]:
    """Poll the feeds before the coming digest is compiled, previewed or tested, within
    DIGEST_FETCH_SECONDS; what each feed did (failed ones have `ok` False)."""
    return poll_feeds(now, time_limit=current_app.config["DIGEST_FETCH_SECONDS"],
                      fresh_seconds=fresh_seconds)


def fetch_feed(feed: Feed, *, now: datetime | None = None, timeout: float = FETCH_TIMEOUT) -> FetchResult:
    """Poll one feed with a conditional GET and store its new or changed entries."""
    # Imported here: only the feed poller needs them, not a web worker or a sending process.
    import feedparser
    import requests

    now = now or utcnow()
    result = FetchResult(feed_id=feed.id, url=feed.url, status="ok")
    headers = {"User-Agent": USER_AGENT, "Accept": "application/rss+xml, application/atom+xml, */*;q=0.5"}
    if feed.etag:
        headers["If-None-Match"] = feed.etag
    if feed.modified:
        headers["If-Modified-Since"] = feed.modified
    try:
        response = requests.get(feed.url, headers=headers, timeout=timeout)
        if response.status_code == 304:
            result.status = "not-modified"
        else:
            response.raise_for_status()
            parsed = feedparser.parse(response.content, response_headers=dict(response.headers))
            if not parsed.get("version") and not parsed.entries:
                raise ValueError(f"not an RSS or Atom feed ({parsed.get('bozo_exception') or 'no entries'})")
            feed.title = plain_text(parsed.feed.get("title"), 300) or feed.title
            for entry in parsed.entries:
                if _store_entry(feed, entry, now, base=response.url):
                    result.added += 1
                else:
                    result.updated += 1
            feed.etag = response.headers.get("ETag") or None
            feed.modified = response.headers.get("Last-Modified") or None
    except (requests.RequestException, ValueError) as exc:
        db.session.rollback()
        result.status, result.error = "error", f"{exc.__class__.__name__}: {exc}"[:1000]
        log.warning("feed %s skipped: %s", feed.url, result.error)
    feed.last_fetched_at = now
    feed.last_status = result.status
    feed.last_error = result.error
    db.session.commit()
    counters.feed_polled(result.status)
    return result


def _entry_time(entry) -> datetime | None:
    for key in ("published_parsed", "updated_parsed"):
        value = entry.get(key)
        if value:
            return datetime.fromtimestamp(calendar.timegm(value), UTC)
    return None


def _entry_fields(feed: Feed, entry, base: str) -> dict:
    link = safe_url(entry.get("link"), base)
    body = sanitise_html(entry.content[0].value if entry.get("content") else "")
    image_url, image_alt = first_image(body, base)
    if not image_url:
        for enclosure in entry.get("enclosures", []) + entry.get("media_content", []):
            if str(enclosure.get("type", "")).startswith("image/") or enclosure.get("medium") == "image":
                image_url = safe_url(enclosure.get("href") or enclosure.get("url"), base)
                if image_url:
                    break
    title = plain_text(entry.get("title"), 500)
    categories = [tag.get("term") or "" for tag in entry.get("tags", [])]
    return {
        "title": title or link,
        "url": link,
        "summary": summary_text(entry.get("summary")),
        "body_html": body,
        "image_url": image_url,
        "image_alt": image_alt or (title if image_url else ""),
        "author": plain_text(entry.get("author"), 200),
        "topic": feed.topic or topic_for_category(categories),
    }


def _store_entry(feed: Feed, entry, now: datetime, base: str) -> bool:
    """Insert or update the article of one feed entry; True when it is new."""
    fields = _entry_fields(feed, entry, base)
    source_id = (entry.get("id") or fields["url"] or "").strip()[:1000]
    if not source_id or not fields["url"]:
        log.info("feed %s: entry without id or link skipped", feed.url)
        return False
    published = _entry_time(entry)
    article = db.session.execute(select(Article).where(Article.source_id == source_id)).scalar_one_or_none()
    if article is None:
        article = Article(source_id=source_id, feed_id=feed.id, collected_at=now,
                          published_at=published or now, **fields)
        try:
            with db.session.begin_nested():  # another poller may insert the same guid at once
                db.session.add(article)
        except IntegrityError:
            article = db.session.execute(select(Article).where(Article.source_id == source_id)).scalar_one()
        else:
            return True
    for name, value in fields.items():
        # A later version without a body or image (a truncated feed) keeps the ones it had.
        if value or name not in ("body_html", "image_url", "image_alt"):
            setattr(article, name, value)
    if published:  # an undated item keeps the time it was first collected
        article.published_at = published
    return False
