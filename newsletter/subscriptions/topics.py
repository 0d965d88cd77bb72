"""Topics (sections) that subscribers follow and articles belong to, seeded from TOPICS."""

from __future__ import annotations

from flask import current_app
from sqlalchemy import ColumnElement, exists, insert, not_, or_, select

from newsletter.extensions import db
from newsletter.models import Subscriber, Topic, subscriber_topics


def follows_all_topics() -> ColumnElement[bool]:
    """SQL: the subscriber chose no topic, which means all topics (the one rule, in SQL)."""
    links = subscriber_topics.c
    return not_(exists().where(links.subscriber_id == Subscriber.id))


def follows_topic(slug: str) -> ColumnElement[bool]:
    """SQL: the subscriber receives the topic `slug`: they chose it, or they chose none.

    Correlated EXISTS / NOT EXISTS probes of the link table's primary key (subscriber_id
    first): one index lookup per subscriber, at any size. `id IN (...) OR id NOT IN (...)`
    cannot be hashed past a few hundred thousand links and rescans them per row.
    """
    links = subscriber_topics.c
    topic_id = select(Topic.id).where(Topic.slug == slug).scalar_subquery()
    chose = exists().where(links.subscriber_id == Subscriber.id, links.topic_id == topic_id)
    return or_(chose, follows_all_topics())


def _configured() -> list[tuple[str, str, str]]:
    """(slug, Swedish name, English name) from the TOPICS setting."""
    topics = []
    for item in current_app.config["TOPICS"]:
        slug, _, names = item.partition("=")
        name_sv, _, name_en = names.partition("|")
        topics.append((slug.strip(), name_sv.strip() or slug, name_en.strip() or name_sv.strip()))
    return topics


def seed_topics() -> int:
    """Insert the configured topics that are missing (committed); returns how many were added.
    Safe when several processes do it at once (an existing slug is left alone), so two first
    signups on a fresh database never collide on it. `db upgrade` runs it."""
    configured = _configured()
    existing = set(db.session.execute(select(Topic.slug)).scalars())
    missing = [{"slug": slug, "name_sv": sv, "name_en": en, "position": position}
               for position, (slug, sv, en) in enumerate(configured) if slug not in existing]
    if not missing:
        return 0
    if db.engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        statement = pg_insert(Topic).on_conflict_do_nothing(index_elements=["slug"])
    else:
        statement = insert(Topic).prefix_with("OR IGNORE")
    # In the session and committed, as before: a connection of its own would wait for the
    # session's own write lock on SQLite.
    added = db.session.connection().execute(statement, missing).rowcount
    db.session.commit()
    current_app.extensions.pop(_CACHE, None)
    return max(added, 0)


_CACHE = "newsletter.topics"


def _catalogue() -> dict[str, Topic]:
    """Every topic by slug, read once per process (detached copies: plain values, no session).
    The configured ones are seeded first if a database was made without `db upgrade`."""
    cached = current_app.extensions.get(_CACHE)
    if cached is None:
        seed_topics()
        topics = list(db.session.execute(select(Topic).order_by(Topic.position, Topic.id)).scalars())
        for topic in topics:
            db.session.expunge(topic)
        cached = current_app.extensions[_CACHE] = {topic.slug: topic for topic in topics}
    return cached


def cached_topics() -> list[Topic]:
    """All topics in display order, from the per-process catalogue (no SQL after the first call):
    for forms and validation. Detached: read their values, attach them with `attached`."""
    return list(_catalogue().values())


def attached(topics: list[Topic]) -> list[Topic]:
    """The catalogue's topics as objects of this session, without a statement (merge, no load)."""
    return [db.session.merge(topic, load=False) for topic in topics]


def ensure_topics() -> list[Topic]:
    """All topics in display order (objects of this session); the configured ones are seeded first
    if missing."""
    seed_topics()
    return all_topics()


def all_topics() -> list[Topic]:
    return list(db.session.execute(select(Topic).order_by(Topic.position, Topic.id)).scalars())


def topics_by_slugs(slugs) -> list[Topic]:
    """The topics named by `slugs` (objects of this session); ValueError naming any unknown slug."""
    wanted = {s.strip().lower() for s in slugs if s and s.strip()}
    if not wanted:
        return []
    catalogue = _catalogue()
    unknown = wanted - set(catalogue)
    if unknown:  # perhaps added since this process read them
        current_app.extensions.pop(_CACHE, None)
        catalogue = _catalogue()
        unknown = wanted - set(catalogue)
    if unknown:
        known = ", ".join(sorted(catalogue)) or "none yet"
        raise ValueError(f"unknown topic: {', '.join(sorted(unknown))} (the topics are: {known})")
    return attached([catalogue[slug] for slug in sorted(wanted)])


def topic_for_category(categories: list[str]) -> Topic | None:
    """The topic of the first feed category mapped in TOPIC_CATEGORIES, else DEFAULT_TOPIC."""
    mapping = {}
    for item in current_app.config["TOPIC_CATEGORIES"]:
        category, _, slug = item.partition("=")
        mapping[category.strip().lower()] = slug.strip()
    ensure_topics()
    for category in categories:
        slug = mapping.get(category.strip().lower())
        if slug:
            topic = db.session.execute(select(Topic).where(Topic.slug == slug)).scalar_one_or_none()
            if topic:
                return topic
    return db.session.execute(
        select(Topic).where(Topic.slug == current_app.config["DEFAULT_TOPIC"])
    ).scalar_one_or_none()


def topic_slugs(subscriber: Subscriber) -> list[str]:
    return sorted(t.slug for t in subscriber.topics)
