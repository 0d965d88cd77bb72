"""An intro per language: Swedish readers get the Swedish intro, English readers the English one,
and a language without an intro gets none (never the other language's)."""

from __future__ import annotations

from admin_helpers import add_article, add_subscribers, csrf_token, log_in
from api_helpers import Api, make_token
from conftest import body_text

from newsletter import delivery, digests
from newsletter.extensions import db
from newsletter.models import Digest


def _mail_to(smtp_server, email: str):
    [message] = smtp_server.messages(to=email)
    return body_text(message), body_text(message, "html")


def _readers(app) -> None:
    with app.app_context():
        add_article("Nytt bibliotek öppnar")
        add_subscribers(1, prefix="svensk")
        add_subscribers(1, language="en", prefix="english")


def test_each_language_gets_its_own_intro(smtp_app, smtp_server):
    _readers(smtp_app)
    with smtp_app.app_context():
        digests.set_intro("Hej alla!\n\nVeckans nyheter.", intro_en="Hello everyone!")
        delivery.send_now()
    sv_text, sv_html = _mail_to(smtp_server, "svensk0@example.org")
    en_text, en_html = _mail_to(smtp_server, "english0@example.org")
    assert "Hej alla!" in sv_text and "Veckans nyheter." in sv_html and "Hello everyone!" not in sv_text
    assert "Hello everyone!" in en_text and "Hello everyone!" in en_html
    assert "Hej alla!" not in en_text and "Hej alla!" not in en_html


def test_a_language_without_an_intro_gets_none(smtp_app, smtp_server):
    _readers(smtp_app)
    with smtp_app.app_context():
        digests.set_intro("Hej alla!")
        delivery.send_now()
    sv_text, _ = _mail_to(smtp_server, "svensk0@example.org")
    en_text, en_html = _mail_to(smtp_server, "english0@example.org")
    assert "Hej alla!" in sv_text
    assert "Hej alla!" not in en_text and "Hej alla!" not in en_html
    assert 'class="card intro"' not in en_html


def test_the_admin_saves_both_intros_and_previews_each(app, client):
    log_in(client, app)
    with app.app_context():
        add_article("Nytt bibliotek öppnar")
    response = client.post("/admin/digest/intro", data={
        "csrf_token": csrf_token(client, "/admin/digest"), "intro": "Hej alla!", "intro_en": "Hello all!"})
    assert response.status_code == 303
    assert "Hej alla!" in client.get("/admin/digest/preview/sv.txt").get_data(as_text=True)
    english = client.get("/admin/digest/preview/en.html").get_data(as_text=True)
    assert "Hello all!" in english and "Hej alla!" not in english
    page = client.get("/admin/digest").get_data(as_text=True)
    assert "Inledning på svenska" in page and "Inledning på engelska" in page and "Hello all!" in page
    client.post("/admin/digest/intro", data={
        "csrf_token": csrf_token(client, "/admin/digest"), "intro": "Hej alla!", "intro_en": ""})
    assert "Hello all!" not in client.get("/admin/digest/preview/en.html").get_data(as_text=True)
    with app.app_context():
        draft = db.session.execute(db.select(Digest)).scalar_one()
        assert (draft.intro, draft.intro_en) == ("Hej alla!", "")


def test_the_api_takes_an_english_intro(app, client):
    with app.app_context():
        add_article("Nytt bibliotek öppnar")
        add_subscribers(1, language="en", prefix="english")
    api = Api(client, make_token(app, "editor"))
    response = api.post("/digests", json={"intro_en": "Hello from the API"})
    assert response.status_code == 202, response.json
    assert response.json["intro_en"] == "Hello from the API" and response.json["intro"] == ""
    with app.app_context():
        delivery.wait_for_sends(20)
