"""Proof of consent (the wording kept per version), the reader's data download, the privacy page."""

from __future__ import annotations

import json

from admin_helpers import logged_in
from sqlalchemy import select
from subs_helpers import form_fields, signup, subscriber

from newsletter import subscriptions
from newsletter.extensions import db
from newsletter.models import AuditEvent, ConsentWording
from newsletter.subscriptions import tokens

SV_WORDING = "Genom att prenumerera"
EN_WORDING = "By subscribing you agree"


def _signed_up_and_confirmed(app, client) -> str:
    signup(client, "karin@example.se", headers={"User-Agent": "Firefox/140", "X-Forwarded-For": "x"})
    with app.app_context():
        path = tokens.confirm_url(subscriber("karin@example.se")).split("newsletter.test", 1)[1]
    page = client.get(path)
    client.post(path, data=form_fields(page.get_data(as_text=True)), headers={"User-Agent": "Firefox/140"})
    with app.app_context():
        return tokens.preferences_url(subscriber("karin@example.se")).split("newsletter.test", 1)[1]


def test_the_wording_is_kept_per_version_the_first_time_it_is_used(app, client):
    _signed_up_and_confirmed(app, client)
    app.config["CONSENT_VERSION"] = "2027-01-01"
    signup(client, "olle@example.se")
    with app.app_context():
        rows = {(w.version, w.locale): w.text for w in db.session.execute(select(ConsentWording)).scalars()}
    assert set(rows) == {("2026-11-01", "sv"), ("2026-11-01", "en"),
                         ("2027-01-01", "sv"), ("2027-01-01", "en")}
    assert rows["2026-11-01", "sv"].startswith(SV_WORDING)
    assert rows["2026-11-01", "en"].startswith(EN_WORDING)


def test_the_proof_of_consent_as_json_and_as_a_page(app, client):
    _signed_up_and_confirmed(app, client)
    with app.app_context():
        sid = subscriber("karin@example.se").id
    admin = logged_in(app, "editor")
    response = admin.get(f"/admin/subscribers/{sid}/consent.json")
    assert response.status_code == 200 and "attachment" in response.headers["Content-Disposition"]
    proof = response.get_json()
    assert proof["email"] == "karin@example.se" and proof["status"] == "confirmed"
    assert [e["kind"] for e in proof["events"]] == ["signup", "confirm"]
    signup_event = proof["events"][0]
    assert signup_event["source"] == "form" and signup_event["ip"]
    assert signup_event["user_agent"] == "Firefox/140"
    assert signup_event["wording_version"] == "2026-11-01"
    assert signup_event["wording"]["sv"].startswith(SV_WORDING)
    assert signup_event["wording"]["en"].startswith(EN_WORDING)
    page = admin.get(f"/admin/subscribers/{sid}/consent").get_data(as_text=True)
    assert "karin@example.se" in page and SV_WORDING in page and "Firefox/140" in page
    with app.app_context():
        assert db.session.execute(select(AuditEvent.target).where(
            AuditEvent.action == "consent_proof_exported")).scalar_one() == f"subscriber:{sid}"


def test_the_readers_data_download_contains_the_proof_and_the_digests(app, client):
    preferences = _signed_up_and_confirmed(app, client)
    page = client.get(preferences)
    response = client.post(preferences + "/data", data=form_fields(page.get_data(as_text=True)))
    assert response.status_code == 200
    data = json.loads(response.get_data(as_text=True))
    assert data["email"] == "karin@example.se" and data["topics"] == ["nyheter"]
    assert [e["kind"] for e in data["consent_events"]] == ["signup", "confirm"]
    assert data["consent_events"][0]["wording"]["sv"].startswith(SV_WORDING)
    assert data["deliveries"] == []


def test_the_cli_prints_the_proof(app, client, runner):
    _signed_up_and_confirmed(app, client)
    result = runner.invoke(args=["privacy", "proof", "KARIN@example.se"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["events"][1]["kind"] == "confirm"
    assert runner.invoke(args=["privacy", "proof", "nobody@example.se"]).exit_code == 1


def test_the_privacy_page_shows_the_periods_in_force(app, client):
    app.config.update(RETENTION_PENDING_DAYS=14, RETENTION_INACTIVE_DAYS=200, RETENTION_DELIVERIES_DAYS=45)
    sv = client.get("/privacy?lang=sv").get_data(as_text=True)
    assert "14 dagar" in sv and "200 dagar" in sv and "45 dagar" in sv and "IMY" in sv
    en = client.get("/privacy?lang=en").get_data(as_text=True)
    assert "after 14 days" in en and "after 200 days" in en and "for 45 days" in en
    assert "no tracking pixels" in en and "Links go straight to the articles" in en
    app.config["STATS_CLICKS"] = True
    assert "without recording who clicked" in client.get("/privacy?lang=en").get_data(as_text=True)


def test_the_privacy_page_is_linked_from_the_form_the_settings_and_every_email(app, client):
    assert 'href="/privacy"' in client.get("/subscribe").get_data(as_text=True)
    preferences = _signed_up_and_confirmed(app, client)
    assert 'href="/privacy"' in client.get(preferences).get_data(as_text=True)
    from newsletter.mail import compose as mail

    with app.app_context():
        for name in ("confirm", "welcome", "preferences_link"):
            for locale in ("sv", "en"):
                _, text, html = mail.render_email(name, locale, slot=lambda key: f"{{{key}}}")
                assert f"http://newsletter.test/privacy?lang={locale}" in text, (name, locale)
                assert f"http://newsletter.test/privacy?lang={locale}" in html, (name, locale)


def test_an_erased_reader_leaves_no_link_working(app, client):
    preferences = _signed_up_and_confirmed(app, client)
    with app.app_context():
        person = subscriber("karin@example.se")
        unsubscribe = tokens.unsubscribe_url(person).split("newsletter.test", 1)[1]
        subscriptions.erase_subscriber(person, source="form")
    for path in (preferences, preferences + "/erase"):
        assert client.get(path).status_code in (400, 404, 410), path
    # The unsubscribe link answers (one-click must), and finds no one.
    for response in (client.get(unsubscribe), client.post(unsubscribe)):
        assert response.status_code == 200 and "karin" not in response.get_data(as_text=True)
    with app.app_context():
        assert subscriber("karin@example.se") is None
