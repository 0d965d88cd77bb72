"""Rendering a digest: each variant (language x topics shown) once, with slots for the
per-recipient links; the subject alone.
"""

from __future__ import annotations

import threading
from email.utils import parseaddr
from zoneinfo import ZoneInfo

from babel.dates import format_date
from flask import current_app

from newsletter.digests import clicks
from newsletter.engine.clock import utcnow
from newsletter.engine.prepared import slot
from newsletter.engine.sending import VariantRule
from newsletter.i18n import day_text, format_locale
from newsletter.mail import compose as mail
from newsletter.mail.compose import PreparedMessage
from newsletter.models import Article, Digest, Subscriber


def _org_name() -> str:
    return current_app.config.get("SITE_NAME") or parseaddr(current_app.config["MAIL_FROM"])[0] or ""


def digest_locale(value: str | None) -> str:
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

    def render_public(self, locale: str, *, capped: bool = True) -> tuple[str, str, str]:
        """(subject, text, html) with every topic and no personal link: preview (capped like the
        email) and archive (`capped` False: every article, where "N more" leads)."""
        return self.render(digest_locale(locale), frozenset(self.topic_ids), personal=False, capped=capped)

    def subject(self, locale: str) -> str:
        """The public subject (what the digest saves), without rendering the bodies."""
        locale = digest_locale(locale)
        return mail.render_subject("digest", locale,
                                   **self._context(locale, frozenset(self.topic_ids), personal=False))

    # the rendering itself

    def _article_view(self, article: Article, locale: str) -> dict:
        published = article.published_at.astimezone(self.zone)
        return {
            "id": article.id,
            "title": article.title,
            "url": article.url,
            "author": article.author,
            "date": format_date(published, "EEEE d MMMM", locale=format_locale(locale)),
            "iso_date": published.date().isoformat(),
            "summary": article.summary,
            "image_url": article.image_url,
            "image_alt": article.image_alt or article.title,
        }

    def sections(self, locale: str, topic_ids: frozenset, *, capped: bool = True) -> list[dict]:
        """Articles grouped by topic in topic order (the compile order), limited to `topic_ids`.

        `capped`: at most DIGEST_SECTION_MAX articles a section (0: all), so that a busy week
        still fits under Gmail's clipping size; `more` says how many were left for the website.
        """
        cap = current_app.config["DIGEST_SECTION_MAX"] if capped else 0
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
            section = sections[article.topic_id]
            section["total"] = section.get("total", 0) + 1
            if not cap or len(section["articles"]) < cap:
                section["articles"].append(self._article_view(article, locale))
        for section in sections.values():
            section["more"] = section["total"] - len(section["articles"])
        return sorted(sections.values(), key=lambda section: section["position"])

    def html_sizes(self) -> dict[str, int]:
        """Bytes of the HTML part of the largest variant (every topic) in each language."""
        return {locale: len(self.render(locale, frozenset(self.topic_ids), personal=True)[2].encode())
                for locale in current_app.config["LANGUAGES"]}

    def render(self, locale: str, topic_ids: frozenset, *, personal: bool,
               capped: bool = True) -> tuple[str, str, str]:
        return mail.render_email("digest", locale, **self._context(locale, topic_ids, personal=personal,
                                                                    capped=capped))

    def _context(self, locale: str, topic_ids: frozenset, *, personal: bool, capped: bool = True) -> dict:
        """What the digest's templates are given for one variant."""
        sections = self.sections(locale, topic_ids, capped=capped)
        digest_id = getattr(self.digest, "id", None)
        if personal and digest_id and clicks.enabled():  # the same counted link for every reader
            for section in sections:
                for article in section["articles"]:
                    article["url"] = clicks.click_url(digest_id, article["id"])
        lead = sections[0]["articles"][0] if sections else None
        count = sum(section["total"] for section in sections)
        headline = lead["title"] if lead else ""
        if len(headline) > HEADLINE_MAX:
            headline = headline[: HEADLINE_MAX - 1].rsplit(" ", 1)[0] + "…"
        public_url = current_app.config["PUBLIC_URL"]
        # What a capped section left out is on the archive's page of this digest (all of it).
        full_url = f"{public_url}/archive/{digest_id}?lang={locale}" if digest_id else f"{public_url}/archive"
        for section in sections:
            anchor = f"#{section['slug']}" if digest_id and section["slug"] else ""
            section["more_url"] = full_url + anchor
        return dict(
            slot=slot,
            personal=personal,
            org_name=_org_name(),
            week=self.local_date.isocalendar().week,
            date_label=day_text(self.local_date, locale),
            intro_paragraphs=[p.strip() for p in self.digest.intro_for(locale).split("\n\n") if p.strip()],
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


HEADLINE_MAX = 80  # characters of the lead headline in the subject
