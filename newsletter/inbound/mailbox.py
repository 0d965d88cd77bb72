"""The bounce mailbox over IMAP or POP3 (the standard library's imaplib and poplib).

BOUNCE_MAILBOX_URL: imaps://user:pass@host[:port]/FOLDER, imap://… (plain, or STARTTLS when the
server offers it), pop3s://user:pass@host[:port], pop3://…; user and password URL-encoded,
the folder defaults to INBOX. A message is read without marking it seen, and deleted only
once it has been handled, so a poll that dies half-way loses nothing.
"""

from __future__ import annotations

import imaplib
import poplib
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

MAX_MESSAGE_BYTES = 10 * 1024 * 1024  # larger messages are left alone (no bounce is this big)


class MailboxError(Exception):
    """The mailbox cannot be reached or refused us."""


@dataclass
class MailboxMessage:
    key: str  # the IMAP UID or the POP3 message number, for `delete`
    raw: bytes


@dataclass
class MailboxAddress:
    scheme: str
    host: str
    port: int
    user: str
    password: str
    folder: str

    @classmethod
    def from_url(cls, url: str) -> MailboxAddress:
        parts = urlsplit(url)
        defaults = {"imaps": 993, "imap": 143, "pop3s": 995, "pop3": 110}
        if parts.scheme not in defaults:
            raise ValueError(f"BOUNCE_MAILBOX_URL must start with imaps://, imap://, pop3s:// or pop3://, "
                             f"not {parts.scheme!r}")
        if not parts.hostname or parts.username is None:
            raise ValueError("BOUNCE_MAILBOX_URL needs a user and a host: imaps://user:pass@host/INBOX")
        return cls(scheme=parts.scheme, host=parts.hostname, port=parts.port or defaults[parts.scheme],
                   user=unquote(parts.username), password=unquote(parts.password or ""),
                   folder=unquote(parts.path.lstrip("/")) or "INBOX")


class ImapMailbox:
    def __init__(self, address: MailboxAddress, timeout: float = 30, context: ssl.SSLContext | None = None):
        context = context or ssl.create_default_context()
        self.conn = None
        try:
            if address.scheme == "imaps":
                self.conn = imaplib.IMAP4_SSL(address.host, address.port, ssl_context=context,
                                              timeout=timeout)
            else:
                self.conn = imaplib.IMAP4(address.host, address.port, timeout=timeout)
                if "STARTTLS" in self.conn.capabilities:
                    self.conn.starttls(ssl_context=context)
            self.conn.login(address.user, address.password)
            status, data = self.conn.select(_quoted(address.folder))
            if status != "OK":
                raise MailboxError(f"cannot open folder {address.folder!r}: {_text(data)}")
        except (imaplib.IMAP4.error, OSError) as exc:
            if self.conn is not None:
                self.conn.shutdown()
            raise MailboxError(f"IMAP {address.host}:{address.port}: {exc}") from exc
        self.deleted = False

    def messages(self) -> Iterator[MailboxMessage]:
        status, data = self.conn.uid("SEARCH", None, "UNDELETED")
        if status != "OK":
            raise MailboxError(f"IMAP SEARCH failed: {_text(data)}")
        for uid in (data[0] or b"").split():
            status, data = self.conn.uid("FETCH", uid, "(RFC822.SIZE)")
            size = _size(data)
            if status != "OK" or size is None or size > MAX_MESSAGE_BYTES:
                continue
            status, data = self.conn.uid("FETCH", uid, "(BODY.PEEK[])")
            raw = next((item[1] for item in data if isinstance(item, tuple)), None)
            if status == "OK" and raw is not None:
                yield MailboxMessage(key=uid.decode(), raw=raw)

    def delete(self, key: str) -> None:
        status, data = self.conn.uid("STORE", key, "+FLAGS.SILENT", r"(\Deleted)")
        if status != "OK":
            raise MailboxError(f"IMAP STORE failed: {_text(data)}")
        self.deleted = True

    def close(self) -> None:
        try:
            if self.deleted:
                self.conn.expunge()
            self.conn.close()
            self.conn.logout()
        except (imaplib.IMAP4.error, OSError):
            pass


class Pop3Mailbox:
    def __init__(self, address: MailboxAddress, timeout: float = 30, context: ssl.SSLContext | None = None):
        context = context or ssl.create_default_context()
        self.conn = None
        try:
            if address.scheme == "pop3s":
                self.conn = poplib.POP3_SSL(address.host, address.port, timeout=timeout, context=context)
            else:
                self.conn = poplib.POP3(address.host, address.port, timeout=timeout)
                if "STLS" in self.conn.capa():
                    self.conn.stls(context=context)
            self.conn.user(address.user)
            self.conn.pass_(address.password)
        except (poplib.error_proto, OSError) as exc:
            if self.conn is not None:
                self.conn.close()
            raise MailboxError(f"POP3 {address.host}:{address.port}: {exc}") from exc

    def messages(self) -> Iterator[MailboxMessage]:
        _, listing, _ = self.conn.list()
        for line in listing:
            number, size = line.split()[:2]
            if int(size) > MAX_MESSAGE_BYTES:
                continue
            _, lines, _ = self.conn.retr(int(number))
            yield MailboxMessage(key=number.decode(), raw=b"\r\n".join(lines) + b"\r\n")

    def delete(self, key: str) -> None:
        self.conn.dele(int(key))

    def close(self) -> None:
        try:
            self.conn.quit()  # the deletions take effect here
        except (poplib.error_proto, OSError):
            pass


def open_mailbox(url: str, *, timeout: float = 30, context: ssl.SSLContext | None = None):
    """An ImapMailbox or Pop3Mailbox for the URL; MailboxError when it cannot be opened."""
    address = MailboxAddress.from_url(url)
    if address.scheme.startswith("imap"):
        return ImapMailbox(address, timeout, context)
    return Pop3Mailbox(address, timeout, context)


def _quoted(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _size(data) -> int | None:
    for item in data or ():
        text = item.decode() if isinstance(item, bytes) else str(item)
        if "RFC822.SIZE" in text:
            try:
                return int(text.split("RFC822.SIZE", 1)[1].split(")")[0].split()[0])
            except (IndexError, ValueError):
                return None
    return None


def _text(data) -> str:
    return " ".join(item.decode(errors="replace") if isinstance(item, bytes) else str(item)
                    for item in data or ())[:200]
