"""What a message in the bounce mailbox says: a DSN, a complaint, an auto-reply, or a reader's mail.

Standard library only. `read_message` reads delivery status notifications (RFC 3464,
multipart/report; report-type=delivery-status), complaint reports (ARF, RFC 5965,
report-type=feedback-report), the plain-text bounces of MTAs that send no DSN (qmail,
old Exim), and recognises auto-replies (RFC 3834 Auto-Submitted, the usual vendor
headers and out-of-office subjects). It says nothing about our database: `poll` maps
what it finds to subscribers (through the VERP token of the address a bounce came back
to, or the headers of the original message the report carries).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesHeaderParser, HeaderParser
from email.utils import getaddresses, parseaddr

MAX_REASON = 500

# Headers that name the address a message was delivered to (the envelope recipient first).
_DELIVERED_TO = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "X-Rcpt-To", "To", "Cc")
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_REPLY_CODE = re.compile(r"(?m)(?:^|\s)([45])\d\d[\s-]")
_AUTO_SUBJECT = re.compile(
    r"^\s*(auto(matic|matisk)?[ _-]?(reply|response|svar)|autosvar|out of (the )?office|"
    r"fr[åa]nvaro|abwesenheit|absence|on vacation|vacation reply|i am away|jag [äa]r borta)",
    re.IGNORECASE)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|delivery (status|failure|has failed|notification)|returned mail|"
    r"failure notice|mail delivery|could not be delivered|non[- ]?delivery|kunde inte levereras|"
    r"olevererbart", re.IGNORECASE)
_BOUNCE_SENDER = re.compile(r"^(mailer-daemon|postmaster|mail-daemon|mdaemon)@", re.IGNORECASE)


@dataclass
class Failure:
    """One recipient a DSN (or a plain bounce) reports."""

    email: str  # Final-Recipient (or Original-Recipient); "" when the report gives none
    permanent: bool
    status: str = ""  # enhanced status code, e.g. "5.1.1"
    reason: str = ""  # Diagnostic-Code, or the line of a plain bounce that says why


@dataclass
class InboundMessage:
    """One message of the bounce mailbox, read."""

    kind: str  # "bounce", "complaint", "auto-reply", "notice" (a delivered/relayed DSN), "mail"
    subject: str = ""
    sender: str = ""
    message_id: str = ""
    delivered_to: list[str] = field(default_factory=list)  # the addresses it came to
    failures: list[Failure] = field(default_factory=list)  # a bounce: who, and how
    reporter: str = ""  # the MTA or mailbox provider that wrote the report (Reporting-MTA, User-Agent)
    feedback_type: str = ""  # a complaint: abuse, fraud, ...
    complained: list[str] = field(default_factory=list)  # a complaint: Original-Rcpt-To, Removal-Recipient
    # The original message, from the report's third part: its envelope sender (our VERP
    # address), its recipients, and the unsubscribe token of its List-Unsubscribe.
    original_senders: list[str] = field(default_factory=list)
    original_recipients: list[str] = field(default_factory=list)
    original_tokens: list[str] = field(default_factory=list)
    text: str = ""  # the human-readable part, for a plain bounce's codes and for a note


def read_message(raw: bytes) -> InboundMessage:
    """Read one raw message; raises ValueError when it is not a message at all."""
    if not raw or not raw.strip():
        raise ValueError("empty message")
    message = message_from_bytes(raw, policy=policy.compat32)
    if not message.keys():
        raise ValueError("no headers")
    read = InboundMessage(
        kind="mail",
        subject=_header(message, "Subject"),
        sender=parseaddr(_header(message, "From"))[1],
        message_id=_header(message, "Message-ID").strip("<> "),
        delivered_to=_addresses(message, _DELIVERED_TO),
        text=_text(message)[:20000],
    )
    report_type = (message.get_param("report-type") or "").lower() if message.get_content_type() == \
        "multipart/report" else ""
    if report_type == "feedback-report":
        _read_complaint(message, read)
    elif report_type == "delivery-status":
        _read_dsn(message, read)
    elif _looks_like_bounce(message, read):
        _read_plain_bounce(read)
    elif _is_auto_reply(message, read.subject):
        read.kind = "auto-reply"
    return read


# --- reports (RFC 3464, RFC 5965) --------------------------------------------------------------


def _read_dsn(message: Message, read: InboundMessage) -> None:
    status_part = _part(message, ("message/delivery-status", "message/global-delivery-status"))
    if status_part is None:
        _read_plain_bounce(read)  # a report without its machine-readable part: the text is all
        _read_original(message, read)
        return
    blocks = _field_blocks(status_part)
    if blocks:
        read.reporter = _field_value(blocks[0].get("Reporting-MTA", ""))
    for block in blocks[1:]:
        action = (block.get("Action") or "").strip().lower()
        status = (block.get("Status") or "").strip()
        recipient = _field_value(block.get("Final-Recipient") or block.get("Original-Recipient") or "")
        reason = _unfold(block.get("Diagnostic-Code") or "")
        reason = _field_value(reason) if ";" in reason[:20] else reason
        if action == "failed":
            read.failures.append(Failure(email=recipient, permanent=not status.startswith("4"),
                                         status=status[:20], reason=(reason or status)[:MAX_REASON]))
        elif action == "delayed":
            read.failures.append(Failure(email=recipient, permanent=False, status=status[:20],
                                         reason=(reason or status)[:MAX_REASON]))
    read.kind = "bounce" if read.failures else "notice"
    _read_original(message, read)


def _read_complaint(message: Message, read: InboundMessage) -> None:
    read.kind = "complaint"
    report = _part(message, ("message/feedback-report",))
    fields = _field_blocks(report)[0] if report is not None and _field_blocks(report) else Message()
    read.feedback_type = (fields.get("Feedback-Type") or "abuse").strip().lower()[:50]
    read.reporter = (fields.get("User-Agent") or fields.get("Reported-Domain") or "").strip()[:200]
    for name in ("Original-Rcpt-To", "Removal-Recipient"):
        read.complained += [_field_value(value) for value in fields.get_all(name, [])]
    if fields.get("Original-Mail-From"):
        read.original_senders.append(parseaddr(fields["Original-Mail-From"])[1])
    _read_original(message, read)


def _read_original(message: Message, read: InboundMessage) -> None:
    """The headers of the original message, which a report carries as its last part."""
    headers = None
    for part in message.walk():
        content_type = part.get_content_type()
        if content_type in ("message/rfc822", "message/global"):
            payload = part.get_payload()
            if isinstance(payload, list) and payload:
                headers = payload[0]
            elif isinstance(payload, str):
                headers = HeaderParser().parsestr(payload)
        elif content_type in ("text/rfc822-headers", "message/rfc822-headers", "text/global-headers"):
            data = part.get_payload(decode=True) or b""
            headers = BytesHeaderParser().parsebytes(data.lstrip())
        if headers is not None:
            break
    if headers is None:
        return
    read.original_senders += [parseaddr(value)[1] for value in headers.get_all("Return-Path", [])]
    read.original_recipients += _addresses(headers, ("To",))
    for value in headers.get_all("List-Unsubscribe", []):
        read.original_tokens += re.findall(r"/unsubscribe/([A-Za-z0-9_.=-]+)>", _unfold(value))


# --- mail that is not a report ----------------------------------------------------------------


def _looks_like_bounce(message: Message, read: InboundMessage) -> bool:
    """A non-delivery message without a DSN (qmail, old MTAs): from the mailer daemon, or with
    an empty Return-Path and a bounce's subject."""
    return_path = message.get("Return-Path")
    from_daemon = bool(_BOUNCE_SENDER.match(read.sender))
    null_sender = return_path is not None and parseaddr(return_path)[1] == ""
    return (from_daemon or null_sender) and bool(_BOUNCE_SUBJECT.search(read.subject) or
                                                  "qmail-send" in read.text)


def _read_plain_bounce(read: InboundMessage) -> None:
    """The status in a plain bounce's text: the first enhanced status code, else an SMTP reply
    code; neither means unknown (no failure is recorded, the poller leaves it with a note)."""
    read.kind = "bounce"
    text = read.text
    match = _STATUS.search(text) or _REPLY_CODE.search(text)
    if match is None:
        return
    start = text.rfind("\n", 0, match.start()) + 1
    end = text.find("\n", match.end())
    line = text[start:end if end >= 0 else len(text)].strip()
    read.failures.append(Failure(email="", permanent=match[1] == "5",
                                 status=match[0] if match.re is _STATUS else "", reason=line[:MAX_REASON]))


def _is_auto_reply(message: Message, subject: str) -> bool:
    """RFC 3834's Auto-Submitted (anything but "no"), the vendors' own headers, or the subject."""
    auto_submitted = (message.get("Auto-Submitted") or "no").strip().lower()
    if not auto_submitted.startswith("no"):
        return True
    if any(message.get(name) for name in ("X-Autoreply", "X-Autorespond", "X-Auto-Response-Suppress")):
        return True
    if (message.get("Precedence") or "").strip().lower() in ("auto_reply", "auto-reply"):
        return True
    return bool(_AUTO_SUBJECT.match(subject))


# --- helpers ----------------------------------------------------------------------------------


def _part(message: Message, types: tuple[str, ...]) -> Message | None:
    return next((part for part in message.walk() if part.get_content_type() in types), None)


def _field_blocks(part: Message) -> list[Message]:
    """The field groups of a message/delivery-status or feedback-report part (the parser makes
    a list of header blocks of it, or leaves the text when it is encoded or unusual)."""
    payload = part.get_payload()
    if isinstance(payload, list) and payload and all(isinstance(p, Message) for p in payload):
        blocks = list(payload)
        if len(blocks) == 1 and part.get_content_type() != "message/feedback-report":
            blocks = _split_blocks(blocks[0].as_string())  # one block parsed: split it ourselves
        return blocks
    data = part.get_payload(decode=True)
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(payload or "")
    return _split_blocks(text)


def _split_blocks(text: str) -> list[Message]:
    text = text.replace("\r\n", "\n").strip("\n")
    return [HeaderParser().parsestr(block.strip("\n") + "\n") for block in re.split(r"\n\s*\n", text)
            if block.strip()]


def _field_value(value: str) -> str:
    """"rfc822; someone@example.se" -> "someone@example.se"."""
    value = _unfold(value)
    _, semicolon, rest = value.partition(";")
    return (rest if semicolon else value).strip().strip("<>")


def _unfold(value: str) -> str:
    return " ".join(str(value).split())


def _header(message: Message, name: str) -> str:
    value = message.get(name)
    if value is None:
        return ""
    try:
        return _unfold(str(make_header(decode_header(str(value)))))[:300]
    except (UnicodeError, LookupError, ValueError):
        return _unfold(str(value))[:300]


def _addresses(message: Message, names: tuple[str, ...]) -> list[str]:
    found = []
    for name in names:
        for _, address in getaddresses([str(value) for value in message.get_all(name, [])]):
            if address and address not in found:
                found.append(address)
    return found


def _text(message: Message) -> str:
    """The text of the first text/plain part (or the body), for plain bounces and notes."""
    for part in message.walk():
        if part.get_content_type() == "text/plain" and not part.is_multipart():
            data = part.get_payload(decode=True)
            if isinstance(data, bytes):
                charset = part.get_content_charset() or "utf-8"
                try:
                    return data.decode(charset, "replace")
                except LookupError:
                    return data.decode("utf-8", "replace")
    return ""
