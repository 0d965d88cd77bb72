"""Feeds managed by editors: add (checked by fetching it), edit, pause, resume, remove.

Polling itself (conditional GET, parsing, storing entries) is `digests.feeds.fetch_feed`; here are
the rules of the registry. A feed is only added, or moved to a new URL, once a fetch of that
URL gave an RSS or Atom feed, so a typo, a 404 or a web page is refused with the reason. A
removed feed's articles stay (they may be in sent digests and the archive).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from flask import current_app
from sqlalchemy import select, update

from newsletter.digests.articles import safe_url
from newsletter.digests.feeds import FetchResult, ensure_configured_feeds, fetch_feed
from newsletter.extensions import db
from newsletter.models import Article, Feed
from newsletter.subscriptions.topics import all_topics, ensure_topics, topics_by_slugs

CHECK_TIMEOUT = 10  # seconds: someone waits for the answer of "add"

HTTP_ERROR = re.compile(r"HTTPError: (\d{3})\b[^:]*Error:\s*(.*?)\s*for url")
UNREACHABLE = ("ConnectionError", "ConnectTimeout", "ReadTimeout", "Timeout", "SSLError", "TooManyRedirects",
               "could not be reached", "no answer in time", "could not be resolved", "certificate",
               "too many redirects")


class FeedRefused(ValueError):
    """A feed that cannot be added or changed; `reason` is one of REASONS, `detail` says more."""

    REASONS = ("bad-url", "exists", "unknown-topic", "http", "unreachable", "not-a-feed",
               "configured", "failed")

    def __init__(self, reason: str, detail: str = ""):
        self.reason, self.detail = reason, detail
        super().__init__(f"{_ENGLISH[reason]}{': ' + detail if detail else ''}")


_ENGLISH = {
    "bad-url": "not an http(s) URL",
    "exists": "this feed is registered already",
    "unknown-topic": "no such topic",
    "http": "the server answered with an error",
    "unreachable": "the server could not be reached",
    "not-a-feed": "this address is not an RSS or Atom feed",
    "configured": "this feed is set in FEED_URLS: take it out there, or pause it",
    "failed": "the feed could not be fetched",
}


@dataclass
class FeedAdded:
    feed: Feed
    result: FetchResult | None  # the first poll; None when the feed was registered already


def refusal(result: FetchResult) -> FeedRefused:
    """Why a fetch failed, in words an editor can act on."""
    error = result.error
    match = HTTP_ERROR.search(error)
    if match:
        return FeedRefused("http", f"{match.group(1)} {match.group(2)}".strip())
    if "not an RSS or Atom feed" in error:
        return FeedRefused("not-a-feed")
    if any(marker in error for marker in UNREACHABLE):
        return FeedRefused("unreachable", error[:300])
    return FeedRefused("failed", error[:300])


def _topic_id(topic_slug: str | None) -> int | None:
    if not topic_slug:
        return None
    ensure_topics()
    try:
        return topics_by_slugs([topic_slug])[0].id
    except (ValueError, IndexError, KeyError) as exc:
        known = ", ".join(t.slug for t in all_topics()) or "none yet"
        raise FeedRefused("unknown-topic", f"{topic_slug} (the topics are: {known})") from exc


def _checked_url(url: str) -> str:
    url = (url or "").strip()
    if not safe_url(url) or len(url) > 1000:
        raise FeedRefused("bad-url", url[:200])
    return url


def feed_by_url(url: str) -> Feed | None:
    return db.session.execute(select(Feed).where(Feed.url == (url or "").strip())).scalar_one_or_none()


def feed_by_key(key: str) -> Feed | None:
    """A feed by its id or its URL (what the command line takes); FEED_URLS are feeds too."""
    ensure_configured_feeds()
    key = (key or "").strip()
    if key.isdigit():
        return db.session.get(Feed, int(key))
    return feed_by_url(key)


def register_feed(url: str, *, topic_slug: str | None = None, timeout: float = CHECK_TIMEOUT) -> FeedAdded:
    """Add a feed once a fetch of it gave RSS or Atom (its entries are stored then); a URL
    registered already only gets the topic given. FeedRefused says why not."""
    url = _checked_url(url)
    topic_id = _topic_id(topic_slug)
    feed = feed_by_url(url)
    if feed is not None:
        if topic_slug:
            feed.topic_id = topic_id
            db.session.commit()
        return FeedAdded(feed, None)
    feed = Feed(url=url, topic_id=topic_id)
    db.session.add(feed)
    db.session.commit()
    result = fetch_feed(feed, timeout=timeout)
    if not result.ok:
        db.session.delete(feed)
        db.session.commit()
        raise refusal(result)
    return FeedAdded(feed, result)


def change_feed(feed: Feed, *, url: str | None = None, topic_slug: str | None = None,
                by_category: bool = False, timeout: float = CHECK_TIMEOUT) -> FetchResult | None:
    """Move a feed to a new URL (checked by fetching it, like `register_feed`) and/or give it a
    topic (`by_category`: none, the entries' categories decide). A refused change changes nothing.
    The fetch's result, if any."""
    topic_id = None if by_category or not topic_slug else _topic_id(topic_slug)
    result = None
    if url is not None and url.strip() != feed.url:
        url = _checked_url(url)
        if feed_by_url(url) is not None:
            raise FeedRefused("exists", url)
        kept = {name: getattr(feed, name) for name in
                ("url", "etag", "modified", "last_fetched_at", "last_status", "last_error")}
        feed.url, feed.etag, feed.modified = url, None, None
        db.session.commit()
        result = fetch_feed(feed, timeout=timeout)
        if not result.ok:
            for name, value in kept.items():
                setattr(feed, name, value)
            db.session.commit()
            raise refusal(result)
    if topic_slug or by_category:
        feed.topic_id = topic_id
    db.session.commit()
    return result


def set_paused(feed: Feed, paused: bool) -> Feed:
    """Pause a feed (it is not polled, by the scheduler or before a digest) or resume it."""
    feed.paused = paused
    db.session.commit()
    return feed


def remove_feed(feed: Feed) -> int:
    """Remove a feed; its articles stay (without a feed). The number of its articles."""
    if feed.url in (current_app.config.get("FEED_URLS") or []):
        raise FeedRefused("configured", feed.url)
    kept = db.session.execute(
        update(Article).where(Article.feed_id == feed.id).values(feed_id=None)).rowcount
    db.session.delete(feed)
    db.session.commit()
    return kept or 0


def all_feeds() -> list[Feed]:
    """Every feed (FEED_URLS registered first), oldest first."""
    return ensure_configured_feeds()
