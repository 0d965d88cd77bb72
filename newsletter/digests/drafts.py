"""The coming digest and its draft: an editor's intro, hidden articles, articles that came since.

The coming digest may be saved as a draft before it is sent: an editor writes an intro on it,
and with DIGEST_REQUIRE_APPROVAL the scheduler only compiles it and waits for an approval.
A draft holds its articles (digest_article.article_id is unique), so articles that arrive
later are added to it, and hidden ones are taken out, whenever it is looked at or sent.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import delete, exists, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from newsletter.digests.compile import coming_articles, compile_digest
from newsletter.digests.render import DigestRenderer
from newsletter.engine.clock import utcnow
from newsletter.extensions import db
from newsletter.models import Article, Digest, digest_articles


def preview_coming(locale: str, now: datetime | None = None) -> tuple[str, str, str] | None:
    """(subject, text, html) of the coming digest without personal links, or None if nothing is new."""
    digest = coming_digest(now)
    return DigestRenderer(digest).render_public(locale) if digest else None


DRAFT_STATES = ("draft", "approved")


def current_draft() -> Digest | None:
    """The digest waiting to be sent: the newest draft (or approved one) whose send has not started."""
    return db.session.execute(
        select(Digest).where(Digest.status.in_(DRAFT_STATES), Digest.started_at.is_(None))
        .order_by(Digest.id.desc()).limit(1)
    ).scalar_one_or_none()


def _article_order(article: Article) -> tuple:
    topic = article.topic
    position = topic.position if topic is not None else 10**6
    rank = article.digest_rank
    return (position, rank is None, rank or 0, -article.published_at.timestamp(), article.id)


def _draft_articles(draft: Digest, now: datetime) -> list[Article]:
    """The draft's articles that are not hidden, plus the coming ones, in digest order."""
    kept = [article for article in draft.articles if not article.hidden]
    return sorted(kept + coming_articles(now), key=_article_order)


def coming_digest(now: datetime | None = None) -> Digest | None:
    """The coming digest as it would be sent now, unsaved: the draft's intro and articles (if
    there is a draft) plus the articles that came since. None when there is nothing to send."""
    now = now or utcnow()
    draft = current_draft()
    articles = _draft_articles(draft, now) if draft is not None else coming_articles(now)
    if not articles:
        return None
    digest = Digest(status="draft", compiled_for=now, intro=draft.intro if draft is not None else "",
                    intro_en=draft.intro_en if draft is not None else "")
    digest.articles = articles
    if digest in db.session:  # never let a preview be flushed as a real digest
        db.session.expunge(digest)
    return digest


def refresh_draft(draft: Digest, now: datetime | None = None) -> Digest:
    """Bring a draft up to date: hidden articles out, articles that came since in, subjects again."""
    now = now or utcnow()
    for _attempt in range(3):  # a concurrent compile may take an article first: look again
        articles = _draft_articles(draft, now)
        try:
            db.session.execute(delete(digest_articles).where(digest_articles.c.digest_id == draft.id))
            if articles:
                db.session.execute(insert(digest_articles), [
                    {"digest_id": draft.id, "article_id": article.id, "position": position}
                    for position, article in enumerate(articles)
                ])
            draft.compiled_for = now
            db.session.commit()
        except IntegrityError:
            db.session.rollback()
            continue
        break
    db.session.refresh(draft)
    if draft.articles:
        renderer = DigestRenderer(draft)
        draft.subject_sv = renderer.subject("sv")
        draft.subject_en = renderer.subject("en")
        draft.html_sizes = renderer.html_sizes()
        db.session.commit()
    return draft


def prepare_digest(now: datetime | None = None, *, period: str | None = None) -> Digest | None:
    """The digest to send next: the current draft brought up to date (and adopted for `period`
    when it has none), or a newly compiled one. None when nothing is new or another process
    made this period's digest."""
    now = now or utcnow()
    draft = current_draft()
    if draft is None:
        return compile_digest(now, period=period)
    if period and draft.period is None:
        if db.session.execute(select(Digest.id).where(Digest.period == period)).first():
            return None
        draft.period = period
        try:
            db.session.commit()
        except IntegrityError:  # another scheduler adopted it (or compiled this period) first
            db.session.rollback()
            return None
    refresh_draft(draft, now)
    return draft if draft.articles else None


def set_intro(intro: str | None, now: datetime | None = None, *,
              intro_en: str | None = None) -> Digest | None:
    """Save the editor's intros (plain text, paragraphs split by a blank line): `intro` the
    Swedish one, `intro_en` the English one; None leaves one as it is. On the draft, compiling
    one if there is none. None when there is nothing to send."""
    texts = {name: (value or "").replace("\r\n", "\n").strip()
             for name, value in (("intro", intro), ("intro_en", intro_en)) if value is not None}
    draft = current_draft()
    if draft is None:
        return compile_digest(now, **texts)
    for name, value in texts.items():
        setattr(draft, name, value)
    db.session.commit()
    return refresh_draft(draft, now)


def hide_article(article: Article, hidden: bool, now: datetime | None = None) -> Article:
    """Leave an article out of (or put it back into) the coming digest, and its draft."""
    from newsletter import digests as article_service

    article_service.set_hidden(article, hidden)
    draft = current_draft()
    if draft is not None:
        refresh_draft(draft, now)
    return article


def include_article(article: Article, now: datetime | None = None) -> Article:
    """Put an article in the coming digest whatever its age (and not hidden); ValueError when it
    was in a digest already."""
    if db.session.execute(select(digest_articles.c.digest_id).where(
            digest_articles.c.article_id == article.id, digest_articles.c.digest_id.not_in(
                select(Digest.id).where(Digest.status.in_(DRAFT_STATES))))).first():
        raise ValueError("the article was sent in an earlier digest")
    article.pinned, article.hidden = True, False
    db.session.commit()
    _refresh_current_draft(now)
    return article


def move_article(article: Article, offset: int, now: datetime | None = None) -> bool:
    """Move an article of the coming digest up (-1) or down (+1) within its section; the whole
    section gets the editor's order from then on. False when it cannot move that way."""
    coming = coming_digest(now)
    section = [a for a in (coming.articles if coming is not None else []) if a.topic_id == article.topic_id]
    ids = [a.id for a in section]
    if article.id not in ids:
        return False
    index = ids.index(article.id)
    target = index + offset
    if not 0 <= target < len(section):
        return False
    section[index], section[target] = section[target], section[index]
    for rank, item in enumerate(section):
        db.session.execute(update(Article).where(Article.id == item.id).values(digest_rank=rank))
    db.session.commit()
    db.session.expire_all()
    _refresh_current_draft(now)
    return True


def _refresh_current_draft(now: datetime | None) -> None:
    draft = current_draft()
    if draft is not None:
        refresh_draft(draft, now)


def hidden_articles(now: datetime | None = None) -> list[Article]:
    """Hidden articles that would otherwise be in the coming digest (young enough, in no digest)."""
    now = now or utcnow()
    cutoff = now - timedelta(days=current_app.config["DIGEST_MAX_AGE_DAYS"])
    in_a_digest = exists().where(digest_articles.c.article_id == Article.id)
    return list(db.session.execute(
        select(Article).where(Article.hidden.is_(True), ~in_a_digest,
                              or_(Article.published_at >= cutoff, Article.pinned.is_(True)))
        .order_by(Article.published_at.desc(), Article.id)
    ).scalars())
