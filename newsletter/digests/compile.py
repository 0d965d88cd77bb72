"""The weekly digest: compile it from new articles, render its variants, preview, test, send.

Exactly one digest per set of articles, whoever asks: two schedulers, or the
scheduler and an admin's `digest send`, may compile at the same moment. The
database decides: `digest_article.article_id` is unique (an article belongs to
one digest) and `Digest.period` is unique (one scheduled digest per week), so
the loser of a race gets an IntegrityError, which here means "someone else did
it". On top of that, sending runs under a lease (a SchedulerLock row) so two
processes never send the same digest at once with a sender that is not safe
for that.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import exists, func, insert, or_, select
from sqlalchemy.exc import IntegrityError

from newsletter.digests.render import DigestRenderer
from newsletter.engine.clock import utcnow
from newsletter.extensions import db
from newsletter.models import Article, Digest, Topic, digest_articles

log = logging.getLogger(__name__)


# --- compiling -------------------------------------------------------------------------


def coming_articles(now: datetime | None = None) -> list[Article]:
    """Articles for the next digest: not hidden, in no digest, and published within
    DIGEST_MAX_AGE_DAYS or since the previous digest, whichever reaches further back (so a
    week the scheduler skipped goes into the next digest), but never more than twice that age;
    and older ones an editor put in (`pinned`).

    Ordered as the digest shows them: by topic, then in the editor's order (`digest_rank`),
    then newest first within a topic.
    """
    now = now or utcnow()
    max_age = timedelta(days=current_app.config["DIGEST_MAX_AGE_DAYS"])
    cutoff = now - max_age
    previous = db.session.execute(
        select(func.max(Digest.compiled_for)).where(Digest.compiled_for < now)
    ).scalar_one_or_none()
    if previous is not None:
        cutoff = max(min(cutoff, previous), now - 2 * max_age)
    in_a_digest = exists().where(digest_articles.c.article_id == Article.id)
    rows = db.session.execute(
        select(Article)
        .outerjoin(Topic, Topic.id == Article.topic_id)
        .where(Article.hidden.is_(False), ~in_a_digest,
               or_(Article.published_at >= cutoff, Article.pinned.is_(True)))
        .order_by(Topic.position.is_(None), Topic.position, Article.digest_rank.is_(None),
                  Article.digest_rank, Article.published_at.desc(), Article.id)
    ).scalars()
    return list(rows)


def compile_digest(now: datetime | None = None, *, period: str | None = None,
                   intro: str = "", intro_en: str = "") -> Digest | None:
    """A new draft digest of the coming articles, or None when nothing is new or another
    process compiled this period (or these articles) first."""
    now = now or utcnow()
    for _attempt in range(3):  # a lost race may leave articles the winner did not take
        if period and db.session.execute(select(Digest.id).where(Digest.period == period)).first():
            log.info("digest for %s exists already: nothing to compile", period)
            return None
        articles = coming_articles(now)
        if not articles:
            log.info("no new articles: no digest")
            return None
        digest = Digest(status="draft", period=period, compiled_for=now, intro=(intro or "").strip(),
                        intro_en=(intro_en or "").strip())
        try:
            db.session.add(digest)
            db.session.flush()
            db.session.execute(insert(digest_articles), [
                {"digest_id": digest.id, "article_id": article.id, "position": position}
                for position, article in enumerate(articles)
            ])
            db.session.commit()
        except IntegrityError:
            db.session.rollback()
            log.info("another process compiled a digest at the same time; checking what is left")
            continue
        db.session.refresh(digest)
        renderer = DigestRenderer(digest)
        digest.subject_sv = renderer.subject("sv")
        digest.subject_en = renderer.subject("en")
        digest.html_sizes = renderer.html_sizes()
        db.session.commit()
        log.info("digest %s compiled with %d articles", digest.id, len(articles))
        return digest
    return None


# --- drafts, the editor's intro and approval (admin) ----------------------------------------
#
# The coming digest may be saved as a draft before it is sent: an editor writes an intro on it,
# and with DIGEST_REQUIRE_APPROVAL the scheduler only compiles it and waits for an approval.
# A draft holds its articles (digest_article.article_id is unique), so articles that arrive
# later are added to it, and hidden ones are taken out, whenever it is looked at or sent.
