"""A test send: the coming digest to one address, with the real links' shape; nothing recorded."""

from __future__ import annotations

from datetime import datetime

from flask import current_app
from sqlalchemy import select

from newsletter.digests.drafts import coming_digest
from newsletter.digests.render import DigestRenderer, digest_locale
from newsletter.extensions import db
from newsletter.mail import compose as mail
from newsletter.mail.personal import personal_values
from newsletter.mail.transports import transport_from_url
from newsletter.models import Subscriber


def send_test(email: str, *, locale: str, now: datetime | None = None) -> bool:
    """Send the coming digest to one address only; nothing is recorded. False if nothing is new."""
    digest = coming_digest(now)
    if digest is None:
        return False
    renderer = DigestRenderer(digest)
    subject, text, html = renderer.render(digest_locale(locale), frozenset(renderer.topic_ids), personal=True)
    prepared = mail.prepare_message(subject=f"[TEST] {subject}", text=text, html=html, bulk=True)
    subscriber = db.session.execute(
        select(Subscriber).where(Subscriber.email == email.strip().lower())
    ).scalar_one_or_none()
    if subscriber is not None:
        values = personal_values(subscriber)
    else:  # not on the list: the links lead to the public pages instead of someone's settings
        public_url = current_app.config["PUBLIC_URL"]
        values = {"to": mail.smtp_address(email)[0], "unsubscribe_url": f"{public_url}/subscribe",
                  "preferences_url": f"{public_url}/subscribe"}
    transport = transport_from_url()
    try:
        transport.send(mail.envelope_sender(), email, prepared.render(values))
    finally:
        transport.close()
    return True
