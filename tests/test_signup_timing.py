"""A signup is answered no sooner than SIGNUP_RESPONSE_SECONDS whatever the address's state, so
the clock does not tell a confirmed address from a new one (bench/signups_timing.py measures
the medians)."""

from __future__ import annotations

import time

from newsletter.extensions import db
from newsletter.models import Subscriber

FLOOR = 0.15


def test_every_state_is_answered_after_the_same_floor(make_app):
    app = make_app(SIGNUP_RESPONSE_SECONDS=FLOOR, RATELIMIT_ENABLED=False)
    with app.app_context():
        for state in ("pending", "confirmed", "unsubscribed"):
            db.session.add(Subscriber(email=f"{state}@example.se", status=state, language="sv"))
        db.session.commit()
    client = app.test_client()
    bodies = set()
    for state in ("new", "pending", "confirmed", "unsubscribed"):
        started = client.get("/subscribe/start").get_json()["started"]
        began = time.perf_counter()
        answer = client.post("/subscribe", json={"email": f"{state}@example.se", "started": started},
                             headers={"Accept": "application/json"})
        took = time.perf_counter() - began
        assert answer.status_code == 200
        assert FLOOR <= took < FLOOR + 2, (state, took)
        bodies.add(answer.get_data())
    assert len(bodies) == 1  # and the same body
