"""Subscriptions: signup with double opt-in, confirmation, preferences, unsubscribe, the
consent ledger, tokens, topics, imports and exports.
"""

from __future__ import annotations

from newsletter.subscriptions.consent import (
    record_event,
)
from newsletter.subscriptions.data import (
    erase_subscriber,
    iso,
    subscriber_data,
    subscriber_profile,
)
from newsletter.subscriptions.export import (
    export_count,
    export_lines,
    export_subscribers_csv,
)
from newsletter.subscriptions.imports import (
    HEAD_BYTES,
    EmailNormaliser,
    ImportFailed,
    import_csv,
)
from newsletter.subscriptions.listing import (
    SubscriberFilter,
    consent_events,
    delivery_counts,
    subscriber_page,
)
from newsletter.subscriptions.signup import (
    LinkSuperseded,
    SubscriberErased,
    SubscriberExists,
    add_subscriber,
    confirm_subscription,
    edit_subscriber,
    find_subscriber,
    request_preferences_link,
    request_signup,
    resend_confirmation,
    subscriber_by_uid,
    subscriber_for_confirm,
    subscriber_from_token,
    unsubscribe,
    update_preferences,
)
from newsletter.subscriptions.stats import (
    subscriber_counts,
    trend_chart,
    weekly_trend,
)
from newsletter.subscriptions.tokens import (
    TokenError,
    TokenExpired,
    confirm_token,
    confirm_url,
    make_token,
    preferences_url,
    public_url,
    read_subscriber_token,
    read_token,
    unsubscribe_url,
)
from newsletter.subscriptions.topics import (
    ensure_topics,
    follows_all_topics,
    follows_topic,
    topic_for_category,
    topic_slugs,
    topics_by_slugs,
)
from newsletter.subscriptions.validation import (
    MAX_NAME_LENGTH,
    InvalidInput,
    has_forbidden_characters,
    normalise_email,
    validate_signup,
)

__all__ = [
    "EmailNormaliser",
    "HEAD_BYTES",
    "ImportFailed",
    "InvalidInput",
    "LinkSuperseded",
    "SubscriberErased",
    "MAX_NAME_LENGTH",
    "SubscriberExists",
    "SubscriberFilter",
    "TokenError",
    "TokenExpired",
    "add_subscriber",
    "confirm_subscription",
    "edit_subscriber",
    "confirm_token",
    "confirm_url",
    "consent_events",
    "delivery_counts",
    "ensure_topics",
    "follows_all_topics",
    "follows_topic",
    "erase_subscriber",
    "export_count",
    "export_lines",
    "export_subscribers_csv",
    "find_subscriber",
    "has_forbidden_characters",
    "import_csv",
    "iso",
    "make_token",
    "normalise_email",
    "preferences_url",
    "public_url",
    "read_subscriber_token",
    "read_token",
    "record_event",
    "request_preferences_link",
    "request_signup",
    "resend_confirmation",
    "subscriber_by_uid",
    "subscriber_counts",
    "subscriber_data",
    "subscriber_for_confirm",
    "subscriber_from_token",
    "subscriber_page",
    "subscriber_profile",
    "topic_for_category",
    "topic_slugs",
    "topics_by_slugs",
    "trend_chart",
    "unsubscribe",
    "unsubscribe_url",
    "update_preferences",
    "validate_signup",
    "weekly_trend",
]
