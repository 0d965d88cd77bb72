"""Helpers shared by the digest tests: the fixture feeds, a frozen "now", subscribers."""

from __future__ import annotations

from datetime import UTC, datetime

from newsletter.digests import feeds
from newsletter.extensions import db
from newsletter.models import Article, Subscriber
from newsletter.subscriptions.topics import ensure_topics, topics_by_slugs

# Monday of ISO week 48, 07:00 in Stockholm: the default DIGEST_SCHEDULE fires then.
NOW = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)

# The fixture feeds hold 8 items: one guid is repeated and one item is older than a week.
CURRENT_TITLES = {
    "Nytt bibliotek i Ålidhem öppnar i vår (uppdaterad)",
    "Pressmeddelande: 12 miljoner till upprustning av lekplatser",
    "Öppet möte om kollektivtrafiken",
    "Krönika: Därför behöver vi fler mötesplatser 🏠",
    "Tankar efter en vecka i Stockholm",
    "Ideella krafter gör skillnad",
}
OLD_TITLE = "Årsmötet 2026: protokoll och nya styrelsen"


def load_fixture_feeds(feed_server, now: datetime = NOW) -> list:
    """Register both fixture feeds and poll them at `now`."""
    feeds.add_feed(feed_server.url("/nyheter.rss"))
    feeds.add_feed(feed_server.url("/blogg.atom"))
    return feeds.fetch_all_feeds(now)


def subscriber(email: str, *, language: str = "sv", topics: tuple[str, ...] = (),
               status: str = "confirmed") -> Subscriber:
    ensure_topics()
    person = Subscriber(email=email, language=language, status=status,
                        topics=topics_by_slugs(topics) if topics else [])
    db.session.add(person)
    db.session.commit()
    return person


def all_articles() -> list[Article]:
    return list(db.session.execute(db.select(Article).order_by(Article.id)).scalars())
