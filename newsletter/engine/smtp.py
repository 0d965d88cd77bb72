"""SMTP: the transport a bulk send streams its messages over, and the send's errors.

No Flask here: the send worker (a process of its own) imports this module and
`prepared`, `links`, `ledger` and `sending` only.
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Iterable, Iterator
from typing import NamedTuple, Protocol
from urllib.parse import unquote, urlsplit

from newsletter.engine.prepared import PreparedMessage, dot_stuffed

_CRLF = b"\r\n"


class MailError(Exception):
    """A message could not be sent. `code` is the SMTP reply code, if there was one."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.code = code

    @property
    def permanent(self) -> bool:
        """5xx: the address is refused for good (bounce). Anything else may be retried."""
        return self.code is not None and 500 <= self.code < 600


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


# --- transports ---------------------------------------------------------------


class Outgoing(NamedTuple):
    """One message of a stream: `key` is the caller's, handed back with the outcome."""

    key: object
    recipient: str
    data: bytes  # what the transport's `encode` made of the prepared message
    sender: str | None = None  # its own envelope sender (VERP), else the stream's


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
                self.send(message.sender or sender, message.recipient, message.data)  # type: ignore[attr-defined]
            except MailError as exc:
                yield message, exc
            else:
                yield message, None


class _ConnectionLost(Exception):
    """The connection broke; whatever was in flight on it is unknown."""


_ACCEPTED = ((250,), (250, 251), (354,))  # MAIL, RCPT, DATA
_MAX_REPLY_LINE = 8192  # smtplib's _MAXLINE


class SMTPServer(NamedTuple):
    """Where MAIL_URL points: smtp://, smtp+starttls:// or smtps://, with an optional login."""

    scheme: str
    host: str
    port: int
    username: str | None
    password: str | None

    @classmethod
    def from_url(cls, url: str) -> SMTPServer:
        parts = urlsplit(url)
        return cls(parts.scheme, parts.hostname or "localhost",
                   parts.port or {"smtps": 465, "smtp+starttls": 587}.get(parts.scheme, 25),
                   unquote(parts.username) if parts.username else None,
                   unquote(parts.password) if parts.password else None)

    def connect(self, timeout: float) -> smtplib.SMTP:
        """An smtplib connection after EHLO, STARTTLS and AUTH as the URL asks."""
        # Only TLS needs the context (loading the CA store costs a good part of a connect).
        context = ssl.create_default_context() if self.scheme in ("smtps", "smtp+starttls") else None
        if self.scheme == "smtps":
            conn: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=timeout, context=context)
        else:
            conn = smtplib.SMTP(self.host, self.port, timeout=timeout)
        conn.ehlo()
        if self.scheme == "smtp+starttls":
            conn.starttls(context=context)
            conn.ehlo()
        if self.username:
            conn.login(self.username, self.password or "")
        return conn


class SMTPTransport:
    """One SMTP connection, opened on first use and reused until closed or dropped.

    smtplib opens it (EHLO, STARTTLS, AUTH) and closes it; the messages go over its
    socket with a few lines of our own, because a bulk send cannot afford smtplib's
    costs per message (regex dot-stuffing of the whole message, address parsing, a
    read per reply) and wants RFC 2920 pipelining from one message to the next.
    """

    def __init__(self, url: str, timeout: float = 30):
        self.server = SMTPServer.from_url(url)
        self.timeout = timeout
        self._conn: smtplib.SMTP | None = None
        self.pipelining = False  # the server's EHLO offered PIPELINING (RFC 2920)
        self.smtputf8 = False

    def _connect(self) -> smtplib.SMTP:
        conn = self.server.connect(self.timeout)
        self.pipelining = conn.has_extn("pipelining")
        self.smtputf8 = conn.has_extn("smtputf8")
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
        for _, error in self.send_many(sender, [Outgoing(None, recipient, dot_stuffed(message))]):
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
        return f"MAIL FROM:<{message.sender or sender}>{extra}\r\nRCPT TO:<{address}>\r\nDATA\r\n".encode()

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
