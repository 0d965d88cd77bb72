"""Amazon SNS message signatures, checked as AWS documents them.

https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html:
the canonical string is "Name\\nvalue\\n" for a fixed list of fields in byte order
(Subject only when present), signed with SHA1withRSA (SignatureVersion 1) or
SHA256withRSA (2) by the key in the X.509 certificate at SigningCertURL. That URL
must be https on an SNS host (SNS_CERT_HOST_PATTERN), so the TLS connection to
AWS vouches for the certificate; certificates are cached per URL.

The certificate is read and the RSASSA-PKCS1-v1_5 signature checked with
`cryptography` (OpenSSL).
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from flask import current_app

from newsletter.engine.clock import utcnow

log = logging.getLogger(__name__)

SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn",
                                 "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn",
                                "Type"),
}
HASHES = {"1": hashes.SHA1, "2": hashes.SHA256}
FETCH_TIMEOUT = 10  # seconds
MAX_CERT_BYTES = 64 * 1024
CACHE_SIZE = 32


class SnsError(Exception):
    """An SNS message we refuse; `status` is the HTTP answer (400 malformed, 403 not authentic)."""

    def __init__(self, message: str, status: int = 403):
        super().__init__(message)
        self.status = status


# --- the canonical string ---------------------------------------------------------------------


def string_to_sign(message: dict) -> bytes:
    """The bytes SNS signed for this message (by its Type)."""
    fields = SIGNED_FIELDS.get(message.get("Type"))  # type: ignore[arg-type]
    if fields is None:
        raise SnsError(f"unknown SNS message Type {str(message.get('Type'))[:40]!r}", 400)
    lines = []
    for name in fields:
        if name == "Subject" and message.get(name) is None:
            continue  # only when present
        value = message.get(name)
        if not isinstance(value, str):
            raise SnsError(f"SNS message without {name}", 400)
        lines.append(f"{name}\n{value}\n")
    return "".join(lines).encode("utf-8")


# --- URLs that may be fetched -------------------------------------------------------------------


def allowed_url(url: object) -> bool:
    """An https URL on a host matching SNS_CERT_HOST_PATTERN (the whole host name), no user info."""
    if not isinstance(url, str):
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a malformed port)
    except ValueError:
        return False
    if parts.scheme != "https" or not parts.hostname or parts.username or parts.password:
        return False
    pattern = current_app.config["SNS_CERT_HOST_PATTERN"]
    return re.fullmatch(pattern, parts.hostname, flags=re.IGNORECASE) is not None


def fetch(url: str, *, max_bytes: int = MAX_CERT_BYTES) -> bytes:
    """GET an allowed URL over verified TLS, no redirects; the body (at most max_bytes)."""
    import requests  # imported when an SNS message comes in

    if not allowed_url(url):
        raise SnsError("URL not on an allowed SNS host")
    verify: str | bool = current_app.config.get("SNS_CA_BUNDLE") or True
    try:
        with requests.get(url, timeout=FETCH_TIMEOUT, verify=verify, allow_redirects=False,
                          stream=True) as response:
            if response.status_code != 200:
                raise SnsError(f"{url} answered {response.status_code}", 502)
            body = response.raw.read(max_bytes + 1, decode_content=True)
    except requests.RequestException as exc:
        raise SnsError(f"cannot fetch {url}: {exc}", 502) from exc
    if len(body) > max_bytes:
        raise SnsError(f"{url} is too large", 502)
    return body


# --- certificates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificate:
    public_key: rsa.RSAPublicKey
    not_before: datetime
    not_after: datetime


def parse_certificate(pem: bytes) -> Certificate:
    """The RSA public key and validity of a PEM X.509 certificate; ValueError otherwise."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise ValueError(f"not a PEM certificate: {exc}") from exc
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("not an RSA public key")
    return Certificate(public_key=key, not_before=cert.not_valid_before_utc,
                       not_after=cert.not_valid_after_utc)


_cache: dict[str, Certificate] = {}
_cache_lock = threading.Lock()


def certificate(url: str) -> Certificate:
    """The signing certificate at an allowed URL, fetched once per process and URL."""
    with _cache_lock:
        cert = _cache.get(url)
    if cert is None:
        try:
            cert = parse_certificate(fetch(url))
        except ValueError as exc:
            raise SnsError(f"bad signing certificate at {url}: {exc}", 502) from exc
        with _cache_lock:
            if len(_cache) >= CACHE_SIZE:
                _cache.pop(next(iter(_cache)))
            _cache[url] = cert
    now = utcnow()
    if not cert.not_before <= now <= cert.not_after:
        raise SnsError("the signing certificate is not valid now")
    return cert


# --- verification -----------------------------------------------------------------------------


def verify(message: dict) -> None:
    """Raise SnsError unless the message carries a valid SNS signature (and is recent enough)."""
    if not isinstance(message, dict):
        raise SnsError("the SNS message is not a JSON object", 400)
    canonical = string_to_sign(message)
    version = message.get("SignatureVersion")
    if version not in HASHES:
        raise SnsError(f"unsupported SignatureVersion {str(version)[:10]!r}")
    try:
        signature = base64.b64decode(str(message.get("Signature", "")), validate=True)
    except binascii.Error as exc:
        raise SnsError("the Signature is not base64") from exc
    url = message.get("SigningCertURL")
    if not allowed_url(url):
        raise SnsError("SigningCertURL is not an https URL on an SNS host")
    key = certificate(url).public_key  # type: ignore[arg-type]
    try:
        key.verify(signature, canonical, padding.PKCS1v15(), HASHES[version]())
    except InvalidSignature as exc:
        raise SnsError("the SNS signature does not match") from exc
    _check_age(message)


def _check_age(message: dict) -> None:
    max_age = current_app.config.get("SNS_MAX_AGE_SECONDS") or 0
    try:
        stamp = datetime.fromisoformat(message["Timestamp"].replace("Z", "+00:00"))
    except (ValueError, AttributeError) as exc:
        raise SnsError("bad Timestamp", 400) from exc
    if stamp.tzinfo is None:
        raise SnsError("bad Timestamp", 400)
    if max_age and utcnow() - stamp > timedelta(seconds=max_age):
        raise SnsError("the SNS message is too old")


def confirm_subscription(message: dict) -> None:
    """Visit the SubscribeURL of a (verified) SubscriptionConfirmation."""
    url = message.get("SubscribeURL")
    if not allowed_url(url):
        raise SnsError("SubscribeURL is not an https URL on an SNS host")
    fetch(url)  # type: ignore[arg-type]
    log.info("SNS subscription to %s confirmed", message.get("TopicArn"))
