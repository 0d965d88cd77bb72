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
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from email.utils import parseaddr
from zoneinfo import ZoneInfo

from babel.dates import format_date
from flask import current_app
from sqlalchemy import delete, exists, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from . import delivery, mail
from .articles import FetchResult, poll_feeds
from .extensions import db
from .mail import PreparedMessage
from .models import Article, Digest, SchedulerLock, Subscriber, Topic, digest_articles, utcnow
from .sending import VariantRule

log = logging.getLogger(__name__)

SEND_LEASE = "digest-send"
LEASE_SECONDS = 300  # a crashed sender's lease runs out after this; a live one renews it
HEADLINE_MAX = 80  # characters of the lead headline in the subject


# --- compiling -------------------------------------------------------------------------


def coming_articles(now: datetime | None = None) -> list[Article]:
    """Articles for the next digest: not hidden, in no digest, and published within
    DIGEST_MAX_AGE_DAYS or since the previous digest, whichever reaches further back (so a
    week the scheduler skipped goes into the next digest), but never more than twice that age.

    Ordered as the digest shows them: by topic, newest first within a topic.
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
        .where(Article.hidden.is_(False), ~in_a_digest, Article.published_at >= cutoff)
        .order_by(Topic.position.is_(None), Topic.position, Article.published_at.desc(), Article.id)
    ).scalars()
    return list(rows)


def compile_digest(now: datetime | None = None, *, period: str | None = None,
                   intro: str = "") -> Digest | None:
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
        digest = Digest(status="draft", period=period, compiled_for=now, intro=(intro or "").strip())
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
        db.session.commit()
        log.info("digest %s compiled with %d articles", digest.id, len(articles))
        return digest
    return None


# --- rendering -------------------------------------------------------------------------


def _org_name() -> str:
    return current_app.config.get("SITE_NAME") or parseaddr(current_app.config["MAIL_FROM"])[0] or ""


def _locale(value: str | None) -> str:
    languages = current_app.config["LANGUAGES"]
    return value if value in languages else current_app.config["DEFAULT_LOCALE"]


class DigestRenderer:
    """Renders a digest once per variant (language × the topics a subscriber sees).

    `message_for(subscriber)` is what the sender calls for every recipient: a cached
    PreparedMessage whose per-recipient links are slots, so a large send renders a
    handful of variants, not one message per person.
    """

    def __init__(self, digest: Digest):
        self.digest = digest
        self.articles: list[Article] = list(digest.articles)
        self.topic_ids = {article.topic_id for article in self.articles}
        self._messages: dict[tuple[str, frozenset], PreparedMessage] = {}
        self._lock = threading.Lock()
        zone = ZoneInfo(current_app.config["TIMEZONE"])
        self.local_date = (digest.compiled_for or utcnow()).astimezone(zone)
        self.zone = zone
        self.rule = VariantRule(frozenset(self.topic_ids), frozenset(current_app.config["LANGUAGES"]),
                                current_app.config["DEFAULT_LOCALE"])

    # which variant a subscriber gets

    def variant(self, subscriber: Subscriber) -> tuple[str, frozenset] | None:
        """(locale, topic ids shown) for this subscriber; None when nothing is for them."""
        return self.variant_for(subscriber.language, [topic.id for topic in subscriber.topics])

    def variant_for(self, language: str | None, followed) -> tuple[str, frozenset] | None:
        """`variant` from plain values (see `sending.VariantRule`)."""
        return self.rule.variant_for(language, followed)

    def message_for(self, subscriber: Subscriber) -> PreparedMessage | None:
        """The prepared message for this subscriber (cached per variant), or None."""
        key = self.variant(subscriber)
        return None if key is None else self.message_for_variant(key)

    def cached(self, key: tuple[str, frozenset]) -> PreparedMessage | None:
        """The variant's message if it is rendered already (no app context needed)."""
        return self._messages.get(key)

    def message_for_variant(self, key: tuple[str, frozenset]) -> PreparedMessage:
        """The prepared message of a variant (from `variant_for`), rendered on first use only."""
        message = self._messages.get(key)  # no lock on the hot path: a dict read is atomic
        if message is None:
            with self._lock:
                message = self._messages.get(key)
                if message is None:
                    subject, text, html = self.render(key[0], key[1], personal=True)
                    message = mail.prepare_message(subject=subject, text=text, html=html, bulk=True)
                    self._messages[key] = message
        return message

    def render_public(self, locale: str) -> tuple[str, str, str]:
        """(subject, text, html) with every topic and no personal link: preview and archive."""
        return self.render(_locale(locale), frozenset(self.topic_ids), personal=False)

    def subject(self, locale: str) -> str:
        """The public subject (what the digest saves), without rendering the bodies."""
        locale = _locale(locale)
        return mail.render_subject("digest", locale,
                                   **self._context(locale, frozenset(self.topic_ids), personal=False))

    # the rendering itself

    def _article_view(self, article: Article, locale: str) -> dict:
        published = article.published_at.astimezone(self.zone)
        return {
            "title": article.title,
            "url": article.url,
            "author": article.author,
            "date": format_date(published, "EEEE d MMMM", locale=locale),
            "iso_date": published.date().isoformat(),
            "summary": article.summary,
            "image_url": article.image_url,
            "image_alt": article.image_alt or article.title,
        }

    def sections(self, locale: str, topic_ids: frozenset) -> list[dict]:
        """Articles grouped by topic in topic order (the compile order), limited to `topic_ids`."""
        sections: dict[int | None, dict] = {}
        for article in self.articles:
            if article.topic_id not in topic_ids:
                continue
            if article.topic_id not in sections:
                topic = article.topic
                sections[article.topic_id] = {
                    "slug": topic.slug if topic else "",
                    "name": topic.name(locale) if topic else "",
                    "position": topic.position if topic else 10**6,
                    "articles": [],
                }
            sections[article.topic_id]["articles"].append(self._article_view(article, locale))
        return sorted(sections.values(), key=lambda section: section["position"])

    def render(self, locale: str, topic_ids: frozenset, *, personal: bool) -> tuple[str, str, str]:
        return mail.render_email("digest", locale, **self._context(locale, topic_ids, personal=personal))

    def _context(self, locale: str, topic_ids: frozenset, *, personal: bool) -> dict:
        """What the digest's templates are given for one variant."""
        sections = self.sections(locale, topic_ids)
        lead = sections[0]["articles"][0] if sections else None
        count = sum(len(section["articles"]) for section in sections)
        headline = lead["title"] if lead else ""
        if len(headline) > HEADLINE_MAX:
            headline = headline[: HEADLINE_MAX - 1].rsplit(" ", 1)[0] + "…"
        public_url = current_app.config["PUBLIC_URL"]
        digest_id = getattr(self.digest, "id", None)
        return dict(
            slot=mail.slot,
            personal=personal,
            org_name=_org_name(),
            week=self.local_date.isocalendar().week,
            date_label=format_date(self.local_date, "d MMMM y", locale=locale),
            intro_paragraphs=[p.strip() for p in (self.digest.intro or "").split("\n\n") if p.strip()],
            sections=sections,
            lead=lead,
            headline=headline,
            count=count,
            more=count - 1,
            public_url=public_url,
            subscribe_url=f"{public_url}/subscribe",
            archive_url=f"{public_url}/archive",
            # "Read it in your browser" only in the email, and only once the digest is saved.
            web_url=f"{public_url}/archive/{digest_id}?lang={locale}" if digest_id and personal else "",
        )


# --- preview, test, send --------------------------------------------------------------------


def _transient_digest(now: datetime) -> Digest | None:
    """An unsaved digest of the coming articles, with the draft's intro, for previews and tests."""
    return coming_digest(now)


def preview_coming(locale: str, now: datetime | None = None) -> tuple[str, str, str] | None:
    """(subject, text, html) of the coming digest without personal links, or None if nothing is new."""
    digest = _transient_digest(now or utcnow())
    return DigestRenderer(digest).render_public(locale) if digest else None


def send_test(email: str, *, locale: str, now: datetime | None = None) -> bool:
    """Send the coming digest to one address only; nothing is recorded. False if nothing is new."""
    digest = _transient_digest(now or utcnow())
    if digest is None:
        return False
    renderer = DigestRenderer(digest)
    subject, text, html = renderer.render(_locale(locale), frozenset(renderer.topic_ids), personal=True)
    prepared = mail.prepare_message(subject=f"[TEST] {subject}", text=text, html=html, bulk=True)
    subscriber = db.session.execute(
        select(Subscriber).where(Subscriber.email == email.strip().lower())
    ).scalar_one_or_none()
    if subscriber is not None:
        values = delivery.personal_values(subscriber)
    else:  # not on the list: the links lead to the public pages instead of someone's settings
        public_url = current_app.config["PUBLIC_URL"]
        values = {"to": mail.smtp_address(email)[0], "unsubscribe_url": f"{public_url}/subscribe",
                  "preferences_url": f"{public_url}/subscribe"}
    transport = mail.transport_from_url()
    try:
        transport.send(mail.envelope_sender(), email, prepared.render(values))
    finally:
        transport.close()
    return True


def plan_send(now: datetime | None = None) -> dict | None:
    """What `send_now` would send (a dry run): articles, subject and how many would get it."""
    digest = _transient_digest(now or utcnow())
    if digest is None:
        return None
    renderer = DigestRenderer(digest)
    recipients = variants = 0
    seen: set = set()
    confirmed = select(Subscriber).where(Subscriber.status == "confirmed")
    for subscriber in db.session.execute(confirmed).scalars():
        key = renderer.variant(subscriber)
        if key is not None:
            recipients += 1
            if key not in seen:
                seen.add(key)
                variants += 1
    return {
        "articles": digest.articles,
        "subject": renderer.subject(current_app.config["DEFAULT_LOCALE"]),
        "recipients": recipients,
        "variants": variants,
    }


def finish_interrupted_sends() -> list[int]:
    """Send the rest of every digest left in status "sending" (a crash, a restart) or "approved"."""
    ids = list(db.session.execute(
        select(Digest.id).where(Digest.status.in_(("sending", "approved"))).order_by(Digest.id)
    ).scalars())
    for digest_id in ids:
        log.info("finishing the send of digest %s", digest_id)
        delivery.send_digest(digest_id)
    return ids


# The admin's preview, its "send now" and the API poll the feeds too, but not the ones polled less
# than this many seconds ago: looking at the preview and then sending polls once.
WEB_POLL_FRESH_SECONDS = 60


def poll_feeds_first(now: datetime | None = None, *, fresh_seconds: float = 0) -> list[FetchResult]:
    """Poll the feeds before the coming digest is compiled, previewed or tested, within
    DIGEST_FETCH_SECONDS; what each feed did (failed ones have `ok` False)."""
    return poll_feeds(now, time_limit=current_app.config["DIGEST_FETCH_SECONDS"],
                               fresh_seconds=fresh_seconds)


def send_now(now: datetime | None = None, *, period: str | None = None,
             poll: Callable[[], object] | None = None) -> Digest | None:
    """Finish interrupted sends, then (`poll`, e.g. polling the feeds) compile and send a new
    digest. None when nothing is new."""
    with send_lease():
        finish_interrupted_sends()
        if poll is not None:
            poll()
        digest = prepare_digest(now, period=period)  # the editor's draft, if there is one
        if digest is None:
            return None
        delivery.send_digest(digest.id)
        db.session.refresh(digest)
        return digest


def latest_digests(limit: int = 10) -> list[Digest]:
    return list(db.session.execute(select(Digest).order_by(Digest.id.desc()).limit(limit)).scalars())


def public_digests() -> list[Digest]:
    """Digests the public may read: sent or being sent, newest first."""
    return list(db.session.execute(
        select(Digest).where(Digest.status.in_(PUBLIC_STATES))
        .order_by(Digest.compiled_for.desc(), Digest.id.desc())
    ).scalars())


# "sending" too: readers click "view in the browser" while the send is still going.
PUBLIC_STATES = ("sending", "done")


# --- the send lease ---------------------------------------------------------------------


def _try_lease(engine, name: str, holder: str) -> bool:
    table = SchedulerLock.__table__
    now = utcnow()
    expires = now + timedelta(seconds=LEASE_SECONDS)
    with engine.begin() as conn:
        current = conn.execute(select(table.c.holder).where(table.c.name == name)).scalar()
        if current and current != holder and _holder_is_dead(current):
            now = expires  # held by a process of this host that is gone (kill -9): take it over now
        taken = conn.execute(
            update(table)
            .where(table.c.name == name, or_(table.c.expires_at < now, table.c.holder == holder))
            .values(holder=holder, expires_at=expires)
        ).rowcount
    if taken:
        return True
    try:
        with engine.begin() as conn:
            conn.execute(insert(table).values(name=name, holder=holder, expires_at=expires))
    except IntegrityError:  # held by someone else, and not expired
        return False
    return True


@contextmanager
def lease(name: str, *, wait: bool = True, poll: float = 1.0) -> Iterator[bool]:
    """Hold a named lease (a SchedulerLock row); renewed in the background, released at the end.

    With `wait`, blocks until the lease is free (its holder finishes, or died and the
    lease ran out after LEASE_SECONDS); without, yields False at once when it is taken.
    """
    engine = db.engine
    holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
    db.session.commit()  # SQLite: never wait for the lease while this session holds a write lock
    announced = False
    while not _try_lease(engine, name, holder):
        if not wait:
            yield False
            return
        if not announced:
            log.info("waiting for another process that holds the lease %r", name)
            announced = True
        time.sleep(poll)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(LEASE_SECONDS / 5):
            try:
                _try_lease(engine, name, holder)
            except Exception:  # noqa: BLE001  (a failed renewal is retried; the lease has slack)
                log.exception("could not renew lease %s", name)

    thread = threading.Thread(target=renew, name=f"lease-{name}", daemon=True)
    thread.start()
    try:
        yield True
    finally:
        stop.set()
        thread.join()
        table = SchedulerLock.__table__
        with engine.begin() as conn:
            conn.execute(delete(table).where(table.c.name == name, table.c.holder == holder))


def send_lease(*, wait: bool = True):
    """The lease every digest send runs under, so two processes never send at once."""
    return lease(SEND_LEASE, wait=wait)


def _holder_is_dead(holder: str) -> bool:
    """A lease holder ("host:pid:random") that is a process of this host that no longer runs.
    (Added by the delivery issue: a `digest send` killed with -9 must not block the next for
    LEASE_SECONDS.)"""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


# --- drafts, the editor's intro and approval (admin) ----------------------------------------
#
# The coming digest may be saved as a draft before it is sent: an editor writes an intro on it,
# and with DIGEST_REQUIRE_APPROVAL the scheduler only compiles it and waits for an approval.
# A draft holds its articles (digest_article.article_id is unique), so articles that arrive
# later are added to it, and hidden ones are taken out, whenever it is looked at or sent.

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
    return (position, -article.published_at.timestamp(), article.id)


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
    digest = Digest(status="draft", compiled_for=now, intro=draft.intro if draft is not None else "")
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


def set_intro(intro: str, now: datetime | None = None) -> Digest | None:
    """Save the editor's intro (plain text, paragraphs split by a blank line) on the draft,
    compiling one if there is none. None when there is nothing to send."""
    intro = (intro or "").replace("\r\n", "\n").strip()
    draft = current_draft()
    if draft is None:
        return compile_digest(now, intro=intro)
    draft.intro = intro
    db.session.commit()
    return refresh_draft(draft, now)


def approve_digest(now: datetime | None = None) -> Digest | None:
    """Approve the coming digest for sending (the draft, compiled now if there is none).

    Approved digests are sent by whoever comes first: the admin view launches the send at
    once, and the scheduler's housekeeping job sends any approved digest it finds.
    """
    digest = prepare_digest(now)
    if digest is None:
        return None
    digest.status = "approved"
    db.session.commit()
    log.info("digest %s approved for sending", digest.id)
    return digest


def hide_article(article: Article, hidden: bool, now: datetime | None = None) -> Article:
    """Leave an article out of (or put it back into) the coming digest, and its draft."""
    from . import articles as article_service

    article_service.set_hidden(article, hidden)
    draft = current_draft()
    if draft is not None:
        refresh_draft(draft, now)
    return article


def hidden_articles(now: datetime | None = None) -> list[Article]:
    """Hidden articles that would otherwise be in the coming digest (young enough, in no digest)."""
    now = now or utcnow()
    cutoff = now - timedelta(days=current_app.config["DIGEST_MAX_AGE_DAYS"])
    in_a_digest = exists().where(digest_articles.c.article_id == Article.id)
    return list(db.session.execute(
        select(Article).where(Article.hidden.is_(True), ~in_a_digest, Article.published_at >= cutoff)
        .order_by(Article.published_at.desc(), Article.id)
    ).scalars())


def digests_of(article_ids) -> dict[int, Digest]:
    """The digest each of these articles is in (articles in none are left out)."""
    ids = list(article_ids)
    if not ids:
        return {}
    rows = db.session.execute(
        select(digest_articles.c.article_id, Digest)
        .join(Digest, Digest.id == digest_articles.c.digest_id)
        .where(digest_articles.c.article_id.in_(ids))
    ).all()
    return {article_id: digest for article_id, digest in rows}
