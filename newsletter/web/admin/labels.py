"""Translated names of the states and event kinds the admin pages show (template filters)."""

from __future__ import annotations

import re

from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from markupsafe import Markup

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


def consent_source(source: str) -> str:
    return {
        "form": _("the subscribe form"), "embed": _("the embedded form"), "api": _("the API"),
        "import": _("an import"), "admin": _("the admin"), "cli": _("the command line"),
        "email": _("a link in an email"), "webhook": _("the mail provider"), "system": _("the system"),
    }.get(source, source)


# The keys of consent and audit details, and of values that are ids rather than words.
DETAIL_LABELS = {
    "file": _l("file"), "layout": _l("format"), "channel": _l("channel"), "confirmed": _l("confirmed"),
    "actor": _l("by"), "consent_source": _l("consent source"), "topics": _l("topics"),
    "language": _l("language"), "permanent": _l("permanent"), "previous_status": _l("status before"),
    "provider": _l("provider"), "reason": _l("reason"), "bounce_type": _l("bounce type"),
    "feedback_type": _l("complaint type"), "role": _l("role"), "url": _l("address"), "status": _l("result"),
    "added": _l("added"), "updated": _l("updated"), "skipped": _l("skipped"), "feeds": _l("feeds"),
    "to": _l("to"), "before": _l("state before"), "name": _l("name"), "count": _l("count"),
    "recipients": _l("recipients"), "email": _l("email address"), "filename": _l("file"),
    "errors": _l("errors"),
}


def _detail_value(key: str, value) -> str:
    if isinstance(value, bool):
        return _("yes") if value else _("no")
    if value is None or value == "" or value == []:
        return "–"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if key == "layout":
        names = {"newsletter": _("our own export"), "addresses": _("a list of addresses")}
        return names.get(value, str(value))
    if key == "channel":
        return consent_source(str(value))
    if key == "language":
        return {"sv": _("Swedish"), "en": _("English")}.get(value, str(value))
    if key in ("before", "previous_status"):
        return digest_state(value) if key == "before" else subscriber_state(value)
    if key == "role":
        return {"admin": _("admin"), "editor": _("editor")}.get(value, str(value))
    return str(value)


def detail_text(detail: dict | None) -> Markup:
    """A consent or audit event's details as "label: value; …" in the page's language."""
    parts = [Markup('<span class="muted">{}:</span> {}').format(DETAIL_LABELS.get(k, k), _detail_value(k, v))
             for k, v in (detail or {}).items()]
    return Markup("; ").join(parts)


AUDIT_ACTIONS = {
    "admin_activated": _l("account reactivated or deactivated"), "admin_created": _l("account created"),
    "admin_setup": _l("first admin set up"), "api_token_created": _l("API key created"),
    "api_token_revoked": _l("API key revoked"), "article.add": _l("article added"),
    "article.edit": _l("article edited"), "article.hide": _l("article hidden or shown"),
    "digest.approve": _l("digest approved"), "digest.intro": _l("editor's introduction saved"),
    "digest.test": _l("test digest sent"), "feed.add": _l("feed added"), "feed.fetch": _l("feed fetched"),
    "feed.fetch_all": _l("all feeds fetched"), "login": _l("logged in"), "login_failed": _l("failed login"),
    "logout": _l("logged out"), "password_changed": _l("password changed"), "send.start": _l("send started"),
    "send.pause": _l("send paused"), "send.resume": _l("send resumed"), "send.cancel": _l("send cancelled"),
    "subscriber_added": _l("subscriber added"),
    "subscriber_confirmation_resent": _l("confirmation sent again"),
    "subscriber_edited": _l("subscriber edited"),
    "subscriber_erased": _l("subscriber erased"),
    "subscriber_unsubscribed": _l("subscriber unsubscribed"),
    "subscribers_exported": _l("subscribers exported"),
    "subscribers_imported": _l("subscribers imported"),
}


def audit_action(action: str) -> str:
    label = AUDIT_ACTIONS.get(action)
    return str(label) if label is not None else action.replace("_", " ").replace(".", ": ")


def audit_actor(actor: str) -> str:
    if actor == "anonymous":
        return _("not logged in")
    if actor == "cli":
        return _("the command line")
    if actor.startswith("api:"):
        return _("API key “%(name)s”", name=actor[4:])
    return actor


def feed_problem(error: str) -> str:
    """Why a feed could not be fetched, in words (the stored error is the technical one)."""
    if not error:
        return ""
    http = re.match(r"HTTPError: (\d{3})", error)
    if http:
        status = int(http.group(1))
        if status == 404:
            return _("The feed's address was not found on its server (error 404). Check the address.")
        if status in (401, 403):
            return _("The feed's server refused access (error %(status)s).", status=status)
        return _("The feed's server answered with error %(status)s. Try again later.", status=status)
    kind = error.partition(":")[0]
    if "Timeout" in kind:
        return _("The feed's server did not answer in time. Try again later.")
    if kind in ("ConnectionError", "SSLError", "ProxyError"):
        return _("The feed's server could not be reached. Check the address, or try again later.")
    if "not an RSS or Atom feed" in error:
        return _("The address does not lead to an RSS or Atom feed.")
    if kind in ("InvalidURL", "MissingSchema", "InvalidSchema") or "not an http(s) URL" in error:
        return _("The feed's address is not a valid web address.")
    return _("The feed could not be read.")
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


for _filter in (subscriber_state, digest_state, delivery_state, consent_kind, suppression_label,
                consent_source, detail_text, audit_action, audit_actor, feed_problem):
    bp.add_app_template_filter(_filter)
