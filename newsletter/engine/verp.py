"""VERP: an envelope sender of its own for each message, so a bounce names its recipient.

With BOUNCE_ADDRESS=bounces@example.se the digest to subscriber 1234 of send 56 leaves
with `MAIL FROM:<bounces+38.4d2.k4xq...@example.se>`: the send and the subscriber in hex
and a signature, no address in clear. A delivery status notification goes back to that
address, so even a DSN whose report part is mangled or missing names the send and the
subscriber; the signature keeps anyone from bouncing someone else off the list.

No Flask here: the send loop signs one sender per message (one HMAC, a microsecond or two).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from typing import NamedTuple

SIGNATURE_BYTES = 10  # 80 bits, 16 base32 characters
NO_SEND = 0  # the send number of mail that belongs to no send (a welcome)
_TOKEN = re.compile(r"^([0-9a-f]{1,12})\.([0-9a-f]{1,12})\.([a-z2-7]{16})$")


class VerpToken(NamedTuple):
    send_id: int  # the digest's id, or NO_SEND
    subscriber_id: int


class VerpSigner:
    """Makes and reads the envelope senders of one BOUNCE_ADDRESS."""

    def __init__(self, bounce_address: str, secret_key: str):
        local, at, domain = bounce_address.strip().rpartition("@")
        if not at or not local or not domain or "+" in local:
            raise ValueError(f"BOUNCE_ADDRESS must be a plain address such as bounces@example.se, "
                             f"not {bounce_address!r}")
        self.bounce_address = bounce_address.strip()
        self.secret_key = secret_key
        self.local = local
        self.domain = domain.lower()
        self._key = hashlib.sha256(b"newsletter.verp\0" + secret_key.encode()).digest()

    def __reduce__(self):  # a send worker gets the settings and derives the key itself
        return VerpSigner, (self.bounce_address, self.secret_key)

    def _signature(self, body: str) -> str:
        digest = hmac.digest(self._key, body.encode("ascii"), "sha256")[:SIGNATURE_BYTES]
        return base64.b32encode(digest).decode("ascii").lower()

    def sender(self, send_id: int, subscriber_id: int) -> str:
        """The envelope sender of one message: local+<send>.<subscriber>.<signature>@domain."""
        body = f"{send_id:x}.{subscriber_id:x}"
        return f"{self.local}+{body}.{self._signature(body)}@{self.domain}"

    def for_send(self, send_id: int):
        """A function subscriber id -> envelope sender for one send (its prefix made once)."""
        prefix = f"{send_id:x}."
        head, tail = f"{self.local}+", f"@{self.domain}"
        key, size = self._key, SIGNATURE_BYTES
        b32, digest = base64.b32encode, hmac.digest

        def sender(subscriber_id: int) -> str:
            body = f"{prefix}{subscriber_id:x}"
            signature = b32(digest(key, body.encode("ascii"), "sha256")[:size]).decode("ascii").lower()
            return f"{head}{body}.{signature}{tail}"

        return sender

    def read(self, address: str) -> VerpToken | None:
        """The token of an address this signer made (any case), or None."""
        local, _, domain = (address or "").strip().strip("<>").rpartition("@")
        base, plus, token = local.partition("+")
        if not plus or base.lower() != self.local.lower() or domain.lower() != self.domain:
            return None
        match = _TOKEN.match(token.lower())
        if match is None:
            return None
        body = f"{match[1]}.{match[2]}"
        if not hmac.compare_digest(self._signature(body), match[3]):
            return None
        return VerpToken(int(match[1], 16), int(match[2], 16))
