"""One mailbox, few confirmations: plus-addressing and case do not multiply the confirmation
emails, from however many IPs; the address as typed is kept for sending."""

from __future__ import annotations

from datetime import timedelta

import time_machine
from sqlalchemy import func, select

from newsletter.engine.clock import utcnow
from newsletter.extensions import db
from newsletter.models import QueuedEmail, Subscriber


def _signup(client, email: str, ip: str):
    started = client.get("/subscribe/start").get_json()["started"]
    return client.post("/subscribe", json={"email": email, "topics": ["nyheter"], "language": "sv",
                                           "started": started},
                       headers={"Accept": "application/json"}, environ_base={"REMOTE_ADDR": ip})


def _confirmations() -> list[str]:
    return list(db.session.execute(
        select(QueuedEmail.to_addr).where(QueuedEmail.kind == "confirm").order_by(QueuedEmail.id)).scalars())


def test_two_hundred_plus_addresses_from_many_ips_get_a_handful_of_emails(make_app):
    app = make_app(RATELIMIT_ENABLED=False)  # the mailbox rule itself, without the IP limits
    client = app.test_client()
    start = utcnow()
    with time_machine.travel(start, tick=False) as clock:
        for n in range(200):
            ip = f"198.51.{n % 50}.{n % 7 + 1}"
            answer = _signup(client, f"Victim+{n}@Example.se", ip)
            assert answer.status_code == 200 and answer.get_json()["ok"] is True
            clock.shift(timedelta(minutes=2))  # 400 minutes in all: the resend window passes many times
    with app.app_context():
        sent = _confirmations()
        assert 1 <= len(sent) <= app.config["CONFIRM_MAX_PER_MAILBOX"]
        assert sent[0] == "victim+0@example.se"  # the address as typed (lower-cased) is the recipient
        assert db.session.execute(select(func.count()).select_from(Subscriber)).scalar_one() == 200
        # The window between two of them is the resend window, whatever the spelling.
        created = list(db.session.execute(select(QueuedEmail.created_at).order_by(QueuedEmail.id)).scalars())
        assert all(b - a >= timedelta(minutes=15) for a, b in zip(created, created[1:], strict=False))
    # A day later the mailbox may get one again; another mailbox was never held back.
    with time_machine.travel(start + timedelta(days=2), tick=False):
        _signup(client, "victim+late@example.se", "203.0.113.1")
        _signup(client, "someone.else@example.se", "203.0.113.1")
    with app.app_context():
        assert _confirmations()[-2:] == ["victim+late@example.se", "someone.else@example.se"]


def test_the_per_address_limit_counts_the_mailbox(make_app):
    app = make_app(SIGNUP_RATE_PER_ADDRESS="3 per hour", SIGNUP_RATE_PER_IP="1000 per minute")
    client = app.test_client()
    codes = [_signup(client, f"victim+{n}@example.se", f"10.0.{n}.1").status_code for n in range(6)]
    assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429, 429]
    assert _signup(client, "other@example.se", "10.0.9.1").status_code == 200
