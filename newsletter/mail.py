"""Building email messages and the transports that carry them.

Every email is a template triplet under templates/emails/ (`NAME_subject.txt`,
`NAME.txt`, `NAME.html`) rendered in the recipient's language. A message is
*prepared* once (headers, both MIME parts, CSS inlined, quoted-printable) with
slots for the per-recipient parts (To, Message-ID, Date, the personal links);
`PreparedMessage.render(values)` then only joins bytes, which is what makes a
bulk send cheap: tens of microseconds a message instead of milliseconds
(`wire(values)` is the same, already dot-stuffed for SMTP DATA). A bulk send
hands the messages to `SMTPTransport.send_many`, which pipelines them over one
connection: one round trip a message.

With DKIM_SELECTOR and DKIM_PRIVATE_KEY set, `render` also DKIM-signs each message
(dkimpy, after substitution): every message, bulk or single, passes through it.
dkimpy's RSA is pure Python, about 10 ms a message on one core with a 2048-bit key;
for large lists at high rates, let the relay sign instead (see the README).
"""

from __future__ import annotations

import binascii
import hashlib
import itertools
import logging
import os
import secrets
import smtplib
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.header import Header
from email.utils import format_datetime, formataddr, parseaddr
from pathlib import Path
from typing import NamedTuple, Protocol
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
    if email.isascii() and "@" in email:  # the IDNA codec leaves an ASCII domain as it is
        return email, False
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


def unsubscribe_mailto() -> str:
    """The mailto URI of List-Unsubscribe from UNSUBSCRIBE_MAILTO (an address or a mailto: URI), or ""."""
    value = (current_app.config.get("UNSUBSCRIBE_MAILTO") or "").strip()
    if not value:
        return ""
    if value.lower().startswith("mailto:"):
        value = value[len("mailto:"):]
    if any(c in value for c in "<>\r\n ,\"") or "@" not in value:
        raise ValueError(f"UNSUBSCRIBE_MAILTO is not an address: {value!r}")
    return f"mailto:{value}" if "?" in value else f"mailto:{value}?subject=unsubscribe"


# --- DKIM ------------------------------------------------------------------------

# What h= covers, when present in the message: the headers Gmail and Yahoo look at, both list
# headers, and the MIME headers. Those in DKIM_OVERSIGN are listed once more than they occur,
# so that nobody can add a second From or List-Unsubscribe without breaking the signature.
DKIM_HEADERS = (
    "From", "To", "Cc", "Reply-To", "Subject", "Date", "Message-ID", "List-Id", "List-Unsubscribe",
    "List-Unsubscribe-Post", "List-Post", "List-Archive", "List-Help", "Precedence", "Auto-Submitted",
    "MIME-Version", "Content-Type", "Content-Transfer-Encoding",
)
DKIM_OVERSIGN = ("From", "Subject", "List-Id", "List-Unsubscribe", "List-Unsubscribe-Post")


@dataclass(frozen=True)
class DkimSigner:
    """Signs finished message bytes (rsa-sha256, relaxed/relaxed) for one domain and selector.

    Plain data (no app context needed), so a prepared message can be rendered and signed
    in any thread or worker process.
    """

    selector: str
    domain: str  # the d= domain (IDN as punycode)
    private_key: bytes  # PEM, PKCS#1 or PKCS#8

    def sign(self, message: bytes) -> bytes:
        import dkim  # only when DKIM is configured (dkimpy pulls in dnspython)

        headers_end = message.find(b"\r\n\r\n")
        present = {line.split(b":", 1)[0].strip().lower()
                   for line in message[:max(headers_end, 0)].split(b"\r\n")
                   if line and line[:1] not in b" \t"}
        include = [name.lower().encode() for name in DKIM_HEADERS if name.lower().encode() in present]
        include += [name.lower().encode() for name in DKIM_OVERSIGN if name.lower().encode() in present]
        signature = dkim.DKIM(message, linesep=b"\r\n").sign(
            self.selector.encode("ascii"), self.domain.encode("ascii"), self.private_key,
            canonicalize=(b"relaxed", b"relaxed"), include_headers=include,
        )
        return signature + message


def _load_dkim_key(value: str) -> bytes:
    """DKIM_PRIVATE_KEY as PEM bytes: PEM text (literal \\n allowed, as in a .env file) or a path."""
    if "-----BEGIN" in value:
        pem = value.replace("\\n", "\n")
    else:
        try:
            pem = Path(value).expanduser().read_text()
        except OSError as exc:
            raise ValueError(f"DKIM_PRIVATE_KEY: cannot read {value!r}: {exc}") from exc
    data = pem.strip().encode("ascii") + b"\n"
    import dkim.crypto

    try:
        dkim.crypto.parse_pem_private_key(data)
    except dkim.crypto.UnparsableKeyError as exc:
        raise ValueError(f"DKIM_PRIVATE_KEY is not an RSA private key in PEM form: {exc}") from exc
    return data


def dkim_signer() -> DkimSigner | None:
    """The signer for the current app's settings, or None when DKIM is not configured.

    Built once per app and configuration; a bad key is a ValueError (the message is not sent).
    """
    config = current_app.config
    selector = (config.get("DKIM_SELECTOR") or "").strip()
    key = (config.get("DKIM_PRIVATE_KEY") or "").strip()
    if not selector or not key:
        return None
    domain = (config.get("DKIM_DOMAIN") or "").strip() or sender_domain()
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ValueError(f"DKIM domain {domain!r} cannot be encoded") from exc
    cache_key = hashlib.sha256(f"{selector}\0{domain}\0{key}".encode()).hexdigest()
    cache = current_app.extensions.setdefault("newsletter_dkim", {})
    if cache_key not in cache:
        cache.clear()
        cache[cache_key] = DkimSigner(selector=selector, domain=domain, private_key=_load_dkim_key(key))
    return cache[cache_key]


def check_dkim_settings(app) -> None:
    """Fail at start-up, not at the first send, when the DKIM settings are unusable."""
    with app.app_context():
        dkim_signer()


def sign(message: bytes) -> bytes:
    """The message with a DKIM-Signature added, if DKIM is configured; else unchanged.

    `PreparedMessage.render` does this already; use it only for bytes built some other way.
    """
    signer = dkim_signer()
    return signer.sign(message) if signer is not None else message


# --- prepared messages --------------------------------------------------------


@dataclass
class PreparedMessage:
    """A whole message as bytes with slots; `render` fills them for one recipient."""

    chunks: list[bytes] = field(default_factory=list)
    # For each gap between chunks: (slot name, how to encode its value).
    slots: list[tuple[str, str]] = field(default_factory=list)
    subject: str = ""
    domain: str = "localhost"  # of MAIL_FROM, for Message-IDs made at render time
    # DKIM signs every rendered message when configured (DKIM_SELECTOR + DKIM_PRIVATE_KEY).
    signer: DkimSigner | None = None
    _wire_chunks: list[bytes] | None = field(default=None, repr=False, compare=False)  # made by `wire`

    def _add(self, data: bytes) -> None:
        if len(self.chunks) > len(self.slots):
            self.chunks[-1] += data
        else:
            self.chunks.append(data)

    def _add_slot(self, name: str, encoding: str) -> None:
        if len(self.chunks) == len(self.slots):
            self.chunks.append(b"")
        # A header value never starts a line (it follows "Name: "), so the chunk after it
        # does not either; `wire` relies on that.
        assert encoding != "header" or not self.chunks[-1].endswith(b"\n"), "header slot at a line start"
        self.slots.append((name, encoding))

    def render(self, values: dict[str, str]) -> bytes:
        """The message for one recipient. Missing to/message_id/date are made up here.

        Joins the prepared chunks with the encoded values (a few µs for a 30 KB
        message); a value that fills two slots with the same encoding (a link in the
        text and the HTML part) is encoded once.
        """
        message = self._join(self.chunks, values, stuff=False)
        return self.signer.sign(message) if self.signer is not None else message

    def wire(self, values: dict[str, str]) -> bytes:
        """The message as SMTP DATA carries it: dot-stuffed and ended by the "." line.

        The hot path of a bulk send. The chunks are stuffed once, here only the short
        values are, instead of scanning the whole message for each recipient.
        """
        if self.signer is not None:  # the signature covers the message before stuffing
            return _stuffed(self.render(values))
        chunks = self._wire_chunks
        if chunks is None:
            chunks = self._wire_chunks = self._stuff_chunks()
        return self._join(chunks, values, stuff=True)

    def _stuff_chunks(self) -> list[bytes]:
        """Each chunk dot-stuffed, knowing which ones start a line: the first, and each one
        after a body value (which ends with a soft line break); then the end mark."""
        stuffed = []
        for index, chunk in enumerate(self.chunks):
            starts_line = index == 0 or self.slots[index - 1][1] != "header"
            data = chunk.replace(b"\n.", b"\n..")
            stuffed.append(b"." + data if starts_line and data.startswith(b".") else data)
        stuffed[-1] += b".\r\n" if self.chunks[-1].endswith(_CRLF) else b"\r\n.\r\n"
        return stuffed

    def _join(self, chunks: list[bytes], values: dict[str, str], *, stuff: bool) -> bytes:
        parts = [chunks[0]]
        append = parts.append
        encoded: dict[str, bytes] = {}  # quoted-printable of each body value, by its text
        for index, (name, encoding) in enumerate(self.slots, 1):
            value = values.get(name)
            if value is None:
                value = _default_slot_value(name, self.domain)
            if encoding == "header":
                if "\r" in value or "\n" in value:
                    raise ValueError(f"line break in the value of {name}")
                append(value.encode("utf-8"))
            else:
                if encoding == "html":
                    value = str(escape(value))
                data = encoded.get(value)
                if data is None:
                    # Soft line breaks around the value keep every line within 76 characters.
                    data = b"=\r\n" + _qp(value) + b"=\r\n"
                    if stuff:  # a wrapped line of a long link may start with "."
                        data = data.replace(b"\n.", b"\n..")
                    encoded[value] = data
                append(data)
            append(chunks[index])
        return b"".join(parts)


_date_cache: tuple[int, str] = (0, "")


def _message_date() -> str:
    """The Date header value for now, formatted once a second (formatting costs ~8 µs)."""
    global _date_cache
    second = int(time.time())
    cached = _date_cache
    if cached[0] != second:
        cached = _date_cache = (second, format_datetime(datetime.fromtimestamp(second, UTC)))
    return cached[1]


def _default_slot_value(name: str, domain: str) -> str:
    if name == "message_id":
        return new_message_id(domain)
    if name == "date":
        return _message_date()
    raise KeyError(f"no value for slot {name!r}")


_id_counter = itertools.count()
_id_salt = secrets.token_hex(6)


def _new_id_salt() -> None:
    global _id_salt
    _id_salt = secrets.token_hex(6)


os.register_at_fork(after_in_child=_new_id_salt)  # a forked sender has its own


def new_message_id(domain: str) -> str:
    """Unique without a random read per message: time, a per-process random salt, a counter."""
    return f"<{time.time_ns():x}.{next(_id_counter):x}.{_id_salt}@{domain}>"


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
    msg = PreparedMessage(subject=subject, domain=sender_domain(), signer=dkim_signer())
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
        msg._add(b">" + (f", <{mailto}>".encode() if (mailto := unsubscribe_mailto()) else b""))
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


class Outgoing(NamedTuple):
    """One message of a stream: `key` is the caller's, handed back with the outcome."""

    key: object
    recipient: str
    data: bytes  # what the transport's `encode` made of the prepared message


Outcomes = Iterator[tuple[Outgoing, "MailError | None"]]  # each message, with None once accepted


class Transport(Protocol):
    def send(self, sender: str, recipient: str, message: bytes) -> None: ...

    def encode(self, prepared: PreparedMessage, values: dict[str, str]) -> bytes: ...

    def send_many(self, sender: str, messages: Iterable[Outgoing], *, lookahead: bool = True) -> Outcomes:
        ...

    def close(self) -> None: ...


class _OneByOne:
    """`encode` and `send_many` for transports with no faster way than `send`."""

    def encode(self, prepared: PreparedMessage, values: dict[str, str]) -> bytes:
        return prepared.render(values)

    def send_many(self, sender: str, messages: Iterable[Outgoing], *, lookahead: bool = True) -> Outcomes:
        for message in messages:
            try:
                self.send(sender, message.recipient, message.data)  # type: ignore[attr-defined]
            except MailError as exc:
                yield message, exc
            else:
                yield message, None


def _stuffed(msg: bytes) -> bytes:
    """The message as DATA sends it: a line that starts with "." gets one more (RFC 5321
    4.5.2, what smtplib's regex does), then the end mark."""
    stuffed = msg.replace(b"\n.", b"\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed + (b".\r\n" if stuffed.endswith(_CRLF) else b"\r\n.\r\n")


class _ConnectionLost(Exception):
    """The connection broke; whatever was in flight on it is unknown."""


_ACCEPTED = ((250,), (250, 251), (354,))  # MAIL, RCPT, DATA
_MAX_REPLY_LINE = 8192  # smtplib's _MAXLINE


class SMTPTransport:
    """One SMTP connection, opened on first use and reused until closed or dropped.

    smtplib opens it (EHLO, STARTTLS, AUTH) and closes it; the messages go over its
    socket with a few lines of our own, because a bulk send cannot afford smtplib's
    costs per message (regex dot-stuffing of the whole message, address parsing, a
    read per reply) and wants RFC 2920 pipelining from one message to the next.
    """

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
        self.smtputf8 = False

    def _connect(self) -> smtplib.SMTP:
        # Only TLS needs the context (loading the CA store costs a good part of a connect).
        context = ssl.create_default_context() if self.scheme in ("smtps", "smtp+starttls") else None
        if self.scheme == "smtps":
            conn: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
        else:
            conn = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        conn.ehlo()
        if self.scheme == "smtp+starttls":
            conn.starttls(context=context)
            conn.ehlo()
        self.pipelining = conn.has_extn("pipelining")
        self.smtputf8 = conn.has_extn("smtputf8")
        if self.username:
            conn.login(self.username, self.password or "")
        if conn.file is None:
            conn.file = conn.sock.makefile("rb")
        return conn

    def encode(self, prepared: PreparedMessage, values: dict[str, str]) -> bytes:
        return prepared.wire(values)

    def send(self, sender: str, recipient: str, message: bytes) -> None:
        """Send one message to one recipient, checking the reply to every step.

        Raises MailError with the reply code (None when the connection failed). A 421
        or a dropped connection closes the connection, so the next send opens a new one.
        """
        for _, error in self.send_many(sender, [Outgoing(None, recipient, _stuffed(message))]):
            if error is not None:
                raise error

    def send_many(self, sender: str, messages: Iterable[Outgoing], *, lookahead: bool = True) -> Outcomes:
        """Send each message (`data` from `encode`); yield it with None or its MailError.

        Every reply is checked: MAIL, RCPT (smtplib only reports a refused recipient),
        DATA and the end of the data. A refusal keeps the connection (RSET); a 421 or
        a broken connection drops it, and the next message opens a new one. A reused
        connection the server closed while idle is reopened once, at once: nothing of
        the message had gone out on it.

        With PIPELINING, a message's content goes out in one write with the next
        message's MAIL, RCPT and DATA, and their replies come back together: one round
        trip a message. The next message is taken from `messages` before the content
        is written, so a caller that stops handing out messages (a pause, a stop) ends
        the stream after the ones it handed out; none is left half sent. A caller that
        may wait before handing out the next one (a rate limit) passes lookahead=False, so
        the server is not kept waiting in DATA meanwhile.
        """
        stream = iter(messages)
        current = next(stream, None)
        announced = False  # current's MAIL, RCPT, DATA went out with the last content
        while current is not None:
            if not smtp_address(current.recipient)[0].isascii() and self._conn is not None \
                    and not self.smtputf8:
                yield current, MailError("server does not accept internationalised addresses (SMTPUTF8)", 553)
                current, announced = next(stream, None), False
                continue
            try:
                refusal = self._open_envelope(sender, current, announced)
            except _ConnectionLost as exc:
                yield current, MailError(f"connection failed: {exc}")
                current, announced = next(stream, None), False
                continue
            if refusal is not None:
                yield current, refusal
                current, announced = next(stream, None), False
                continue
            following = next(stream, None) if lookahead else None
            tail = b""
            if following is not None and self.pipelining and (
                    self.smtputf8 or smtp_address(following.recipient)[0].isascii()):
                tail = self._envelope(sender, following)  # else the check above answers it (553)
            try:
                self._write(current.data + tail)
                code, reply = self._reply()
            except _ConnectionLost as exc:  # it may or may not have arrived: retried later
                yield current, MailError(f"connection failed: {exc}")
                current = following if following is not None else next(stream, None)
                announced = False
                continue
            # Whatever the reply, the transaction is over (no RSET: the next MAIL is on its way).
            if code == 421:
                self._drop()
            yield current, None if code == 250 else MailError(_reply_text(code, reply), code)
            current = following if following is not None else next(stream, None)
            announced = bool(tail) and self._conn is not None

    def _envelope(self, sender: str, message: Outgoing) -> bytes:
        address, needs_utf8 = smtp_address(message.recipient)
        extra = " SMTPUTF8" if needs_utf8 else ""
        return f"MAIL FROM:<{sender}>{extra}\r\nRCPT TO:<{address}>\r\nDATA\r\n".encode()

    def _open_envelope(self, sender: str, message: Outgoing, announced: bool) -> MailError | None:
        """MAIL, RCPT and DATA (unless announced already) and their replies: None when the
        server waits for the content, else the refusal. Raises _ConnectionLost."""
        for retry_idle in (True, False):
            reused = self._conn is not None
            try:
                if self._conn is None:
                    self._conn = self._connect()
                    announced = False
                    if not self.smtputf8 and not smtp_address(message.recipient)[0].isascii():
                        return MailError("server does not accept internationalised addresses (SMTPUTF8)", 553)
                if self.pipelining:
                    if not announced:
                        self._write(self._envelope(sender, message))
                    replies = []
                    for _ in _ACCEPTED:
                        replies.append(self._reply())
                        if replies[-1][0] == 421:  # closing: no more replies will come
                            break
                else:
                    replies = []
                    for command in self._envelope(sender, message).split(_CRLF)[:3]:
                        self._write(command + _CRLF)
                        replies.append(self._reply())
                        if replies[-1][0] not in _ACCEPTED[len(replies) - 1]:
                            break
                if replies[0][0] == 421 and reused and retry_idle and not announced:
                    self._drop()  # "421 timeout" from a connection idle too long: nothing went out
                    continue
                break
            except _ConnectionLost:
                if reused and retry_idle and not announced:  # closed while idle: nothing sent yet
                    continue
                raise
            except (smtplib.SMTPException, OSError) as exc:  # connecting, EHLO, TLS, AUTH
                self._drop()
                raise _ConnectionLost(str(exc) or type(exc).__name__) from exc
        refused = next(((code, reply) for (code, reply), accepted in zip(replies, _ACCEPTED, strict=False)
                        if code not in accepted), None)
        if refused is None:
            return None
        if replies[-1][0] == 354:  # the server wants content although the envelope failed
            self._write(b".\r\n")
            self._reply()
        code, reply = refused
        if code == 421:  # the server is closing the connection
            self._drop()
        elif self._conn is not None:
            try:
                self._write(b"RSET\r\n")  # MAIL may have been accepted: start afresh
                self._reply()
            except _ConnectionLost:
                pass  # dropped; the next message opens a new connection
        return MailError(_reply_text(code, reply), code)

    def _write(self, data: bytes) -> None:
        if self._conn is None:
            raise _ConnectionLost("connection closed")
        try:
            self._conn.sock.sendall(data)
        except OSError as exc:
            self._drop()
            raise _ConnectionLost(str(exc) or type(exc).__name__) from exc

    def _reply(self) -> tuple[int, bytes]:
        """One reply, of one line or several (smtplib's getreply, without its extra work)."""
        if self._conn is None:
            raise _ConnectionLost("connection closed")
        lines = []
        try:
            while True:
                line = self._conn.file.readline(_MAX_REPLY_LINE + 1)
                if not line:
                    raise OSError("connection closed by the server")
                if len(line) > _MAX_REPLY_LINE:  # the rest would be read as another reply
                    raise OSError("reply line too long")
                lines.append(line[4:].strip())
                if line[3:4] != b"-":
                    break
            code = int(line[:3])
        except (OSError, ValueError) as exc:
            self._drop()
            raise _ConnectionLost(str(exc) or type(exc).__name__) from exc
        return code, b"\n".join(lines)

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


class OutboxTransport(_OneByOne):
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


class MemoryTransport(_OneByOne):
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
