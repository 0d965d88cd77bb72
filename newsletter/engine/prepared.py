"""Prepared messages: a whole email as bytes with slots for the per-recipient parts.

A message is prepared once (headers, both MIME parts, CSS inlined, quoted-printable)
with slots for To, Message-ID, Date and the personal links; `render(values)` then only
joins bytes, `wire(values)` the same already dot-stuffed for SMTP DATA. No Flask here:
the send worker fills the slots of messages its parent prepared (`mail.prepare_message`).
"""

from __future__ import annotations

import binascii
import itertools
import os
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import TYPE_CHECKING

from markupsafe import escape

if TYPE_CHECKING:  # the signer (and dkimpy, cryptography) is loaded only when DKIM is configured
    from newsletter.engine.dkim import DkimSigner

# Per-recipient values. A template gets `slot("unsubscribe_url")` where the link goes.
# `confirm_url` lets one rendering of the confirmation email serve every pending subscriber.
SLOT_NAMES = ("to", "message_id", "date", "unsubscribe_url", "unsubscribe_token", "preferences_url",
              "confirm_url", "topics", "first_digest")  # the last two: what a welcome tells its reader
_SLOT_MARK = "@@nl-slot:{}@@"
_CRLF = b"\r\n"


def slot(name: str) -> str:
    """The marker a template outputs where a per-recipient value goes."""
    if name not in SLOT_NAMES:
        raise ValueError(f"unknown slot {name!r}")
    return _SLOT_MARK.format(name)


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
        assert encoding != "header" or not self.chunks[-1].endswith(b"\n"), "header slot at a line start"  # nosec B101 # an invariant of the template, not input
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
            return dot_stuffed(self.render(values))
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
    if name == "unsubscribe_token":  # a message with no personal links (a test send)
        return ""
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


def dot_stuffed(msg: bytes) -> bytes:
    """The message as DATA sends it: a line that starts with "." gets one more (RFC 5321
    4.5.2, what smtplib's regex does), then the end mark."""
    stuffed = msg.replace(b"\n.", b"\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed + (b".\r\n" if stuffed.endswith(_CRLF) else b"\r\n.\r\n")
