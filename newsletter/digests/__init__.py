"""Digests: feeds and articles, compiling the coming digest, its drafts, rendering its
variants, the archive.
"""

from __future__ import annotations

from newsletter.digests.archive import (
    PUBLIC_STATES,
    digests_of,
    latest_digests,
    public_digests,
)
from newsletter.digests.articles import (
    add_article,
    recent_articles,
    set_hidden,
    update_article,
    upsert_article,
)
from newsletter.digests.compile import (
    coming_articles,
    compile_digest,
)
from newsletter.digests.drafts import (
    DRAFT_STATES,
    coming_digest,
    current_draft,
    hidden_articles,
    hide_article,
    include_article,
    move_article,
    prepare_digest,
    preview_coming,
    refresh_draft,
    set_intro,
)
from newsletter.digests.feeds import (
    FETCH_TIMEOUT,
    WEB_POLL_FRESH_SECONDS,
    add_feed,
    ensure_configured_feeds,
    fetch_all_feeds,
    fetch_feed,
    poll_feeds,
    poll_feeds_first,
)
from newsletter.digests.render import (
    DigestRenderer,
    digest_locale,
)

__all__ = [
    "DRAFT_STATES",
    "DigestRenderer",
    "FETCH_TIMEOUT",
    "PUBLIC_STATES",
    "WEB_POLL_FRESH_SECONDS",
    "add_article",
    "add_feed",
    "coming_articles",
    "coming_digest",
    "compile_digest",
    "current_draft",
    "digest_locale",
    "digests_of",
    "ensure_configured_feeds",
    "fetch_all_feeds",
    "fetch_feed",
    "hidden_articles",
    "hide_article",
    "include_article",
    "latest_digests",
    "move_article",
    "poll_feeds",
    "poll_feeds_first",
    "prepare_digest",
    "preview_coming",
    "public_digests",
    "recent_articles",
    "refresh_draft",
    "set_hidden",
    "set_intro",
    "update_article",
    "upsert_article",
]
