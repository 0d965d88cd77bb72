"""A test send: the coming digest to one address, with the real links' shape; nothing recorded."""

from __future__ import annotations

from datetime import datetime

from newsletter.digests.drafts import coming_digest
from newsletter.digests.render import DigestRenderer, digest_locale
from newsletter.mail import compose as mail
from newsletter.mail.transports import transport_from_url
from newsletter.subscriptions import tokens
from newsletter.subscriptions.validation import normalise_email


def send_test(email: str, *, locale: str, now: datetime | None = None) -> bool:
    """Send the coming digest to one address only; nothing is recorded. False if nothing is new."""
    address = normalise_email(email)  # InvalidInput: never "sent" to a non-address
    digest = coming_digest(now)
    if digest is None:
        return False
    renderer = DigestRenderer(digest)
    subject, text, html = renderer.render(digest_locale(locale), frozenset(renderer.topic_ids), personal=True)
    prepared = mail.prepare_message(subject=f"[TEST] {subject}", text=text, html=html, bulk=True)
    # The links have the real shape (/unsubscribe/<token>, /preferences/<token>) but lead to a
    # page that says the message was a test: clicking one never changes anyone's subscription.
    values = {"to": mail.smtp_address(address)[0],
              "unsubscribe_url": tokens.test_link_url("unsubscribe"),
              "preferences_url": tokens.test_link_url("preferences")}
    transport = transport_from_url()
    try:
        transport.send(mail.envelope_sender(), address, prepared.render(values))
    finally:
        transport.close()
    return True
