"""RSS/Atom feeds: registering them and polling them into articles."""

from __future__ import annotations

import calendar
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http import HTTPStatus

from flask import current_app
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from newsletter.digests import feed_http
from newsletter.digests.articles import (
    CONTROL_CHARACTERS,
    _topic,
    first_image,
    plain_text,
    safe_url,
    sanitise_html,
    summary_text,
)
from newsletter.engine import counters
from newsletter.engine.clock import utcnow
from newsletter.extensions import db
from newsletter.models import Article, Feed
from newsletter.subscriptions.topics import ensure_topics, topic_for_category

log = logging.getLogger(__name__)

FETCH_TIMEOUT = 20  # seconds in all for one feed (FEED_TIMEOUT_SECONDS): a hanging site waits no longer


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


def allowed_networks(url: str) -> list[feed_http.IPNetwork] | None:
    """What a feed at `url` may reach: None (anything) for the operator's FEED_URLS, else public
    addresses and FEED_ALLOW_NETWORKS."""
    config = current_app.config
    if url in (config.get("FEED_URLS") or []):
        return None
    return feed_http.parse_networks(config.get("FEED_ALLOW_NETWORKS") or [])


def add_feed(url: str, *, topic_slug: str | None = None, trusted: bool = False) -> Feed:
    """Register a feed (idempotent by URL); `topic_slug` puts all its articles in that topic.

    A feed added by an editor (not `trusted`) must be on a public address (FEED_ALLOW_NETWORKS
    aside); ValueError otherwise, with a reason that says nothing of what is at that address.
    """
    url = CONTROL_CHARACTERS.sub("", url or "").strip()
    if not safe_url(url):
        raise ValueError(f"not an http(s) URL: {url!r}")
    if not trusted:
        try:
            feed_http.check_url(url, allowed_networks(url))
        except feed_http.FetchError as exc:
            raise ValueError(str(exc)) from exc
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
                add_feed(url, trusted=True)
            except (ValueError, IntegrityError) as exc:  # a bad setting, or another process added it
                db.session.rollback()
                log.warning("FEED_URLS entry %r not registered: %s", url, exc)
    return list(db.session.execute(select(Feed).order_by(Feed.id)).scalars())


def fetch_all_feeds(now: datetime | None = None) -> list[FetchResult]:
    """Poll every feed that is not paused, each on its own: a broken one is recorded and skipped,
    never stops the others (nor the digest after them: this never raises)."""
    try:
        feeds = ensure_configured_feeds()
    except Exception:  # noqa: BLE001 - the digest goes on with the articles it has
        db.session.rollback()
        log.exception("the feeds could not be listed: none polled")
        return []
    return [fetch_feed(feed, now=now) for feed in feeds if not feed.paused]


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


def fetch_feed(feed: Feed, *, now: datetime | None = None, timeout: float | None = None) -> FetchResult:
    """Poll one feed with a conditional GET and store its new or changed entries.

    Never raises: whatever goes wrong (HTTP, size, time, parsing, the database) is recorded on
    the feed as its last error, and the feed's last success stays what it was.
    """
    now = now or utcnow()
    feed_id, url = feed.id, feed.url
    result = FetchResult(feed_id=feed_id, url=url, status="ok")
    try:
        _poll(feed, result, now, timeout)
        db.session.flush()
    except Exception as exc:  # noqa: BLE001 - any failure of one feed is that feed's, recorded on it
        db.session.rollback()
        result.status, result.added, result.updated = "error", 0, 0
        result.error = _describe(exc)
        log.warning("feed %s skipped: %s", url, result.error)
    try:
        _record(feed_id, result, now)
    except Exception:  # noqa: BLE001 - even a database that fails here must not stop the other feeds
        db.session.rollback()
        log.exception("feed %s: its poll could not be recorded", url)
    counters.feed_polled(result.status)
    return result


def _describe(exc: BaseException) -> str:
    """An error as an editor sees it (and `feeds list` prints): short, and for a database error
    without the statement and its values."""
    if isinstance(exc, SQLAlchemyError):
        return f"{exc.__class__.__name__}: the entries could not be stored"[:1000]
    return f"{exc.__class__.__name__}: {exc}"[:1000]


def _record(feed_id: int, result: FetchResult, now: datetime) -> None:
    feed = db.session.get(Feed, feed_id)
    if feed is None:  # removed meanwhile
        return
    feed.last_fetched_at = now
    feed.last_status = result.status
    feed.last_error = result.error
    if result.ok:
        feed.last_success_at = now
    db.session.commit()


def _poll(feed: Feed, result: FetchResult, now: datetime, timeout: float | None) -> None:
    # Imported here: only the feed poller needs it, not a web worker or a sending process.
    import feedparser

    config = current_app.config
    headers = {"User-Agent": USER_AGENT, "Accept": "application/rss+xml, application/atom+xml, */*;q=0.5"}
    if feed.etag:
        headers["If-None-Match"] = feed.etag
    if feed.modified:
        headers["If-Modified-Since"] = feed.modified
    seconds = config.get("FEED_TIMEOUT_SECONDS") or FETCH_TIMEOUT
    limits = feed_http.Limits(max_bytes=config.get("FEED_MAX_BYTES") or 5 * 1024 * 1024,
                              seconds=min(seconds, timeout) if timeout else seconds)
    response = feed_http.fetch(feed.url, headers=headers, limits=limits, allow=allowed_networks(feed.url))
    if response.status == 304:
        result.status = "not-modified"
        return
    if response.status >= 400:  # worded like requests' HTTPError, which editors' messages rely on
        kind = "Client" if response.status < 500 else "Server"
        try:
            reason = HTTPStatus(response.status).phrase
        except ValueError:
            reason = "Unknown"
        raise feed_http.HTTPError(f"{response.status} {kind} Error: {reason} for url: {feed.url}")
    if response.status != 200:
        raise feed_http.FetchError(f"unexpected HTTP status {response.status}")
    parsed = feedparser.parse(response.content, response_headers=response.headers)
    if not parsed.get("version") and not parsed.entries:
        raise ValueError(f"not an RSS or Atom feed ({parsed.get('bozo_exception') or 'no entries'})")
    feed.title = plain_text(parsed.feed.get("title"), 300) or feed.title
    ensure_topics()  # it commits when a topic is missing: never inside an entry's savepoint
    max_items = config.get("FEED_MAX_ITEMS") or 100
    skipped = 0
    for entry in parsed.entries[:max_items]:  # a feed lists its newest first
        try:
            with db.session.begin_nested():  # one bad entry is skipped, not the whole feed
                if _store_entry(feed, entry, now, base=response.url):
                    result.added += 1
                else:
                    result.updated += 1
        except Exception as exc:  # noqa: BLE001 - one odd entry never costs the others
            skipped += 1
            log.warning("feed %s: an entry was skipped: %s", feed.url, exc)
    if skipped:
        result.error = f"{skipped} entries could not be stored and were skipped"
    if len(parsed.entries) > max_items:
        log.info("feed %s: %d entries, the first %d taken (FEED_MAX_ITEMS)", feed.url,
                 len(parsed.entries), max_items)
    # A validator longer than we store is dropped, not cut: a cut one would never match again.
    feed.etag = _header(response.headers.get("etag"), 300)
    feed.modified = _header(response.headers.get("last-modified"), 100)


def _header(value: str | None, size: int) -> str | None:
    if not value or len(value) > size or CONTROL_CHARACTERS.search(value):
        return None
    return value


def _entry_time(entry) -> datetime | None:
    for key in ("published_parsed", "updated_parsed"):
        value = entry.get(key)
        if value:
            try:
                return datetime.fromtimestamp(calendar.timegm(value), UTC)
            except (OverflowError, ValueError, OSError, TypeError):  # a date no calendar has
                return None
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
        "title": title or plain_text(link, 500),
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
    source_id = CONTROL_CHARACTERS.sub("", str(entry.get("id") or fields["url"] or "")).strip()[:1000]
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
