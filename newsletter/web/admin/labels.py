"""Translated names of the states and event kinds the admin pages show (template filters)."""

from __future__ import annotations

from flask_babel import gettext as _

from newsletter.web.admin import bp


def subscriber_state(state: str) -> str:
    return {
        "pending": _("pending"), "confirmed": _("confirmed"), "unsubscribed": _("unsubscribed"),
        "bounced": _("bounced"), "complained": _("complained"),
    }.get(state, state)


def digest_state(state: str) -> str:
    return {
        "draft": _("draft"), "approved": _("approved"), "scheduled": _("scheduled"), "sending": _("sending"),
        "paused": _("paused"), "cancelled": _("cancelled"), "done": _("done"),
    }.get(state, state)


def delivery_state(state: str) -> str:
    return {
        "queued": _("queued"), "sending": _("sending"), "sent": _("sent"), "failed": _("failed"),
        "bounced": _("bounced"), "skipped": _("skipped"),
    }.get(state, state)


def consent_kind(kind: str) -> str:
    return {
        "signup": _("signed up"), "confirm": _("confirmed"), "preferences": _("changed preferences"),
        "unsubscribe": _("unsubscribed"), "import": _("imported"), "admin": _("added by an admin"),
        "bounce": _("bounced"), "complaint": _("complained"), "erase": _("erased"), "export": _("exported"),
    }.get(kind, kind)


def feed_refusal(refused) -> str:
    """Why a feed was not added, changed or removed (a `feeds.FeedRefused`), in the admin's language."""
    reason = {
        "bad-url": _("this is not an http(s) address"),
        "exists": _("another feed has this address"),
        "unknown-topic": _("there is no such section"),
        "http": _("the server answered %(status)s", status=refused.detail),
        "unreachable": _("the server could not be reached (%(error)s)", error=refused.detail),
        "not-a-feed": _("this address is not an RSS or Atom feed"),
        "configured": _("this feed is set in FEED_URLS: take it out there, or pause it"),
        "failed": _("the feed could not be fetched (%(error)s)", error=refused.detail),
    }
    return reason.get(refused.reason, str(refused))


def suppression_label(reason: str) -> str:
    return {
        "unsubscribed": _("unsubscribed"), "bounced": _("bounced"), "complained": _("complained"),
        "erased": _("erased"), "imported": _("opted out in an imported list"),
    }.get(reason, reason)


for _filter in (subscriber_state, digest_state, delivery_state, consent_kind, suppression_label):
    bp.add_app_template_filter(_filter)
