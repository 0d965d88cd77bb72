"""Reading the bounce mailbox: bounces, complaints and mailto unsubscribes that come back by mail.

`poll_mailbox` reads every message of BOUNCE_MAILBOX_URL and hands each to `handle_message`:

- a bounce (a DSN, or a plain MTA bounce) or a complaint (ARF) becomes `BounceReport`s that
  `bounces.record_reports` records exactly as the webhooks' are (source "email"): the
  subscriber comes from the VERP address it came back to (`verp`), else from the report's
  recipient fields or the original message's headers;
- a mail with a reader's unsubscribe token (in the subject, as List-Unsubscribe's mailto
  gives it, or in the `+` part of the address) unsubscribes them (source "email");
- auto-replies, out-of-office messages and success notices are dropped;
- anything else is left in the mailbox, with a note in the admin's audit log (once).

Handled messages are deleted. A second poll finds only what it left, and notes nothing twice;
recording the same bounce twice changes nothing either (a poll that died before deleting).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import timedelta

from flask import current_app
from sqlalchemy import func, select

from newsletter.admins import audit
from newsletter.delivery import bounces
from newsletter.engine.clock import utcnow
from newsletter.extensions import db
from newsletter.inbound.mailbox import MailboxError, open_mailbox
from newsletter.inbound.reports import InboundMessage, read_message
from newsletter.mail.compose import verp_signer
from newsletter.models import AuditEvent, Subscriber
from newsletter.subscriptions import tokens
from newsletter.subscriptions.signup import unsubscribe

log = logging.getLogger(__name__)

NOTE_ACTION = "bounce_mailbox.unreadable"
NOTE_ACTOR = "bounce mailbox"
_TOKEN_WORD = re.compile(r"[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{16,}")


@dataclass
class Outcome:
    action: str  # "bounce", "complaint", "unsubscribe", "ignored", "unreadable"
    reason: str = ""

    @property
    def handled(self) -> bool:
        return self.action != "unreadable"


def poll_mailbox(url: str | None = None) -> dict[str, int]:
    """Read the bounce mailbox once; counts of each outcome. MailboxError when it cannot be read."""
    url = url or current_app.config["BOUNCE_MAILBOX_URL"]
    if not url:
        raise MailboxError("BOUNCE_MAILBOX_URL is not set")
    counts = dict.fromkeys(("bounce", "complaint", "unsubscribe", "ignored", "unreadable"), 0)
    box = open_mailbox(url)
    try:
        for message in box.messages():
            outcome = handle_message(message.raw)
            counts[outcome.action] += 1
            if not outcome.handled:
                note_unreadable(message.raw, outcome.reason)
            # Each message is its own unit of work: what it says is committed before the
            # message is deleted, so a poll that dies half-way loses nothing.
            db.session.commit()
            if outcome.handled:
                box.delete(message.key)
    finally:
        box.close()
    if any(counts.values()):
        log.info("bounce mailbox: %s", ", ".join(f"{n} {k}" for k, n in counts.items() if n))
    return counts


def handle_message(raw: bytes) -> Outcome:
    """Record what one message of the mailbox says (flushed, for the caller to commit); its outcome."""
    try:
        read = read_message(raw)
    except Exception as exc:  # noqa: BLE001  (one strange message must not stop every poll)
        return Outcome("unreadable", f"cannot be parsed: {exc}"[:300])
    if read.kind == "complaint":
        return _complaint(read)
    if read.kind == "bounce":
        return _bounce(read)
    unsubscribed = _unsubscribe(read)
    if unsubscribed is not None:
        return unsubscribed
    if read.kind in ("auto-reply", "notice"):
        return Outcome("ignored", read.kind)
    return Outcome("unreadable", "neither a bounce, a complaint, an auto-reply nor an unsubscribe request")


def _bounce(read: InboundMessage) -> Outcome:
    if not read.failures:
        return Outcome("unreadable", "a bounce that gives no status")
    subscriber, digest_id = _verp_subscriber(read)
    if subscriber is not None:
        # The signed address names the recipient, whatever the report says (forwarded mail,
        # a mangled report): one report, permanent if any failure is.
        failure = next((f for f in read.failures if f.permanent), read.failures[0])
        reports = [_report(subscriber.email, "bounce", failure.permanent, read, failure.status,
                           failure.reason, digest_id)]
    else:
        recipients = read.original_recipients if len(read.original_recipients) == 1 else []
        reports = [_report(failure.email or recipients[0], "bounce", failure.permanent, read, failure.status,
                           failure.reason, None)
                   for failure in read.failures if failure.email or recipients]
        if not reports:
            return Outcome("unreadable", "a bounce that does not say whom it is about")
    counts = bounces.record_reports(reports, source="email")
    if not counts["recorded"]:
        return Outcome("ignored", "a bounce for an address not on the list")
    return Outcome("bounce")


def _complaint(read: InboundMessage) -> Outcome:
    subscriber, digest_id = _verp_subscriber(read)
    if subscriber is None:
        subscriber = _token_subscriber(read.original_tokens)
    emails = ([subscriber.email] if subscriber is not None else
              read.complained or read.original_recipients[:1])
    if not emails:
        return Outcome("unreadable", "a complaint that does not say whom it is about")
    reports = [_report(email, "complaint", True, read, "", read.feedback_type, digest_id) for email in emails]
    counts = bounces.record_reports(reports, source="email")
    return Outcome("complaint" if counts["recorded"] else "ignored")


def _unsubscribe(read: InboundMessage) -> Outcome | None:
    """A reader's mail to UNSUBSCRIBE_MAILTO: their token in the subject or the address."""
    words = _TOKEN_WORD.findall(read.subject)
    words += [address.split("@")[0].partition("+")[2] for address in read.delivered_to]
    subscriber = _token_subscriber(word for word in words if word)
    if subscriber is None:
        return None
    unsubscribe(subscriber, source="email")  # nothing if done before
    return Outcome("unsubscribe")


def _verp_subscriber(read: InboundMessage) -> tuple[Subscriber | None, int | None]:
    """The subscriber (and send) of the first VERP address the message came back to, or that
    the original message was sent from."""
    signer = verp_signer()
    if signer is None:
        return None, None
    for address in (*read.delivered_to, *read.original_senders):
        token = signer.read(address)
        if token is not None:
            subscriber = db.session.get(Subscriber, token.subscriber_id)
            if subscriber is not None:
                return subscriber, token.send_id or None
    return None, None


def _token_subscriber(words) -> Subscriber | None:
    for word in words:
        try:
            uid = tokens.read_subscriber_token("unsubscribe", word).uid
        except tokens.TokenError:
            continue
        subscriber = db.session.execute(select(Subscriber).where(Subscriber.uid == uid)).scalar_one_or_none()
        if subscriber is not None:
            return subscriber
    return None


def _report(email: str, kind: str, permanent: bool, read: InboundMessage, status: str, reason: str,
            digest_id: int | None) -> bounces.BounceReport:
    detail = {"provider": "mailbox", "reason": reason[:bounces.MAX_REASON_LENGTH], "status": status,
              "reporter": read.reporter[:200], "message_id": read.message_id[:200]}
    return bounces.BounceReport(email=email, kind=kind, permanent=permanent, detail=detail,
                                digest_id=digest_id)


# --- notes for the admin ----------------------------------------------------------------------


def note_unreadable(raw: bytes, reason: str) -> bool:
    """An audit-log note about a message left in the mailbox, once per message; True if new."""
    target = f"message {hashlib.sha256(raw).hexdigest()[:24]}"
    seen = db.session.execute(select(AuditEvent.id).where(AuditEvent.action == NOTE_ACTION,
                                                          AuditEvent.target == target).limit(1)).first()
    if seen is not None:
        return False
    try:
        read = read_message(raw)
        subject, sender, message_id = read.subject, read.sender, read.message_id
    except Exception:  # noqa: BLE001
        subject = sender = message_id = ""
    audit.record(NOTE_ACTION, target, actor=NOTE_ACTOR, reason=reason, subject=subject[:200],
                 sender=sender[:200], message_id=message_id[:200])
    log.warning("bounce mailbox: left a message I cannot read (%s): %s", reason, subject[:80])
    return True


def recent_notes(days: int = 7) -> int:
    """How many messages were left unread in the mailbox in the last `days` (for the dashboard)."""
    since = utcnow() - timedelta(days=days)
    return db.session.execute(select(func.count()).select_from(AuditEvent).where(
        AuditEvent.action == NOTE_ACTION, AuditEvent.created_at >= since)).scalar_one()
