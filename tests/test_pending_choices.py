"""A pending subscription belongs to the person who confirms it: a stranger's re-signup of a
pending address changes nothing that was chosen, and the link that is confirmed applies the
choices of its own signup."""

from __future__ import annotations

from datetime import timedelta

import time_machine
from conftest import body_text
from subs_helpers import confirm_links, form_fields, subscriber

from newsletter.engine.clock import utcnow
from newsletter.mail import outbox as mail_queue


def _signup(client, email: str, topics: list[str], language: str, name: str = ""):
    started = client.get("/subscribe/start").get_json()["started"]
    response = client.post("/subscribe", json={"email": email, "topics": topics, "language": language,
                                               "name": name, "started": started},
                           headers={"Accept": "application/json"})
    assert response.status_code == 200
    return response


def _confirm(app, client, url: str):
    path = url.split("newsletter.test", 1)[1] if "newsletter.test" in url else url
    page = client.get(path)
    assert page.status_code == 200
    return client.post(path, data=form_fields(page.get_data(as_text=True)))


def _links(app, smtp_server) -> list[str]:
    with app.app_context():
        mail_queue.flush()
    links = []
    for message in smtp_server.messages(to="anna@example.se"):
        links.extend(sorted(confirm_links(body_text(message))))
    return links


def test_a_strangers_re_signup_does_not_change_a_pending_subscription(make_app, smtp_server):
    app = make_app(MAIL_URL=smtp_server.url, RATELIMIT_ENABLED=False)
    anna, stranger = app.test_client(), app.test_client()
    start = utcnow()
    with time_machine.travel(start, tick=False) as clock:
        _signup(anna, "anna@example.se", ["nyheter"], "sv", name="Anna")
        [annas_link] = _links(app, smtp_server)
        clock.shift(timedelta(minutes=1))
        _signup(stranger, "anna@example.se", ["blogg"], "en", name="Mallory")  # within the window
        with app.app_context():
            pending = subscriber("anna@example.se")
            assert (pending.name, pending.language, [t.slug for t in pending.topics]) == (
                "Anna", "sv", ["nyheter"])
        clock.shift(timedelta(minutes=30))
        _signup(stranger, "anna@example.se", ["blogg"], "en")  # after it: a second email, in English
        links = _links(app, smtp_server)
        assert len(links) == 2 and links[0] == annas_link
        assert _confirm(app, anna, annas_link).status_code in (200, 303)
    with app.app_context():
        confirmed = subscriber("anna@example.se")
        assert confirmed.status == "confirmed"
        assert (confirmed.name, confirmed.language, [t.slug for t in confirmed.topics]) == (
            "Anna", "sv", ["nyheter"])


def test_the_confirmed_link_applies_the_choices_of_its_own_signup(make_app, smtp_server):
    app = make_app(MAIL_URL=smtp_server.url, RATELIMIT_ENABLED=False)
    client = app.test_client()
    start = utcnow()
    with time_machine.travel(start, tick=False) as clock:
        _signup(client, "anna@example.se", ["nyheter"], "sv")
        _links(app, smtp_server)
        clock.shift(timedelta(minutes=30))
        _signup(client, "anna@example.se", ["blogg", "pressmeddelanden"], "en")  # she changed her mind
        links = _links(app, smtp_server)
        _confirm(app, client, links[-1])
    with app.app_context():
        confirmed = subscriber("anna@example.se")
        assert confirmed.language == "en"
        assert sorted(t.slug for t in confirmed.topics) == ["blogg", "pressmeddelanden"]
