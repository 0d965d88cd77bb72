"""Sent digests: the latest for the admin, and the public archive."""

from __future__ import annotations

from sqlalchemy import select

from newsletter.extensions import db
from newsletter.models import Digest, digest_articles


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
