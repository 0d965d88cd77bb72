"""The admin's view of the list: search, filter and keyset pagination over subscribers.

Pages are keyset-paginated on the primary key (newest first): `before=<id>` is
the next (older) page, `after=<id>` the previous one. Each page is one indexed
range scan on subscriber.id, whatever the page number, so it stays fast at
100k+ rows; the status filter uses ix_subscriber_status. No new index is needed
(see the README's notes on the admin).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from flask import current_app
from sqlalchemy import Select, func, or_, select, text

from newsletter.extensions import db
from newsletter.models import ConsentEvent, Delivery, Subscriber
from newsletter.subscriptions.topics import follows_topic

MAX_QUERY = 320


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
            query = query.where(follows_topic(self.topic))
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
    total_is: str = "exact"  # or "about" (the planner's estimate), "more" (more than `total`)


def count_subscribers(flt: SubscriberFilter) -> int:
    return db.session.execute(flt.apply(select(func.count(Subscriber.id)))).scalar_one()


def estimate_subscribers(flt: SubscriberFilter, exact_up_to: int) -> tuple[int, str]:
    """How many match, without counting a large list: exact up to `exact_up_to` (a count that
    stops there), beyond it PostgreSQL's estimate ("about"), or on SQLite "more than" the limit.
    A COUNT over a million filtered rows takes seconds; a page must take milliseconds."""
    matching = flt.apply(select(Subscriber.id)).limit(exact_up_to + 1).subquery()
    counted = db.session.execute(select(func.count()).select_from(matching)).scalar_one()
    if counted <= exact_up_to:
        return counted, "exact"
    if db.engine.dialect.name != "postgresql":
        return exact_up_to, "more"
    query = flt.apply(select(Subscriber.id)).compile(db.engine, compile_kwargs={"literal_binds": True})
    plan = db.session.execute(text(f"EXPLAIN (FORMAT JSON) {query}")).scalar_one()
    plan = json.loads(plan) if isinstance(plan, str) else plan
    estimate = max(int(plan[0]["Plan"]["Plan Rows"]), exact_up_to + 1)
    digits = len(str(estimate)) - 2  # two significant figures: "about 990,000"
    return (round(estimate, -digits) if digits > 0 else estimate), "about"


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
    page.total, page.total_is = estimate_subscribers(flt, current_app.config["ADMIN_COUNT_EXACT_LIMIT"])
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
