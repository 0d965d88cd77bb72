"""Building email messages (templates, headers, DKIM) and the transports that carry them.

Every email is a template triplet under templates/emails/ (`NAME_subject.txt`,
`NAME.txt`, `NAME.html`) rendered in the recipient's language, then *prepared*
once (`prepare_message`: headers, both MIME parts, CSS inlined, quoted-printable)
with slots for the per-recipient parts; `PreparedMessage` (in `prepared`) fills
them for each recipient, which is what makes a bulk send cheap: tens of
microseconds a message instead of milliseconds. A bulk send hands the messages
to `SMTPTransport.send_many` (in `smtp`), which pipelines them over one
connection: one round trip a message.

With DKIM_SELECTOR and DKIM_PRIVATE_KEY set, `render` also DKIM-signs each message
(`engine.dkim`: dkimpy's canonicalisation, OpenSSL's RSA and Ed25519 through `cryptography`,
after substitution): every message, bulk or single, passes through it.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from email.header import Header
from email.utils import formataddr, parseaddr
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import css_inline
from flask import current_app, render_template
from flask_babel import force_locale

from newsletter.engine.prepared import (
    _CRLF,
    PreparedMessage,
    _add_body,
)
from newsletter.engine.smtp import (
    smtp_address,
)
from newsletter.engine.verp import NO_SEND, VerpSigner

if TYPE_CHECKING:
    from newsletter.engine.dkim import DkimSigner

log = logging.getLogger(__name__)

# --- addresses and headers --------------------------------------------------


def sender_address() -> tuple[str, str]:
    """(display name, address) of MAIL_FROM."""
    return parseaddr(current_app.config["MAIL_FROM"])


def sender_domain() -> str:
    return sender_address()[1].rpartition("@")[2] or "localhost"


def list_id() -> str:
    configured = current_app.config.get("LIST_ID")
    return configured or f"<nyhetsbrev.{sender_domain()}>"


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


def _load_dkim_key(value: str, setting: str) -> bytes:
    """A DKIM key setting as PEM bytes: PEM text (literal \\n allowed, as in a .env file) or a path."""
    if "-----BEGIN" in value:
        pem = value.replace("\\n", "\n")
    else:
        try:
            pem = Path(value).expanduser().read_text()
        except OSError as exc:
            raise ValueError(f"{setting}: cannot read {value!r}: {exc}") from exc
    data = pem.strip().encode("ascii") + b"\n"
    from newsletter.engine.dkim import load_private_key

    try:
        load_private_key(data)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{setting} is not an RSA or Ed25519 private key in PEM form: {exc}") from exc
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
    ed_selector = (config.get("DKIM_ED25519_SELECTOR") or "").strip()
    ed_key = (config.get("DKIM_ED25519_PRIVATE_KEY") or "").strip()
    if bool(ed_selector) != bool(ed_key):
        raise ValueError("DKIM_ED25519_SELECTOR and DKIM_ED25519_PRIVATE_KEY go together")
    domain = (config.get("DKIM_DOMAIN") or "").strip() or sender_domain()
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ValueError(f"DKIM domain {domain!r} cannot be encoded") from exc
    cache_key = hashlib.sha256(f"{selector}\0{domain}\0{key}\0{ed_selector}\0{ed_key}".encode()).hexdigest()
    cache = current_app.extensions.setdefault("newsletter_dkim", {})
    if cache_key not in cache:
        from newsletter.engine.dkim import DkimSigner

        cache.clear()
        cache[cache_key] = DkimSigner(
            selector=selector, domain=domain, private_key=_load_dkim_key(key, "DKIM_PRIVATE_KEY"),
            ed25519_selector=ed_selector,
            ed25519_key=_load_dkim_key(ed_key, "DKIM_ED25519_PRIVATE_KEY") if ed_key else b"")
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
        msg._add(b">")
        if mailto := unsubscribe_mailto():
            # The reader's unsubscribe token ends the subject: a reply to it unsubscribes them
            # when the bounce mailbox reads it (inbound.poll).
            query = urlsplit(mailto).query
            last = query.rsplit("&", 1)[-1].lower()
            if last.startswith("subject="):
                tail = "%20"
            else:
                tail = ("&" if query else "?") + "subject=unsubscribe%20"
            msg._add(f", <{mailto}{tail}".encode())
            msg._add_slot("unsubscribe_token", "header")
            msg._add(b">")
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
    subject = render_subject(name, locale, **context)
    with force_locale(locale):
        context.setdefault("locale", locale)
        text = render_template(f"emails/{name}.txt", **context)
        html = render_template(f"emails/{name}.html", **context)
    return subject, text, inline_css(html)


def render_subject(name: str, locale: str, **context) -> str:
    """The subject alone of the triplet `name`, on one line (a digest's subject is saved at
    compile time: no need to render and inline its HTML for that)."""
    with force_locale(locale):
        context.setdefault("locale", locale)
        return " ".join(render_template(f"emails/{name}_subject.txt", **context).split())


def build_email(name: str, to: str, locale: str, *, bulk: bool = False, slots: dict | None = None,
                **context) -> bytes:
    """One finished message from a template triplet (for single, non-bulk-speed mail)."""
    subject, text, html = render_email(name, locale, **context)
    prepared = prepare_message(subject=subject, text=text, html=html, bulk=bulk)
    return prepared.render({"to": smtp_address(to)[0], **(slots or {})})


def envelope_sender(subscriber_id: int | None = None) -> str:
    """MAIL FROM: MAIL_FROM's address; with BOUNCE_ADDRESS, the subscriber's own VERP address
    (a single email to a subscriber, of no send)."""
    signer = verp_signer()
    if signer is not None and subscriber_id is not None:
        return signer.sender(NO_SEND, subscriber_id)
    return smtp_address(sender_address()[1])[0]


def verp_signer() -> VerpSigner | None:
    """The signer of VERP envelope senders when BOUNCE_ADDRESS is set, else None."""
    config = current_app.config
    address = (config.get("BOUNCE_ADDRESS") or "").strip()
    if not address:
        return None
    key = (address, config["SECRET_KEY"])
    signer = _verp_signers.get(key)
    if signer is None:
        signer = _verp_signers[key] = VerpSigner(*key)
    return signer


_verp_signers: dict[tuple[str, str], VerpSigner] = {}
