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


def suppression_label(reason: str) -> str:
    return {
        "unsubscribed": _("unsubscribed"), "bounced": _("bounced"), "complained": _("complained"),
        "erased": _("erased"), "imported": _("opted out in an imported list"),
    }.get(reason, reason)


for _filter in (subscriber_state, digest_state, delivery_state, consent_kind, suppression_label):
    bp.add_app_template_filter(_filter)
