"""Where the app's mail goes, by MAIL_URL: an SMTP server, a folder of .eml files, or memory.

A bulk send uses the engine's pipelined `SMTPTransport`; a single email (a confirmation,
a welcome, a send summary, a test digest) needs no more than smtplib's `sendmail`.
"""

from __future__ import annotations

import os
import secrets
import smtplib
import threading
from pathlib import Path
from urllib.parse import urlsplit

from flask import current_app

from newsletter.engine.clock import utcnow
from newsletter.engine.smtp import MailError, SMTPServer, SMTPTransport, Transport, _OneByOne, smtp_address

SMTP_SCHEMES = ("smtp", "smtps", "smtp+starttls")


class SingleSMTPTransport(_OneByOne):
    """smtplib over one connection, opened on first use; for single emails."""

    def __init__(self, url: str, timeout: float = 30):
        self.server = SMTPServer.from_url(url)
        self.timeout = timeout
        self._conn: smtplib.SMTP | None = None

    def send(self, sender: str, recipient: str, message: bytes) -> None:
        """Send one message; MailError with the reply code (None when the connection failed)."""
        address, needs_utf8 = smtp_address(recipient)
        try:
            if self._conn is None:
                self._conn = self.server.connect(self.timeout)
            options = ["SMTPUTF8"] if needs_utf8 and self._conn.has_extn("smtputf8") else []
            self._conn.sendmail(sender, [address], message, mail_options=options)
        except smtplib.SMTPRecipientsRefused as exc:
            code, reply = exc.recipients[address]
            raise MailError(f"{code} {_text(reply)}", code) from exc
        except smtplib.SMTPResponseException as exc:
            if exc.smtp_code == 421:
                self._drop()
            raise MailError(f"{exc.smtp_code} {_text(exc.smtp_error)}", exc.smtp_code) from exc
        except (smtplib.SMTPException, OSError) as exc:
            self._drop()
            raise MailError(f"connection failed: {exc}") from exc

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.quit()
            except (smtplib.SMTPException, OSError):
                conn.close()


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


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


def transport_from_url(url: str | None = None, *, bulk: bool = False) -> Transport:
    """A transport for MAIL_URL (smtp://, smtp+starttls://, smtps://, outbox://DIR, memory://);
    `bulk` for a send to many (the pipelined transport)."""
    url = url or current_app.config["MAIL_URL"]
    scheme = urlsplit(url).scheme
    if scheme in SMTP_SCHEMES:
        return SMTPTransport(url) if bulk else SingleSMTPTransport(url)
    if scheme == "outbox":
        return OutboxTransport(url[len("outbox://"):])
    if scheme == "memory":
        return MemoryTransport(url)
    raise ValueError(f"MAIL_URL scheme {scheme!r} is not one of smtp, smtp+starttls, smtps, outbox, memory")
