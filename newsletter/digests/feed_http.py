"""One HTTP GET of a feed, bounded in bytes and time, that reaches only the addresses it may.

A feed added by an editor may only reach public addresses: the host name is resolved once per
hop (the first request and every redirect), every address it resolves to must be allowed, and the
connection goes to the address that was checked, so the name cannot re-resolve to another one
between the check and the connection (DNS rebinding). The numeric spellings of an address
(decimal, hex, octal, short, IPv4-mapped IPv6) resolve to the address they mean and are judged
as such. Feeds set by the operator (FEED_URLS) are trusted and fetched with `allow=None`.

Flask-free: the caller passes the limits and the allowed networks.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import certifi
import urllib3

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
CHUNK = 64 * 1024
REDIRECTS = {301, 302, 303, 307, 308}


class FetchError(Exception):
    """A fetch that did not give a response we use; the message is safe to show an editor."""


class HTTPError(FetchError):  # noqa: N818 - named like requests' error, which editors' messages quote
    """The server answered with an error status."""


class AddressRefused(FetchError):
    """The URL's host is not a public address (nor in the allowed networks)."""

    def __init__(self):
        super().__init__("the address is not a public one (see FEED_ALLOW_NETWORKS)")


@dataclass
class Limits:
    """How much one fetch may take: bytes of body (after decompression) and seconds in all."""

    max_bytes: int = 5 * 1024 * 1024
    seconds: float = 20.0
    max_redirects: int = 5


@dataclass
class Response:
    url: str  # the last URL, after redirects
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes = b""


def parse_networks(values: Iterable[str]) -> list[IPNetwork]:
    """FEED_ALLOW_NETWORKS entries ("10.0.0.0/8", "fd00::/8", "192.168.1.20") as networks."""
    return [ipaddress.ip_network(value.strip(), strict=False) for value in values if value.strip()]


def address_allowed(address: str, allow: Iterable[IPNetwork] = ()) -> bool:
    """Whether a resolved address is public, or inside one of the `allow` networks."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip.version == net.version and ip in net for net in allow):
        return True
    return (ip.is_global and not ip.is_multicast and not ip.is_reserved
            and not ip.is_unspecified and not ip.is_link_local)


def _resolve(host: str, port: int, allow: list[IPNetwork] | None) -> str:
    """The address to connect to; AddressRefused when any address of the name is not allowed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchError("the host name could not be resolved") from exc
    addresses = [info[4][0] for info in infos]
    if not addresses:
        raise FetchError("the host name could not be resolved")
    if allow is not None and not all(address_allowed(address, allow) for address in addresses):
        raise AddressRefused()
    return addresses[0]


def check_url(url: str, allow: list[IPNetwork] | None) -> None:
    """Refuse (FetchError) a URL that is not http(s) or whose host may not be reached."""
    parts = _split(url)
    _resolve(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), allow)


def _split(url: str):
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as exc:
        raise FetchError("not a valid URL") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError("only http and https URLs")
    return parts


def fetch(url: str, *, headers: dict[str, str], limits: Limits,
          allow: list[IPNetwork] | None) -> Response:
    """GET `url`, following redirects (each one checked); the body is read up to the limits.

    `allow=None` trusts every address (the operator's FEED_URLS); otherwise only public
    addresses and those in `allow` are reached. FetchError for anything that went wrong.
    """
    deadline = time.monotonic() + limits.seconds
    for _hop in range(limits.max_redirects + 1):
        response = _get_once(url, headers, limits, allow, deadline)
        location = response.headers.get("location")
        if response.status not in REDIRECTS or not location:
            return response
        url = urljoin(url, location)
    raise FetchError("too many redirects")


def _get_once(url: str, headers: dict[str, str], limits: Limits, allow: list[IPNetwork] | None,
              deadline: float) -> Response:
    parts = _split(url)
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    address = _resolve(parts.hostname, port, allow)
    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchError("no answer in time")
    timeout = urllib3.Timeout(connect=min(left, 10.0), read=left)
    if https:
        pool = urllib3.HTTPSConnectionPool(
            address, port, timeout=timeout, retries=False, cert_reqs="CERT_REQUIRED",
            ca_certs=certifi.where(), server_hostname=parts.hostname, assert_hostname=parts.hostname)
    else:
        pool = urllib3.HTTPConnectionPool(address, port, timeout=timeout, retries=False)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    if ":" in parts.hostname:  # an IPv6 literal
        host = f"[{parts.hostname}]" + (f":{parts.port}" if parts.port else "")
    try:
        raw = pool.urlopen("GET", path, headers={**headers, "Host": host, "Accept-Encoding": "gzip, deflate"},
                           redirect=False, retries=False, preload_content=False, assert_same_host=False)
        try:
            content = b"" if raw.status in REDIRECTS or raw.status == 304 else _read(raw, limits, deadline)
            return Response(url=url, status=raw.status, content=content,
                            headers={name.lower(): value for name, value in raw.headers.items()})
        finally:
            raw.release_conn()
    except (urllib3.exceptions.TimeoutError, TimeoutError) as exc:
        raise FetchError("no answer in time") from exc
    except urllib3.exceptions.SSLError as exc:
        raise FetchError("the TLS certificate could not be verified") from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise FetchError("the server could not be reached or broke off the answer") from exc
    finally:
        pool.close()


def _read(raw, limits: Limits, deadline: float) -> bytes:
    declared = raw.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_bytes:
        raise FetchError(f"the feed is larger than {limits.max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        if time.monotonic() > deadline:  # a server that trickles bytes is cut off too
            raise FetchError("no answer in time")
        chunk = raw.read1(CHUNK)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limits.max_bytes:
            raise FetchError(f"the feed is larger than {limits.max_bytes} bytes")
        chunks.append(chunk)
