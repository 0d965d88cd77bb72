"""The form's anti-bot stamp expires and cannot be replayed without limit."""

from __future__ import annotations

from datetime import timedelta

import time_machine
from sqlalchemy import func, select
from subs_helpers import form_fields

from newsletter.engine.clock import utcnow
from newsletter.extensions import db
from newsletter.models import Subscriber


def _count(app) -> int:
    with app.app_context():
        return db.session.execute(select(func.count()).select_from(Subscriber)).scalar_one()


def test_one_stamp_serves_a_few_signups_not_two_hundred(make_app):
    app = make_app(SIGNUP_RATE_PER_IP="1000 per minute", SIGNUP_STAMP_USES=3)
    client = app.test_client()
    started = client.get("/subscribe/start").get_json()["started"]
    for n in range(20):
        answer = client.post("/subscribe", json={"email": f"p{n}@example.se", "started": started},
                             headers={"Accept": "application/json"})
        assert answer.status_code == 200 and answer.get_json()["ok"] is True  # the same answer
    assert _count(app) == 3


def test_an_expired_stamp_asks_the_person_to_send_the_form_again(make_app):
    app = make_app(SIGNUP_STAMP_MAX_AGE=3600)
    client = app.test_client()
    start = utcnow()
    with time_machine.travel(start, tick=False) as clock:
        page = client.get("/subscribe")
        fields = form_fields(page.get_data(as_text=True))
        started = client.get("/subscribe/start").get_json()["started"]
        clock.shift(timedelta(hours=2))
        again = client.post("/subscribe", data={**fields, "email": "anna@example.se", "language": "sv",
                                                 "topics": ["nyheter"], "website": ""})
        assert again.status_code == 400
        html = again.get_data(as_text=True)
        assert "Formuläret har varit öppet länge" in html and 'value="anna@example.se"' in html
        fresh = form_fields(html)["started"]
        assert fresh != fields["started"]
        embed = client.post("/subscribe", json={"email": "anna@example.se", "started": started},
                            headers={"Accept": "application/json"})
        assert embed.status_code == 400 and embed.get_json()["error"] == "form_expired"
        assert _count(app) == 0
        clock.shift(timedelta(seconds=10))
        done = client.post("/subscribe", data={**fields, "started": fresh, "email": "anna@example.se",
                                               "language": "sv", "topics": ["nyheter"], "website": ""})
        assert done.status_code == 200
    assert _count(app) == 1
