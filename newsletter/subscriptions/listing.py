"""The admin's view of the list: search, filter and keyset pagination over subscribers.

Pages are keyset-paginated on the primary key (newest first): `before=<id>` is
the next (older) page, `after=<id>` the previous one. Each page is one indexed
range scan on subscriber.id, whatever the page number, so it stays fast at
100k+ rows; the status filter uses ix_subscriber_status. No new index is needed
(see the README's notes on the admin).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Select, func, or_, select

from newsletter.extensions import db
from newsletter.models import ConsentEvent, Delivery, Subscriber, Topic, subscriber_topics

MAX_QUERY = 320


def receives_topic(slug: str):
    """Who gets a topic: those who chose it, and those who chose none (they follow every topic).
    The one rule of the admin's filter, the export and the API."""
    # IN / NOT IN over the link table are hashed once (not a subquery per row).
    links = subscriber_topics.c
    topic_id = select(Topic.id).where(Topic.slug == slug).scalar_subquery()
    chose = Subscriber.id.in_(select(links.subscriber_id).where(links.topic_id == topic_id))
    return or_(chose, Subscriber.id.notin_(select(links.subscriber_id)))


@dataclass(frozen=True)
class SubscriberFilter:
    q: str = ""
    status: str = ""
    topic: str = ""
    language: str = ""

    def apply(self, query: Select) -> Select:
        if self.q:
            # Addresses are stored lower-cased: a case-insensitive substring match (% and _ escaped)…
            needle = self.q.strip().lower()[:MAX_QUERY]
            # …or a part of the name, whatever its case.
            query = query.where(or_(Subscriber.email.contains(needle, autoescape=True),
                                    func.lower(Subscriber.name).contains(needle, autoescape=True)))
        if self.status:
            query = query.where(Subscriber.status == self.status)
        if self.language:
            query = query.where(Subscriber.language == self.language)
        if self.topic:
            query = query.where(receives_topic(self.topic))
        return query

    def args(self) -> dict[str, str]:
        """The non-empty filters, for links to other pages of the same list."""
        return {k: v for k, v in (("q", self.q), ("status", self.status), ("topic", self.topic),
                                  ("language", self.language)) if v}


@dataclass
class Page:
    items: list[Subscriber] = field(default_factory=list)
    newer_than: int | None = None  # `after` for the previous page, None on the first page
    older_than: int | None = None  # `before` for the next page, None on the last page
    total: int = 0


def count_subscribers(flt: SubscriberFilter) -> int:
    return db.session.execute(flt.apply(select(func.count(Subscriber.id)))).scalar_one()


def subscriber_page(flt: SubscriberFilter, *, before: int | None = None, after: int | None = None,
                    size: int = 50) -> Page:
    """One page of subscribers matching `flt`, newest first, with the keys of its neighbours."""
    query = flt.apply(select(Subscriber))
    if after is not None:  # the previous page: the `size` rows just above `after`, then reversed
        rows = list(db.session.execute(
            query.where(Subscriber.id > after).order_by(Subscriber.id.asc()).limit(size + 1)).scalars())
        more_newer = len(rows) > size
        items = list(reversed(rows[:size]))
        page = Page(items=items, newer_than=items[0].id if items and more_newer else None,
                    older_than=items[-1].id if items else None)
    else:
        if before is not None:
            query = query.where(Subscriber.id < before)
        rows = list(db.session.execute(query.order_by(Subscriber.id.desc()).limit(size + 1)).scalars())
        items = rows[:size]
        page = Page(items=items, newer_than=items[0].id if items and before is not None else None,
                    older_than=items[-1].id if len(rows) > size else None)
    if after is not None and not page.items:
        page.older_than = None
    page.total = count_subscribers(flt)
    return page


def consent_events(subscriber: Subscriber) -> list[ConsentEvent]:
    return list(db.session.execute(
        select(ConsentEvent).where(ConsentEvent.subscriber_id == subscriber.id)
        .order_by(ConsentEvent.created_at.desc(), ConsentEvent.id.desc())
    ).scalars())


def delivery_counts(subscriber: Subscriber) -> dict[str, int]:
    rows = db.session.execute(
        select(Delivery.state, func.count()).where(Delivery.subscriber_id == subscriber.id)
        .group_by(Delivery.state)).all()
    return {state: n for state, n in rows}
