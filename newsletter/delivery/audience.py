"""Who a digest goes to, counted in SQL: the variants (language x topics shown) of the confirmed
subscribers and how many get each, without loading a single subscriber.
"""

from __future__ import annotations

from collections import Counter

from sqlalchemy import case, func, select

from newsletter.engine.sending import VariantRule
from newsletter.extensions import db
from newsletter.models import Subscriber, subscriber_topics

NOT_IN_DIGEST = -1  # a topic id no article has: stands for "chose topics, none of them in this digest"


def variant_counts(rule: VariantRule) -> Counter:
    """{variant: confirmed subscribers who get it} (None: those who get nothing this time).

    Each subscriber's chosen topics become one number in SQL: a bit per topic of the digest,
    plus 2^n per chosen topic that is not in it (0 = chose none, i.e. follows all). The
    groups of (language, number) are few; `rule` (the sender's own) maps each to its variant.
    """
    digest_topics = sorted(t for t in rule.topic_ids if t is not None)
    links = subscriber_topics.c
    outside = 1 << len(digest_topics)
    weight = case({tid: 1 << bit for bit, tid in enumerate(digest_topics)}, value=links.topic_id,
                  else_=outside) if digest_topics else db.literal(outside)
    chosen = (select(func.coalesce(func.sum(weight), 0)).where(links.subscriber_id == Subscriber.id)
              .correlate(Subscriber).scalar_subquery().label("chosen"))
    people = select(Subscriber.language.label("language"), chosen).where(
        Subscriber.status == "confirmed").subquery()
    groups = db.session.execute(
        select(people.c.language, people.c.chosen, func.count()).group_by(people.c.language, people.c.chosen))
    counts: Counter = Counter()
    for language, number, how_many in groups:
        number = int(number)
        followed = [tid for bit, tid in enumerate(digest_topics) if number >> bit & 1]
        if number and not followed:
            followed = [NOT_IN_DIGEST]
        counts[rule.variant_for(language, followed)] += how_many
    return counts
