"""The signed personal links of an email (unsubscribe, preferences), fast enough for a bulk send.

No Flask here: a send worker signs the links of its messages from plain settings.
`tokens` makes and reads the same tokens in the app.
"""

from __future__ import annotations

import hmac
import time

from itsdangerous import URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode, int_to_bytes
from itsdangerous.signer import HMACAlgorithm
from itsdangerous.timed import TimestampSigner

from newsletter.engine.smtp import smtp_address

PURPOSES = ("confirm", "unsubscribe", "preferences", "signup-form")


def serializer(secret_key: str, purpose: str) -> URLSafeTimedSerializer:
    """The itsdangerous serializer of one purpose: its own salt, so a token of one purpose
    is worthless for another."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown token purpose {purpose!r}")
    return URLSafeTimedSerializer(secret_key, salt=f"newsletter.{purpose}")


class LinkSigner:
    """Makes the very tokens `serializer(key, purpose).dumps(uid)` makes, several times cheaper.

    itsdangerous sets up a serializer and a signer, derives the key, tries zlib and
    dumps JSON on every call: tens of microseconds, twice per message. Here the key is
    derived once, the payload of a plain uid is `"uid"` base64-encoded, the timestamp
    part changes once a second, and the HMAC is one C call. `tokens.read_token` reads
    them (the tests check both ways).
    """

    def __init__(self, secret_key: str, purpose: str):
        self.serializer = serializer(secret_key, purpose)
        signer = self.serializer.make_signer()
        self.usable = isinstance(signer, TimestampSigner) and type(signer.algorithm) is HMACAlgorithm
        self.key = signer.derive_key()
        self.digest_name = signer.algorithm.digest_method().name  # e.g. "sha1", for hmac.digest
        self.sep = signer.sep.encode() if isinstance(signer.sep, str) else signer.sep
        self._second = -1
        self._stamp = b""

    def token(self, uid: str) -> str:
        if not (self.usable and uid.isascii() and uid.isalnum()):
            return self.serializer.dumps(uid)
        now = int(time.time())
        if now != self._second:
            self._stamp, self._second = base64_encode(int_to_bytes(now)), now
        value = base64_encode(b'"' + uid.encode() + b'"') + self.sep + self._stamp
        signature = base64_encode(hmac.digest(self.key, value, self.digest_name))
        return (value + self.sep + signature).decode("ascii")


class PersonalLinks:
    """The personal values of a bulk message: To and the two signed links.

    Holds what every message needs (the public URL, the two signers), so the hot path
    of a bulk send looks nothing up per recipient. Any object with `email` and `uid`
    will do as the recipient (a Subscriber, or a row of the ledger).
    """

    def __init__(self, public_url: str, secret_key: str):
        self.public_url = public_url
        self.secret_key = secret_key
        self.unsubscribe = LinkSigner(secret_key, "unsubscribe")
        self.preferences = LinkSigner(secret_key, "preferences")

    def __reduce__(self):  # a send worker gets the settings, and derives the keys itself
        return PersonalLinks, (self.public_url, self.secret_key)

    def values(self, recipient) -> dict[str, str]:
        uid = recipient.uid
        unsubscribe = self.unsubscribe.token(uid)
        return {
            "to": smtp_address(recipient.email)[0],
            "unsubscribe_url": f"{self.public_url}/unsubscribe/{unsubscribe}",
            "unsubscribe_token": unsubscribe,  # in the subject of List-Unsubscribe's mailto
            "preferences_url": f"{self.public_url}/preferences/{self.preferences.token(uid)}",
        }
