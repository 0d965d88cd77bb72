"""Links in emails: scanner-safe GETs, expiry, tampering, wrong purpose, superseded links, unsubscribe."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from sqlalchemy import select
from subs_helpers import count, form_fields, subscriber

from newsletter import subscriptions
from newsletter.engine.clock import utcnow
from newsletter.extensions import db
from newsletter.models import ConsentEvent
from newsletter.subscriptions import tokens


def _pending(app, email="anna@example.se"):
    with app.app_context():
        subscriptions.request_signup(email, topics=["nyheter"], language="sv")
        person = subscriber(email)
        return {"confirm": tokens.confirm_url(person), "unsubscribe": tokens.unsubscribe_url(person),
                "preferences": tokens.preferences_url(person)}


def _path(url: str) -> str:
    return url.removeprefix("http://newsletter.test")


def _csrf(client) -> dict:
    return {"csrf_token": form_fields(client.get("/subscribe").get_data(as_text=True))["csrf_token"]}


def _state(app, email="anna@example.se"):
    with app.app_context():
        person = subscriber(email)
        return (person.status, person.generation, count(ConsentEvent), [t.slug for t in person.topics])


def test_gets_of_every_link_change_nothing(app, client):
    links = _pending(app)
    before = _state(app)
    for _ in range(3):
        for name in ("confirm", "unsubscribe", "preferences"):
            response = client.get(_path(links[name]))
            assert response.status_code == 200, name
    assert _state(app) == before


def test_the_confirm_page_has_a_button_and_the_post_confirms(app, client):
    links = _pending(app)
    page = client.get(_path(links["confirm"])).get_data(as_text=True)
    assert '<form method="post">' in page and "Bekräfta min prenumeration" in page
    response = client.post(_path(links["confirm"]), data=form_fields(page))
    assert response.status_code == 200
    assert _state(app)[0] == "confirmed"
    again = client.post(_path(links["confirm"]), data=form_fields(page))  # idempotent
    assert again.status_code == 200 and _state(app)[0] == "confirmed"


def test_an_expired_confirmation_link_is_410_with_a_way_to_start_over(app, client):
    with time_machine.travel(utcnow(), tick=False) as traveller:
        links = _pending(app)
        csrf = _csrf(client)
        traveller.shift(timedelta(seconds=app.config["CONFIRM_MAX_AGE"] + 60))
        url = _path(links["confirm"])
        for response in (client.get(url), client.post(url, data=csrf)):
            assert response.status_code == 410
            html = response.get_data(as_text=True)
            assert "Länken har gått ut" in html and 'href="/subscribe"' in html
    assert _state(app)[0] == "pending"


def _tampered(url: str) -> str:
    head, _, token = url.rpartition("/")
    middle = len(token) // 2
    return f"{head}/{token[:middle]}{'A' if token[middle] != 'A' else 'B'}{token[middle + 1:]}"


@pytest.mark.parametrize("name", ["confirm", "unsubscribe", "preferences"])
def test_a_tampered_link_is_400_with_a_way_to_start_over(app, client, name):
    links = _pending(app)
    before = _state(app)
    csrf = _csrf(client)
    for response in (client.get(_path(_tampered(links[name]))),
                     client.post(_path(_tampered(links[name])), data=csrf)):
        assert response.status_code == 400
        assert 'href="/subscribe"' in response.get_data(as_text=True)
    assert _state(app) == before


@pytest.mark.parametrize("token_of, used_on", [("unsubscribe", "confirm"), ("preferences", "confirm"),
                                                ("confirm", "unsubscribe"), ("confirm", "preferences"),
                                                ("unsubscribe", "preferences")])
def test_a_token_for_another_purpose_is_400(app, client, token_of, used_on):
    links = _pending(app)
    before = _state(app)
    token = links[token_of].rpartition("/")[2]
    csrf = _csrf(client)
    assert client.get(f"/{used_on}/{token}").status_code == 400
    assert client.post(f"/{used_on}/{token}", data=csrf).status_code == 400
    assert _state(app) == before


def test_a_confirmation_link_sent_before_an_unsubscribe_never_resubscribes(app, client):
    old = _pending(app)
    page = client.get(_path(old["confirm"])).get_data(as_text=True)
    client.post(_path(old["confirm"]), data=form_fields(page))
    client.post(_path(old["unsubscribe"]))
    assert _state(app)[0] == "unsubscribed"
    assert client.get(_path(old["confirm"])).status_code == 410
    assert client.post(_path(old["confirm"]), data=_csrf(client)).status_code == 410
    assert _state(app)[0] == "unsubscribed"
    new = _pending(app)  # subscribes again: pending, and a new link that works
    assert client.post(_path(old["confirm"]), data=_csrf(client)).status_code == 410
    assert _state(app)[0] == "pending"
    page = client.get(_path(new["confirm"])).get_data(as_text=True)
    assert client.post(_path(new["confirm"]), data=form_fields(page)).status_code == 200
    assert _state(app)[0] == "confirmed"


def test_the_unsubscribe_page_button_posts_without_csrf_and_is_idempotent(app, client):
    links = _pending(app)
    page = client.get(_path(links["unsubscribe"])).get_data(as_text=True)
    assert '<form method="post">' in page and "csrf_token" not in page
    for _ in range(2):
        response = client.post(_path(links["unsubscribe"]))
        assert response.status_code == 200 and "Location" not in response.headers
    with app.app_context():
        person = subscriber("anna@example.se")
        assert person.status == "unsubscribed" and person.generation == 1
        kinds = [e.kind for e in db.session.execute(select(ConsentEvent)).scalars()]
        assert kinds.count("unsubscribe") == 1


def test_unsubscribe_links_do_not_expire(app, client):
    with time_machine.travel(utcnow(), tick=False) as traveller:
        links = _pending(app)
        traveller.shift(timedelta(days=3 * 365))
        response = client.post(_path(links["unsubscribe"]), data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200
    assert _state(app)[0] == "unsubscribed"


def test_one_click_for_an_erased_person_still_answers_200(app, client):
    links = _pending(app)
    with app.app_context():
        subscriptions.erase_subscriber(subscriber("anna@example.se"), source="admin")
    assert client.post(_path(links["unsubscribe"]), data={"List-Unsubscribe": "One-Click"}).status_code == 200
