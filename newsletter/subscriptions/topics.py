"""Topics (sections) that subscribers follow and articles belong to, seeded from TOPICS."""

from __future__ import annotations

from flask import current_app
from sqlalchemy import select

from newsletter.extensions import db
from newsletter.models import Subscriber, Topic


def _configured() -> list[tuple[str, str, str]]:
    """(slug, Swedish name, English name) from the TOPICS setting."""
    topics = []
    for item in current_app.config["TOPICS"]:
        slug, _, names = item.partition("=")
        name_sv, _, name_en = names.partition("|")
        topics.append((slug.strip(), name_sv.strip() or slug, name_en.strip() or name_sv.strip()))
    return topics


def ensure_topics() -> list[Topic]:
    """Insert the configured topics that are missing; all topics, in display order."""
    existing = {t.slug: t for t in db.session.execute(select(Topic)).scalars()}
    added = False
    for position, (slug, name_sv, name_en) in enumerate(_configured()):
        if slug not in existing:
            db.session.add(Topic(slug=slug, name_sv=name_sv, name_en=name_en, position=position))
            added = True
    if added:
        db.session.commit()
    return all_topics()


def all_topics() -> list[Topic]:
    return list(db.session.execute(select(Topic).order_by(Topic.position, Topic.id)).scalars())


def topics_by_slugs(slugs) -> list[Topic]:
    """The topics named by `slugs`; ValueError naming any unknown slug."""
    wanted = {s.strip().lower() for s in slugs if s and s.strip()}
    if not wanted:
        return []
    found = list(db.session.execute(select(Topic).where(Topic.slug.in_(wanted))).scalars())
    unknown = wanted - {t.slug for t in found}
    if unknown:
        slugs = db.session.execute(select(Topic.slug).order_by(Topic.position, Topic.id)).scalars()
        known = ", ".join(slugs)
        raise ValueError(f"unknown topic: {', '.join(sorted(unknown))} "
                         f"(the topics are: {known or 'none yet'})")
    return found


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
