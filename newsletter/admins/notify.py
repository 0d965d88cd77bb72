"""Emails to the admins: sent at once, in each admin's language; what the server does not take
now goes through the outbox."""

from __future__ import annotations

import logging

from flask import current_app
from sqlalchemy import select

from newsletter.engine.smtp import MailError
from newsletter.extensions import db
from newsletter.mail import compose as mail
from newsletter.mail import outbox as mail_queue
from newsletter.mail.transports import transport_from_url
from newsletter.models import Admin

log = logging.getLogger(__name__)


def email_admins(name: str, **context) -> int:
    """The email `name` to every active admin in their language; queued when the server refuses."""
    admins = list(db.session.execute(select(Admin).where(Admin.active.is_(True))).scalars())
    config = current_app.config
    context |= {"admin_url": f"{config['PUBLIC_URL']}/admin/"}
    transport = None
    queued = 0
    try:
        for admin in admins:
            locale = admin.language if admin.language in config["LANGUAGES"] else config["DEFAULT_LOCALE"]
            message = mail.build_email(name, admin.email, locale, **context)
            try:
                transport = transport or transport_from_url()
                transport.send(mail.envelope_sender(), admin.email, message)
            except MailError as exc:
                log.warning("%s to admin %s not sent now (%s): queued", name, admin.id, exc)
                mail_queue.enqueue(name, to=admin.email, message=message)
                queued += 1
    finally:
        if transport is not None:
            transport.close()
    if queued:
        db.session.commit()
        mail_queue.wake()
    return len(admins)
