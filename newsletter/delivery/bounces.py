"""Bounces and complaints: what the mail provider tells us after a message left.

`record_bounce` is the one rule: a complaint (someone pressed "this is spam") or a
permanent bounce takes the subscriber off the list (status `complained` or
`bounced`, which no send includes) with a consent-ledger event; a soft bounce is
only recorded. The parsers turn the generic JSON webhook and Amazon SES
notifications into `BounceReport`s; `record_reports` applies a batch of them in
one transaction, so a request is applied whole or not at all.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from email.utils import parseaddr

from sqlalchemy import select

from newsletter.delivery import totals
from newsletter.extensions import db
from newsletter.models import Delivery, Subscriber
from newsletter.subscriptions.signup import InvalidInput, normalise_email, record_event

log = logging.getLogger(__name__)

KINDS = ("bounce", "complaint")
MAX_REASON_LENGTH = 500
MAX_ITEMS = 1000  # per request

# What each kind turns a subscriber into, and the statuses it does not change: someone who
# unsubscribed stays unsubscribed after a bounce; a complaint outranks everything.
_NEW_STATUS = {"bounce": "bounced", "complaint": "complained"}
_KEPT = {"bounce": {"bounced", "complained", "unsubscribed"}, "complaint": {"complained"}}


class InvalidPayload(ValueError):
    """A webhook body that cannot be accepted; `index` is the offending item of a list, if any."""

    def __init__(self, reason: str, index: int | None = None):
        super().__init__(reason if index is None else f"item {index}: {reason}")
        self.reason = reason
        self.index = index


@dataclass
class BounceReport:
    email: str
    kind: str = "bounce"
    permanent: bool = True
    detail: dict = field(default_factory=dict)
    digest_id: int | None = None  # the send it is about, when known (a VERP address says)


def record_bounce(email: str, *, kind: str = "bounce", permanent: bool = True, source: str = "webhook",
                  detail: dict | None = None, digest_id: int | None = None,
                  commit: bool = True) -> Subscriber | None:
    """Record a bounce or complaint for `email`; the subscriber, or None if the address is unknown.

    Complaint, or permanent bounce: the subscriber is marked complained / bounced (and so left
    out of every later send), with a consent event. Soft bounce: only the event. Reporting the
    same thing twice (providers retry) changes nothing and adds no second event.
    `digest_id`, when the report names its send, picks that send's delivery row rather than
    the subscriber's latest. `commit=False` leaves the commit to the caller (e.g. a send
    batch, or `record_reports`).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    permanent = True if kind == "complaint" else bool(permanent)
    try:
        address = normalise_email(email)
    except InvalidInput:
        return None
    subscriber = db.session.execute(
        select(Subscriber).where(Subscriber.email == address).with_for_update()
    ).scalar_one_or_none()
    if subscriber is None:
        log.info("%s for an address not on the list", kind)
        return None
    apply_bounce(subscriber, kind=kind, permanent=permanent, source=source, detail=detail,
                 digest_id=digest_id)
    if commit:
        db.session.commit()
    return subscriber


def apply_bounce(subscriber: Subscriber, *, kind: str, permanent: bool, source: str,
                 detail: dict | None = None, digest_id: int | None = None) -> None:
    """The rule itself, for a subscriber already looked up (and locked); `digest_id` names
    the send a reported bounce is about, when known."""
    previous = subscriber.status
    detail = {**(detail or {}), "permanent": permanent, "previous_status": previous}
    if not permanent:
        record_event(subscriber, kind, source=source, detail=detail)
    elif previous not in _KEPT[kind]:
        subscriber.status = _NEW_STATUS[kind]
        subscriber.generation += 1  # confirmation links sent before no longer work
        record_event(subscriber, kind, source=source, detail=detail)
        log.info("subscriber %s %s (was %s)", subscriber.id, subscriber.status, previous)
        if kind == "complaint":  # the latest send's figure: a counter, no name
            totals.count_for_latest_send(subscriber.id, "complaints")
    elif previous == "unsubscribed" and kind == "bounce":
        record_event(subscriber, kind, source=source, detail=detail)  # status kept, fact recorded
    if kind == "bounce" and permanent:
        _bounce_last_delivery(subscriber, detail, digest_id)


def record_send_bounces(digest_id: int) -> int:
    """The 5xx replies a send met (its ledger marks those deliveries bounced) applied to the
    subscribers, through the same rule as a reported bounce; how many were taken off the list.
    Idempotent: a subscriber already bounced is left as is."""
    rows = db.session.execute(
        select(Subscriber, Delivery.last_reply).join(Delivery, Delivery.subscriber_id == Subscriber.id)
        .where(Delivery.digest_id == digest_id, Delivery.state == "bounced",
               Subscriber.status.in_(("confirmed", "pending")))
        .order_by(Subscriber.id).with_for_update(of=Subscriber)
    ).all()
    for subscriber, reply in rows:
        apply_bounce(subscriber, kind="bounce", permanent=True, source="system",
                     detail={"reply": reply, "digest_id": digest_id})
    db.session.commit()
    return len(rows)


def _bounce_last_delivery(subscriber: Subscriber, detail: dict, digest_id: int | None = None) -> None:
    """A bounce that came back after the message left belongs to the subscriber's latest
    delivery (or that of the send it names): it counts as bounced in that send's figures,
    not as sent. A repeated report finds it bounced already and changes nothing (nor an
    older send's row)."""
    query = select(Delivery).where(Delivery.subscriber_id == subscriber.id)
    if digest_id:
        query = query.where(Delivery.digest_id == digest_id)
    latest = db.session.execute(query.order_by(Delivery.id.desc()).limit(1)).scalar_one_or_none()
    if latest is not None and latest.state == "sent":
        latest.state = "bounced"
        latest.last_reply = str(detail.get("reason") or "bounce reported after delivery")[:500]


def record_reports(reports: list[BounceReport], *, source: str = "webhook") -> dict[str, int]:
    """Apply a batch of reports in one transaction; counts of `recorded` and `unknown` addresses."""
    counts = {"recorded": 0, "unknown": 0}
    try:
        # One order for the row locks, so two concurrent batches cannot deadlock.
        for report in sorted(reports, key=lambda r: r.email.lower()):
            subscriber = record_bounce(report.email, kind=report.kind, permanent=report.permanent,
                                       source=source, detail=report.detail, digest_id=report.digest_id,
                                       commit=False)
            counts["recorded" if subscriber is not None else "unknown"] += 1
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise
    return counts


# --- the generic JSON form ------------------------------------------------------------------


def parse_generic(payload: object) -> list[BounceReport]:
    """{"email", "type": "bounce"|"complaint", "permanent": bool, "reason"} or a list of them."""
    items = payload if isinstance(payload, list) else [payload]
    if not items:
        raise InvalidPayload("empty list")
    if len(items) > MAX_ITEMS:
        raise InvalidPayload(f"more than {MAX_ITEMS} items")
    reports = []
    for index, item in enumerate(items):
        where = index if isinstance(payload, list) else None
        if not isinstance(item, dict):
            raise InvalidPayload("expected a JSON object", where)
        unknown = set(item) - {"email", "type", "permanent", "reason"}
        if unknown:
            raise InvalidPayload(f"unknown field(s): {', '.join(sorted(unknown))}", where)
        email = item.get("email")
        if not isinstance(email, str) or not email.strip():
            raise InvalidPayload("'email' must be a non-empty string", where)
        try:
            normalise_email(email)
        except InvalidInput as exc:
            raise InvalidPayload(f"'email' is not a valid address ({exc.reason})", where) from exc
        kind = item.get("type", "bounce")
        if kind not in KINDS:
            raise InvalidPayload("'type' must be \"bounce\" or \"complaint\"", where)
        permanent = item.get("permanent", True)
        if not isinstance(permanent, bool):
            raise InvalidPayload("'permanent' must be true or false", where)
        reason = item.get("reason", "")
        if reason is None:
            reason = ""
        if not isinstance(reason, str):
            raise InvalidPayload("'reason' must be a string", where)
        reports.append(BounceReport(email=email, kind=kind, permanent=permanent,
                                    detail={"provider": "generic", "reason": reason[:MAX_REASON_LENGTH]}))
    return reports


# --- Amazon SES notifications (the Message of an SNS Notification) -------------------------------


def parse_ses(message: str | dict) -> list[BounceReport]:
    """Bounce and Complaint notifications of SES (notifications or event publishing); other
    types (Delivery, Send, Open, ...) give no reports. InvalidPayload when it is not SES JSON."""
    if isinstance(message, str):
        try:
            message = json.loads(message)
        except ValueError as exc:
            raise InvalidPayload("the SNS Message is not JSON") from exc
    if not isinstance(message, dict):
        raise InvalidPayload("the SES notification is not a JSON object")
    kind = message.get("notificationType") or message.get("eventType")
    if not isinstance(kind, str):
        raise InvalidPayload("not an SES notification (no notificationType or eventType)")
    mail = message.get("mail") if isinstance(message.get("mail"), dict) else {}
    base = {"provider": "ses", "ses_message_id": str(mail.get("messageId", ""))[:200]}
    if kind == "Bounce":
        bounce = _object(message, "bounce")
        bounce_type = str(bounce.get("bounceType", ""))
        permanent = bounce_type == "Permanent"  # Transient and Undetermined are soft
        detail = {**base, "bounce_type": bounce_type[:50],
                  "bounce_subtype": str(bounce.get("bounceSubType", ""))[:50],
                  "feedback_id": str(bounce.get("feedbackId", ""))[:200]}
        return [BounceReport(email=address, kind="bounce", permanent=permanent,
                             detail={**detail, "reason": reason})
                for address, reason in _recipients(bounce, "bouncedRecipients")]
    if kind == "Complaint":
        complaint = _object(message, "complaint")
        detail = {**base, "feedback_type": str(complaint.get("complaintFeedbackType", ""))[:50],
                  "feedback_id": str(complaint.get("feedbackId", ""))[:200]}
        return [BounceReport(email=address, kind="complaint", permanent=True, detail=detail)
                for address, _reason in _recipients(complaint, "complainedRecipients")]
    return []


def _object(message: dict, name: str) -> dict:
    value = message.get(name)
    if not isinstance(value, dict):
        raise InvalidPayload(f"SES notification without a '{name}' object")
    return value


def _recipients(section: dict, name: str) -> list[tuple[str, str]]:
    recipients = section.get(name)
    if not isinstance(recipients, list) or not recipients:
        raise InvalidPayload(f"SES notification without '{name}'")
    if len(recipients) > MAX_ITEMS:
        raise InvalidPayload(f"more than {MAX_ITEMS} recipients")
    result = []
    for recipient in recipients:
        address = recipient.get("emailAddress") if isinstance(recipient, dict) else None
        if not isinstance(address, str) or not address.strip():
            raise InvalidPayload(f"a recipient in '{name}' has no emailAddress")
        address = parseaddr(address)[1] or address  # SES may give "Name <addr>"
        reason = recipient.get("diagnosticCode") or recipient.get("status") or ""
        result.append((address, str(reason)[:MAX_REASON_LENGTH]))
    return result
