"""Building email messages and the transports that carry them.

Every email is a template triplet under templates/emails/ (`NAME_subject.txt`,
`NAME.txt`, `NAME.html`) rendered in the recipient's language. A message is
*prepared* once (headers, both MIME parts, CSS inlined, quoted-printable) with
slots for the per-recipient parts (To, Message-ID, Date, the personal links);
`PreparedMessage.render(values)` then only joins bytes, which is what makes a
bulk send cheap: tens of microseconds a message instead of milliseconds.
"""

from __future__ import annotations

import binascii
import logging
import os
import secrets
import smtplib
import ssl
import threading
import time
from dataclasses import dataclass, field
from email.header import Header
from email.utils import format_datetime, formataddr, parseaddr
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

import css_inline
from flask import current_app, render_template
from flask_babel import force_locale
from markupsafe import escape

from .models import utcnow

log = logging.getLogger(__name__)

# Per-recipient values. A template gets `slot("unsubscribe_url")` where the link goes.
# `confirm_url` lets one rendering of the confirmation email serve every pending subscriber.
SLOT_NAMES = ("to", "message_id", "date", "unsubscribe_url", "preferences_url", "confirm_url")
_SLOT_MARK = "@@nl-slot:{}@@"
_CRLF = b"\r\n"


def slot(name: str) -> str:
    """The marker a template outputs where a per-recipient value goes."""
    if name not in SLOT_NAMES:
        raise ValueError(f"unknown slot {name!r}")
    return _SLOT_MARK.format(name)


class MailError(Exception):
    """A message could not be sent. `code` is the SMTP reply code, if there was one."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.code = code

    @property
    def permanent(self) -> bool:
        """5xx: the address is refused for good (bounce). Anything else may be retried."""
        return self.code is not None and 500 <= self.code < 600


# --- addresses and headers --------------------------------------------------


def sender_address() -> tuple[str, str]:
    """(display name, address) of MAIL_FROM."""
    return parseaddr(current_app.config["MAIL_FROM"])


def sender_domain() -> str:
    return sender_address()[1].rpartition("@")[2] or "localhost"


def list_id() -> str:
    configured = current_app.config.get("LIST_ID")
    return configured or f"<nyhetsbrev.{sender_domain()}>"


def smtp_address(email: str) -> tuple[str, bool]:
    """The address as SMTP wants it: IDN domain as punycode; True if it still needs SMTPUTF8."""
    local, _, domain = email.rpartition("@")
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        pass
    address = f"{local}@{domain}"
    return address, not address.isascii()


def _encode_header(name: str, value: str) -> bytes:
    if any(c in value for c in "\r\n"):
        raise ValueError(f"line break in {name} header")
    if value.isascii() and len(name) + len(value) < 990:
        return f"{name}: {value}".encode("ascii") + _CRLF
    encoded = Header(value, "utf-8", header_name=name).encode(linesep="\r\n")
    return f"{name}: {encoded}".encode("ascii") + _CRLF


def _encode_from(value: str) -> str:
    name, address = parseaddr(value)
    return formataddr((name, address), charset="utf-8") if name else address


def _qp(text: str) -> bytes:
    """Quoted-printable with CRLF line ends (7-bit safe, no SMTP extension needed)."""
    data = text.replace("\r\n", "\n").encode("utf-8")
    return binascii.b2a_qp(data, quotetabs=False, istext=True, header=False).replace(b"\n", _CRLF)


# --- prepared messages --------------------------------------------------------


@dataclass
class PreparedMessage:
    """A whole message as bytes with slots; `render` fills them for one recipient."""

    chunks: list[bytes] = field(default_factory=list)
    # For each gap between chunks: (slot name, how to encode its value).
    slots: list[tuple[str, str]] = field(default_factory=list)
    subject: str = ""
    domain: str = "localhost"  # of MAIL_FROM, for Message-IDs made at render time

    def _add(self, data: bytes) -> None:
        if len(self.chunks) > len(self.slots):
            self.chunks[-1] += data
        else:
            self.chunks.append(data)

    def _add_slot(self, name: str, encoding: str) -> None:
        if len(self.chunks) == len(self.slots):
            self.chunks.append(b"")
        self.slots.append((name, encoding))

    def render(self, values: dict[str, str]) -> bytes:
        """The message for one recipient. Missing to/message_id/date are made up here."""
        parts = [self.chunks[0]]
        for (name, encoding), chunk in zip(self.slots, self.chunks[1:], strict=False):
            value = values.get(name)
            if value is None:
                value = _default_slot_value(name, self.domain)
            if encoding == "header":
                if "\r" in value or "\n" in value:
                    raise ValueError(f"line break in the value of {name}")
                parts.append(value.encode("utf-8"))
            else:
                if encoding == "html":
                    value = str(escape(value))
                # Soft line breaks around the value keep every line within 76 characters.
                parts.append(b"=\r\n" + _qp(value) + b"=\r\n")
            parts.append(chunk)
        return b"".join(parts)


def _default_slot_value(name: str, domain: str) -> str:
    if name == "message_id":
        return new_message_id(domain)
    if name == "date":
        return format_datetime(utcnow())
    raise KeyError(f"no value for slot {name!r}")


def new_message_id(domain: str) -> str:
    return f"<{time.time_ns():x}.{secrets.token_hex(6)}@{domain}>"


def _split_slots(text: str) -> list[str]:
    """Text split into [literal, slot name, literal, slot name, ..., literal]."""
    pieces: list[str] = []
    rest = text
    while True:
        start = rest.find("@@nl-slot:")
        if start < 0:
            pieces.append(rest)
            return pieces
        end = rest.find("@@", start + 10)
        name = rest[start + 10 : end]
        if end < 0 or name not in SLOT_NAMES:
            raise ValueError(f"malformed slot in template near {rest[start:start + 40]!r}")
        pieces.extend([rest[:start], name])
        rest = rest[end + 2 :]


def _add_body(msg: PreparedMessage, text: str, encoding: str) -> None:
    pieces = _split_slots(text)
    for index, piece in enumerate(pieces):
        if index % 2:
            msg._add_slot(piece, encoding)
        elif piece:
            msg._add(_qp(piece))


def prepare_message(
    *,
    subject: str,
    text: str,
    html: str,
    headers: dict[str, str] | None = None,
    bulk: bool = False,
) -> PreparedMessage:
    """A multipart/alternative message (text + HTML, UTF-8) with its slots.

    `bulk` adds the list headers (List-Id, List-Unsubscribe with the
    recipient's own link, List-Unsubscribe-Post for RFC 8058 one-click).
    """
    msg = PreparedMessage(subject=subject, domain=sender_domain())
    msg._add(b"Date: ")
    msg._add_slot("date", "header")
    msg._add(_CRLF + _encode_header("From", _encode_from(current_app.config["MAIL_FROM"])))
    msg._add(b"To: ")
    msg._add_slot("to", "header")
    msg._add(_CRLF + _encode_header("Subject", subject))
    msg._add(b"Message-ID: ")
    msg._add_slot("message_id", "header")
    msg._add(_CRLF + b"MIME-Version: 1.0\r\n")
    if bulk:
        msg._add(_encode_header("List-Id", list_id()))
        msg._add(b"List-Unsubscribe: <")
        msg._add_slot("unsubscribe_url", "header")
        mailto = current_app.config.get("UNSUBSCRIBE_MAILTO")
        msg._add(b">" + (f", <mailto:{mailto}?subject=unsubscribe>".encode() if mailto else b""))
        msg._add(_CRLF + b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n")
        msg._add(b"Precedence: bulk\r\nAuto-Submitted: auto-generated\r\n")
    for name, value in (headers or {}).items():
        msg._add(_encode_header(name, value))
    boundary = f"=_nl_{secrets.token_hex(12)}"
    msg._add(f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n'.encode())
    for subtype, body in (("plain", text), ("html", html)):
        msg._add(
            f"--{boundary}\r\nContent-Type: text/{subtype}; charset=\"utf-8\"\r\n"
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n".encode()
        )
        _add_body(msg, body if body.endswith("\n") else body + "\n", "text" if subtype == "plain" else "html")
    msg._add(f"--{boundary}--\r\n".encode())
    return msg


# --- templates ----------------------------------------------------------------


def inline_css(html: str) -> str:
    """CSS from <style> into style attributes; media queries (dark mode, mobile) are kept."""
    return css_inline.inline(html, keep_style_tags=True)


def render_email(name: str, locale: str, **context) -> tuple[str, str, str]:
    """(subject, text, html) of the template triplet `name` in `locale`."""
    with force_locale(locale):
        context.setdefault("locale", locale)
        subject = render_template(f"emails/{name}_subject.txt", **context)
        text = render_template(f"emails/{name}.txt", **context)
        html = render_template(f"emails/{name}.html", **context)
    return " ".join(subject.split()), text, inline_css(html)


def build_email(name: str, to: str, locale: str, *, bulk: bool = False, slots: dict | None = None,
                **context) -> bytes:
    """One finished message from a template triplet (for single, non-bulk-speed mail)."""
    subject, text, html = render_email(name, locale, **context)
    prepared = prepare_message(subject=subject, text=text, html=html, bulk=bulk)
    return prepared.render({"to": smtp_address(to)[0], **(slots or {})})


# --- transports ---------------------------------------------------------------


class Transport(Protocol):
    def send(self, sender: str, recipient: str, message: bytes) -> None: ...

    def close(self) -> None: ...


class SMTPTransport:
    """One SMTP connection, opened on first use and reused until closed or dropped."""

    def __init__(self, url: str, timeout: float = 30):
        parts = urlsplit(url)
        self.scheme = parts.scheme
        self.host = parts.hostname or "localhost"
        self.port = parts.port or {"smtps": 465, "smtp+starttls": 587}.get(self.scheme, 25)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.timeout = timeout
        self._conn: smtplib.SMTP | None = None
        self.pipelining = False  # the server's EHLO offered PIPELINING (RFC 2920)

    def _connect(self) -> smtplib.SMTP:
        # Only TLS needs the context (loading the CA store costs a good part of a connect).
        context = ssl.create_default_context() if self.scheme in ("smtps", "smtp+starttls") else None
        if self.scheme == "smtps":
            conn: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout,
                                                  context=context)
        else:
            conn = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        conn.ehlo()
        if self.scheme == "smtp+starttls":
            conn.starttls(context=context)
            conn.ehlo()
        self.pipelining = conn.has_extn("pipelining")
        if self.username:
            conn.login(self.username, self.password or "")
        return conn

    def send(self, sender: str, recipient: str, message: bytes) -> None:
        """Send one message to one recipient, checking the reply to every step.

        Raises MailError with the reply code (None when the connection failed). A 421
        or a dropped connection closes the connection, so the next send opens a new one.
        A reused connection the server closed while idle is reopened once at once: no
        part of the message had been sent on it.
        """
        address, needs_utf8 = smtp_address(recipient)
        options = ["SMTPUTF8"] if needs_utf8 else []
        for retry_idle in (True, False):
            reused = self._conn is not None
            try:
                if self._conn is None:
                    self._conn = self._connect()
                conn = self._conn
                if needs_utf8 and not conn.has_extn("smtputf8"):
                    raise MailError("server does not accept internationalised addresses (SMTPUTF8)", 553)
                if self.pipelining:
                    replies = self._pipelined_envelope(conn, sender, address, options)
                else:
                    replies = None
                    code, reply = conn.mail(sender, options)
            except (smtplib.SMTPServerDisconnected, OSError) as exc:
                self._drop()
                if reused and retry_idle:  # closed while idle (timeout): nothing was sent yet
                    continue
                raise MailError(f"connection failed: {exc}") from exc
            except smtplib.SMTPException as exc:
                self._drop()
                raise MailError(f"connection failed: {exc}", getattr(exc, "smtp_code", None)) from exc
            break
        if replies is not None:
            self._send_pipelined_data(conn, replies, message)
            return
        try:
            self._check(conn, code, reply, (250,))
            code, reply = conn.rcpt(address)
            self._check(conn, code, reply, (250, 251))
            code, reply = conn.data(message)
            self._check(conn, code, reply, (250,))
        except smtplib.SMTPResponseException as exc:  # DATA refused (no 354)
            self._reset_or_drop(exc.smtp_code)
            raise MailError(_reply_text(exc.smtp_code, exc.smtp_error), exc.smtp_code) from exc
        except (smtplib.SMTPException, OSError) as exc:
            self._drop()
            raise MailError(f"connection failed: {exc}") from exc

    @staticmethod
    def _pipelined_envelope(conn: smtplib.SMTP, sender: str, address: str,
                            options: list[str]) -> list[tuple[int, bytes]]:
        """MAIL, RCPT and DATA in one write (RFC 2920), then their three replies in order.
        Nothing of the message is sent yet, so a connection found dead here lost nothing."""
        extra = (" " + " ".join(options)) if options else ""
        commands = f"MAIL FROM:<{sender}>{extra}\r\nRCPT TO:<{address}>\r\nDATA\r\n"
        conn.send(commands.encode("utf-8"))
        return [conn.getreply() for _ in range(3)]

    def _send_pipelined_data(self, conn: smtplib.SMTP, replies: list[tuple[int, bytes]],
                             message: bytes) -> None:
        (mail_code, mail_reply), (rcpt_code, rcpt_reply), (data_code, data_reply) = replies
        try:
            failed = None
            if mail_code != 250:
                failed = (mail_code, mail_reply)
            elif rcpt_code not in (250, 251):
                failed = (rcpt_code, rcpt_reply)
            elif data_code != 354:
                failed = (data_code, data_reply)
            if failed is not None:
                if data_code == 354:  # the server wants data although the envelope failed
                    conn.send(b".\r\n")
                    conn.getreply()
                self._check(conn, failed[0], failed[1], ())
            # Dot-stuffing as SMTP.data does it; most messages have no line starting with a dot,
            # and looking for one is much cheaper than the regular expression.
            if b"\n." in message or message.startswith(b"."):
                quoted = smtplib._quote_periods(message)  # type: ignore[attr-defined]
            else:
                quoted = message
            if not quoted.endswith(b"\r\n"):
                quoted += b"\r\n"
            conn.send(quoted + b".\r\n")
            code, reply = conn.getreply()
            self._check(conn, code, reply, (250,))
        except (smtplib.SMTPException, OSError) as exc:
            self._drop()
            raise MailError(f"connection failed: {exc}") from exc

    def _check(self, conn: smtplib.SMTP, code: int, reply: bytes, accepted: tuple[int, ...]) -> None:
        if code in accepted:
            return
        if code == -1:  # smtplib's "connection closed" reply
            self._drop()
            raise MailError(f"connection failed: {_reply_text(code, reply)}")
        self._reset_or_drop(code)
        raise MailError(_reply_text(code, reply), code)

    def _reset_or_drop(self, code: int) -> None:
        """After a refusal: RSET keeps the connection for the next message; 421 means it is gone."""
        if code == 421 or self._conn is None:
            self._drop()
            return
        try:
            self._conn.rset()
        except (smtplib.SMTPException, OSError):
            self._drop()

    def _drop(self) -> None:
        """Forget a connection that is broken (no QUIT)."""
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
            self._conn = None

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.quit()
            except (smtplib.SMTPException, OSError):
                pass
            try:
                self._conn.close()
            except OSError:
                pass
            self._conn = None


def _reply_text(code: int, reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return f"{code} {text}"[:500]


class OutboxTransport:
    """Writes each message as an .eml file into a folder, for development and review."""

    def __init__(self, directory: str):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def send(self, sender: str, recipient: str, message: bytes) -> None:
        stamp = utcnow().strftime("%Y%m%dT%H%M%S")
        name = f"{stamp}-{secrets.token_hex(4)}-{recipient.replace('/', '_')}.eml"
        tmp = self.directory / f".{name}.tmp"
        tmp.write_bytes(message)
        os.replace(tmp, self.directory / name)  # never a half-written .eml

    def close(self) -> None:
        pass


class MemoryTransport:
    """Keeps messages in a list shared per URL; for tests."""

    boxes: dict[str, list[tuple[str, str, bytes]]] = {}
    _lock = threading.Lock()

    def __init__(self, url: str):
        with self._lock:
            self.box = self.boxes.setdefault(url, [])

    def send(self, sender: str, recipient: str, message: bytes) -> None:
        with self._lock:
            self.box.append((sender, recipient, message))

    def close(self) -> None:
        pass


def transport_from_url(url: str | None = None) -> Transport:
    """A transport for MAIL_URL (smtp://, smtp+starttls://, smtps://, outbox://DIR, memory://)."""
    url = url or current_app.config["MAIL_URL"]
    scheme = urlsplit(url).scheme
    if scheme in ("smtp", "smtps", "smtp+starttls"):
        return SMTPTransport(url)
    if scheme == "outbox":
        return OutboxTransport(url[len("outbox://"):])
    if scheme == "memory":
        return MemoryTransport(url)
    raise ValueError(f"MAIL_URL scheme {scheme!r} is not one of smtp, smtp+starttls, smtps, outbox, memory")


def envelope_sender() -> str:
    return smtp_address(sender_address()[1])[0]
