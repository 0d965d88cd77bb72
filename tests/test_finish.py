"""The finish a Swedish reader and admin expect: addresses checked everywhere, our own error
pages, honest links in test messages and after an erasure, words in the page's language."""

from __future__ import annotations

import re

import pytest
import time_machine
from digest_helpers import NOW, load_fixture_feeds, subscriber

from newsletter import subscriptions
from newsletter.engine.clock import utcnow
from newsletter.extensions import db
from newsletter.subscriptions import tokens


def _sv(client, url, **kwargs):
    return client.get(url, headers={"Accept-Language": "sv"}, **kwargs)


# --- an address is an address, wherever it is typed -------------------------------------------


def test_a_test_send_to_a_non_address_fails_and_sends_nothing(smtp_app, smtp_server, feed_server):
    runner = smtp_app.test_cli_runner()
    with time_machine.travel(NOW, tick=True):
        with smtp_app.app_context():
            load_fixture_feeds(feed_server, now=utcnow())
        result = runner.invoke(args=["digest", "send", "--test-to", "inte-en-adress"])
    assert result.exit_code != 0
    assert "test sent" not in result.output and "inte-en-adress" in result.output
    assert smtp_server.messages() == []


# --- a test message has the real links' shape and changes nothing ------------------------------


def test_a_test_digest_links_to_a_page_that_says_it_was_a_test(smtp_app, smtp_server, feed_server):
    with time_machine.travel(NOW, tick=True):
        with smtp_app.app_context():
            load_fixture_feeds(feed_server, now=utcnow())
            subscriber("redaktor@example.se")
        result = smtp_app.test_cli_runner().invoke(
            args=["digest", "send", "--test-to", "redaktor@example.se"])
    assert result.exit_code == 0, result.output
    [message] = smtp_server.messages()
    header = message["List-Unsubscribe"]
    public = smtp_app.config["PUBLIC_URL"]
    assert re.search(rf"<{re.escape(public)}/unsubscribe/[^>]+>", header), header
    html = message.get_body(preferencelist=("html",)).get_content()
    links = re.findall(rf'href="{re.escape(public)}(/(?:unsubscribe|preferences)/[^"]+)"', html)
    assert {link.split("/")[1] for link in links} == {"unsubscribe", "preferences"}
    client = smtp_app.test_client()
    unsubscribe_path = re.search(r"<[^/]+//[^/]+(/unsubscribe/[^>]+)>", header).group(1)
    for path in [unsubscribe_path, *links]:
        page = _sv(client, path)
        assert page.status_code == 200 and "testutskick" in page.get_data(as_text=True), path
    one_click = client.post(unsubscribe_path, data={"List-Unsubscribe": "One-Click"})
    assert one_click.status_code == 200
    with smtp_app.app_context():
        # nobody was unsubscribed
        assert subscriptions.find_subscriber("redaktor@example.se").status == "confirmed"


# --- old links after an erasure say why they stopped working ---------------------------------------


def test_links_of_an_erased_person_say_the_address_was_erased(app):
    client = app.test_client()
    with app.app_context():
        person = subscriber("borta@example.se")
        urls = [f"/preferences/{tokens.preferences_token(person)}",
                f"/unsubscribe/{tokens.unsubscribe_token(person)}",
                f"/confirm/{tokens.confirm_token(person)}"]
        subscriptions.erase_subscriber(person, source="form")
        db.session.commit()
    for url in urls:
        page = _sv(client, url)
        text = page.get_data(as_text=True)
        # The unsubscribe link still answers 200 (its one-click POST must); the others are gone.
        assert page.status_code == (200 if "/unsubscribe/" in url else 410), url
        assert "har raderats" in text and "ofullständig" not in text, url


# --- every error page is ours, styled, in the reader's language -----------------------------------


@pytest.mark.parametrize("path", ["/nope", "/archive/999", "/admin/nope"])
def test_unknown_addresses_get_our_page_in_swedish(client, path):
    page = _sv(client, path)
    text = page.get_data(as_text=True)
    assert page.status_code == 404
    assert "Not Found" not in text and "Sidan finns inte" in text
    assert 'rel="stylesheet"' in text and '<html lang="sv">' in text


def test_error_pages_in_english_and_for_other_statuses(client, app):
    @app.get("/boom-for-test")
    def boom():
        raise RuntimeError("boom")

    app.config["PROPAGATE_EXCEPTIONS"] = False
    page = client.get("/nope", headers={"Accept-Language": "en"})
    assert "Page not found" in page.get_data(as_text=True)
    wrong_method = client.delete("/healthz", headers={"Accept-Language": "sv"})
    assert wrong_method.status_code == 405 and "Method Not Allowed" not in wrong_method.get_data(as_text=True)
    assert 'rel="stylesheet"' in wrong_method.get_data(as_text=True)
    page = _sv(client, "/boom-for-test")
    assert page.status_code == 500 and "Något gick fel" in page.get_data(as_text=True)


def test_the_api_keeps_its_json_errors(client):
    response = client.get("/api/v1/nope")
    assert response.status_code == 404 and response.is_json


# --- the Swedish admin speaks Swedish ------------------------------------------------------------------


def test_the_swedish_admin_has_no_raw_english(app, tmp_path):
    import io

    from admin_helpers import csrf_token, logged_in

    from newsletter.models import Feed

    client = logged_in(app, "admin", "chef@example.se")
    with app.app_context():
        db.session.add(Feed(url="https://norrsken.example/borta.rss", last_status="error",
                            last_error="HTTPError: 404 Client Error: Not Found for url: https://norrsken.example/borta.rss"))
        db.session.commit()
    feeds = client.get("/admin/feeds").get_data(as_text=True)
    assert "Flödets adress (RSS eller Atom)" in feeds
    problem = re.search(r'<p class="feed-error">(.*?)</p>', feeds, re.S).group(1)
    assert "finns inte" in problem and "HTTPError" not in problem

    def upload(body: str, name: str = "lista.csv") -> str:
        return client.post("/admin/subscribers/import", data={
            "csrf_token": csrf_token(client, "/admin/subscribers/import"),
            "file": (io.BytesIO(body.encode()), name)},
            content_type="multipart/form-data").get_data(as_text=True)

    page = upload("foo,bar\n1,2\n")
    assert "ingen kolumn med e-postadresser" in page and "no email column" not in page
    page = upload("email,name\nanna@example.se,Anna\nanna@example.se,Anna\ninte-en-adress,X\n")
    assert "samma adress som rad 2" in page and "ingen giltig e-postadress" in page
    assert "Format: vår egen export" in page and "duplicate of" not in page and "must have" not in page

    with app.app_context():
        anna = subscriptions.find_subscriber("anna@example.se").id
    detail = client.get(f"/admin/subscribers/{anna}").get_data(as_text=True)
    assert "kanal:</span> administrationen" in detail and "layout:" not in detail and "channel:" not in detail

    from newsletter.admins import audit as audit_log

    with app.app_context():  # what a failed login records: no one is logged in
        audit_log.record("login_failed", "chef@example.se", actor="anonymous")
        db.session.commit()
    boss = logged_in(app, "admin", "boss2@example.se")
    audit = boss.get("/admin/audit").get_data(as_text=True)
    rows = re.search(r"<tbody>(.*)</tbody>", audit, re.S).group(1)
    assert "prenumeranter importerade" in rows and "misslyckad inloggning" in rows, rows
    assert "inte inloggad" in rows and "format:</span> vår egen export" in rows
    assert "subscribers_imported" not in rows and "login_failed" not in rows and "anonymous" not in rows


# --- one definition of a send's recipients ------------------------------------------------------------


def test_a_send_limited_by_topics_counts_the_same_recipients_everywhere(smtp_app, smtp_server):
    from newsletter import delivery
    from newsletter.digests import articles
    from newsletter.web.admin.sends import progress_view

    with smtp_app.app_context():
        articles.add_article(title="Bara blogg", url="https://norrsken.example/b/", topic_slug="blogg",
                             published=NOW)
        for n in range(3):
            subscriber(f"nyheter{n}@example.se", topics=("nyheter",))
        subscriber("blogg@example.se", topics=("blogg",))
        subscriber("allt@example.se")
        planned = delivery.plan_send(NOW)["recipients"]
        digest = delivery.send_now(NOW)
        progress = delivery.send_progress(digest.id)
        assert planned == digest.recipient_count == progress["total"] == progress["sent"] == 2
        assert progress["skipped"] == 0
    with smtp_app.test_request_context():
        assert progress_view(digest.id)["percent"] == 100


def test_the_swedish_send_page_formats_numbers_and_knows_when_a_send_is_over(smtp_app, smtp_server):
    from admin_helpers import logged_in

    from newsletter import delivery
    from newsletter.digests import articles
    from newsletter.models import Delivery, Digest

    with smtp_app.app_context():
        articles.add_article(title="Nytt", url="https://norrsken.example/n/", topic_slug="nyheter",
                             published=NOW)
        for n in range(3):
            subscriber(f"p{n}@example.se")
        digest_id = delivery.send_now(NOW).id
        first = db.session.execute(
            db.select(Delivery).where(Delivery.digest_id == digest_id)).scalars().first()
        first.state = "queued"
        db.session.get(Digest, digest_id).status = "paused"
        db.session.commit()
    client = logged_in(smtp_app, "admin", "chef@example.se")
    page = client.get(f"/admin/sends/{digest_id}").get_data(as_text=True)
    assert "66,7\xa0%" in page and "66.7 %" not in page
    running = re.search(r'<p class="muted" data-show-when="sending paused"([^>]*)>', page)
    assert running and "hidden" not in running.group(1)
    assert client.get(f"/admin/sends/{digest_id}/progress.json").get_json()["percent_text"] == "66,7\xa0%"
    with smtp_app.app_context():
        db.session.get(Digest, digest_id).status = "cancelled"
        db.session.commit()
    page = client.get(f"/admin/sends/{digest_id}").get_data(as_text=True)
    assert "hidden" in re.search(r'<p class="muted" data-show-when="sending paused"([^>]*)>', page).group(1)


# --- "follows every topic" means one thing ---------------------------------------------------------------


def test_a_topic_filter_includes_those_who_follow_every_topic_everywhere(app):
    import csv
    import io

    from api_helpers import auth, make_token

    with app.app_context():
        subscriber("nyheter@example.se", topics=("nyheter",))
        subscriber("blogg@example.se", topics=("blogg",))
        subscriber("allt@example.se")
    expected = {"nyheter@example.se", "allt@example.se"}
    result = app.test_cli_runner().invoke(args=["subscribers", "export", "--topic", "nyheter"])
    assert result.exit_code == 0, result.output
    assert {row["email"] for row in csv.DictReader(io.StringIO(result.stdout))} == expected, result.output
    with app.app_context():
        from newsletter.models import Subscriber

        query = subscriptions.SubscriberFilter(topic="nyheter").apply(db.select(Subscriber.email))
        assert set(db.session.execute(query).scalars()) == expected
    api = app.test_client().get("/api/v1/subscribers?topic=nyheter", headers=auth(make_token(app)))
    assert api.status_code == 200, api.get_data(as_text=True)
    assert {item["email"] for item in api.get_json()["data"]} == expected


# --- adding someone who left says so ---------------------------------------------------------------------


def test_adding_someone_who_unsubscribed_says_they_unsubscribed(app):
    runner = app.test_cli_runner()
    with app.app_context():
        subscriber("slutat@example.se", status="unsubscribed")
    result = runner.invoke(args=["subscribers", "add", "slutat@example.se", "--confirmed"])
    assert result.exit_code != 0
    assert "unsubscribed" in result.output
    with app.app_context():
        assert subscriptions.find_subscriber("slutat@example.se").status == "unsubscribed"


# --- before set-up, the login page asks for nothing it cannot give ------------------------------------------


def test_before_any_admin_exists_nobody_is_asked_to_log_in(client):
    page = client.get("/admin/", headers={"Accept-Language": "sv"}, follow_redirects=True)
    text = page.get_data(as_text=True)
    assert "Inget administratörskonto ännu" in text
    assert "Logga in för att se sidan" not in text
    assert '<pre class="command">' in text


def test_an_admin_created_through_the_setup_link_has_a_last_login(app, client):
    from admin_helpers import PASSWORD, csrf_token

    from newsletter.admins import accounts

    with app.test_request_context():
        token = accounts.make_setup_token()
    response = client.post("/admin/setup", data={
        "csrf_token": csrf_token(client, f"/admin/setup?token={token}"), "token": token,
        "email": "first@example.org", "password": PASSWORD, "password_again": PASSWORD})
    assert response.status_code == 302
    with app.app_context():
        assert accounts.admin_by_email("first@example.org").last_login_at is not None
    admins = client.get("/admin/admins").get_data(as_text=True)
    row = re.search(r"first@example.org</td>.*?</tr>", admins, re.S).group(0)
    assert "–" not in row.split("</td>")[3]


# --- a fast human is asked once more, never silently dropped -----------------------------------------


def test_a_fast_human_gets_a_second_step_and_then_the_email(make_app):
    from subs_helpers import form_fields

    app = make_app(SIGNUP_MIN_SECONDS=30)
    client = app.test_client()
    fields = form_fields(client.get("/subscribe", headers={"Accept-Language": "sv"}).get_data(as_text=True))
    first = client.post("/subscribe", data={**fields, "email": "snabb@example.se", "language": "sv"},
                        headers={"Accept-Language": "sv"})
    text = first.get_data(as_text=True)
    assert first.status_code == 200 and "inkorg" not in text.lower()
    assert "en gång till" in text and 'value="snabb@example.se"' in text
    with app.app_context():
        assert subscriptions.find_subscriber("snabb@example.se") is None
    again = form_fields(text)
    second = client.post("/subscribe", data={**again, "email": "snabb@example.se", "language": "sv"},
                         headers={"Accept-Language": "sv"})
    assert "inkorg" in second.get_data(as_text=True).lower()
    with app.app_context():
        assert subscriptions.find_subscriber("snabb@example.se").status == "pending"


def test_a_fast_embedded_signup_is_told_to_press_again_not_to_check_the_inbox(make_app):
    app = make_app(SIGNUP_MIN_SECONDS=30)
    client = app.test_client()
    started = client.get("/subscribe/start").get_json()["started"]
    body = {"email": "snabb@example.se", "language": "sv", "started": started}
    answer = client.post("/subscribe", json=body, headers={"Accept": "application/json"})
    assert answer.status_code == 400 and answer.get_json()["error"] == "too_fast"
    assert "inkorg" not in answer.get_json()["message"].lower()
    body["started"] = answer.get_json()["started"]
    again = client.post("/subscribe", json=body, headers={"Accept": "application/json"})
    assert again.status_code == 200 and again.get_json()["ok"] is True


# --- one short, locale-correct style for each kind of date ---------------------------------------------


def test_each_kind_of_date_has_one_short_style_per_language(app):
    from datetime import UTC, datetime

    from newsletter.i18n import day_text, moment_text

    this_year = datetime.now(UTC).year
    moment = datetime(this_year, 12, 7, 6, 0, tzinfo=UTC)  # 07:00 in Stockholm
    with app.test_request_context(headers={"Accept-Language": "sv"}):
        assert moment_text(moment) == "mån 7 dec. 07:00"
        assert moment_text(moment.replace(year=this_year - 1)) == f"7 dec. {this_year - 1} 07:00"
        assert day_text(moment) == f"7 december {this_year}"
    with app.test_request_context(headers={"Accept-Language": "en"}):
        assert moment_text(moment) == "Mon 7 Dec 07:00"  # en-GB: day before month, 24-hour clock
        assert day_text(moment) == f"7 December {this_year}"


def test_the_archive_and_the_email_write_a_digest_date_alike(smtp_app, feed_server):
    from newsletter import delivery, digests
    from newsletter.i18n import day_text

    with smtp_app.app_context():
        with time_machine.travel(NOW, tick=True):
            load_fixture_feeds(feed_server, now=utcnow())
            subscriber("en@example.com", language="en")
            digest = delivery.send_now(NOW)
        subject, text, html = digests.DigestRenderer(digest).render_public("en")
        expected = day_text(digest.compiled_for, "en")
    assert expected in text and expected in html
    archive = smtp_app.test_client().get("/archive?lang=en").get_data(as_text=True)
    assert expected in archive


# --- the command line speaks plain English ----------------------------------------------------------------


def test_commands_count_in_good_english_and_name_the_valid_topics(app):
    runner = app.test_cli_runner()
    with app.app_context():
        subscriber("ensam@example.se")
    result = runner.invoke(args=["subscribers", "export"])
    assert result.stderr == "exported 1 subscriber\n"
    result = runner.invoke(args=["feeds", "add", "https://norrsken.example/f.rss", "--topic", "sport"])
    assert result.exit_code != 0 and "sport" in result.output
    assert "nyheter" in result.output and "blogg" in result.output  # the topics that exist


# --- the emails of the subscription say who, what and when ------------------------------------------------


def test_the_confirmation_and_welcome_emails_say_who_what_and_when(smtp_app, smtp_server):
    from conftest import body_text

    from newsletter.mail import outbox as mail_queue

    with smtp_app.app_context():
        person = subscriptions.add_subscriber("ny@example.se", topics=["blogg"], language="sv",
                                              source="admin")
        db.session.commit()
        mail_queue.flush()
        subscriptions.confirm_subscription(tokens.confirm_token(person))
        db.session.commit()
        mail_queue.flush()
    confirmation, welcome = smtp_server.messages(to="ny@example.se")
    html = body_text(confirmation, "html")
    site = smtp_app.config.get("SITE_NAME") or "Nyhetsbrev"
    assert site in html.split("<h1>")[0]  # who writes: a heading above the message
    link = re.search(r'href="([^"]*/confirm/[^"]+)"', html).group(1)
    assert html.count(link) == 2 and html.count(f'href="{link}"') == 1  # the button, and the plain address
    assert "Länken gäller i 7 dagar" in html and "Länken gäller i 7 dagar" in body_text(confirmation)
    text = body_text(welcome)
    assert "Dina ämnen: Blogg" in text and "Språk: svenska" in text
    assert re.search(r"Första nyhetsbrevet kommer: mån \d+ \w+\.? 07:00", text), text


def test_check_your_inbox_shows_the_address_with_a_way_to_correct_it_in_either_language(client):
    from subs_helpers import signup

    page = signup(client, "anna@exmaple.se", headers={"Accept-Language": "sv"})
    text = page.get_data(as_text=True)
    assert "anna@exmaple.se" in text and "/subscribe?email=anna@exmaple.se" in text
    assert 'href="/subscribe/sent?lang=en"' in text  # the switch keeps this page
    english = client.get("/subscribe/sent?lang=en").get_data(as_text=True)
    assert "Check your inbox" in english and "anna@exmaple.se" in english
    again = client.get("/subscribe?email=anna%40exmaple.se").get_data(as_text=True)
    assert 'value="anna@exmaple.se"' in again


def test_after_unsubscribing_the_settings_offer_to_subscribe_again_not_to_save(app, client):
    with app.app_context():
        person = subscriber("kvar@example.se")
        preferences = f"/preferences/{tokens.preferences_token(person)}"
        unsubscribe = f"/unsubscribe/{tokens.unsubscribe_token(person)}"
    page = _sv(client, unsubscribe).get_data(as_text=True)
    assert "Ändra dina ämnen i stället" in page and preferences in page
    client.post(unsubscribe)
    page = _sv(client, preferences).get_data(as_text=True)
    assert "Prenumerera igen" in page and ">Spara<" not in page
    assert "/subscribe?email=kvar@example.se" in page


# --- the admin finds people by name and can send a confirmation again -------------------------------


def test_the_admin_searches_by_name_and_resends_a_confirmation(app):
    from admin_helpers import csrf_token, logged_in

    from newsletter.models import QueuedEmail

    client = logged_in(app, "admin", "chef@example.se")
    with app.app_context():
        subscriptions.add_subscriber("a.l@example.se", name="Anna Lindqvist", source="admin")
        db.session.commit()
        pending = subscriptions.find_subscriber("a.l@example.se")
        pending.confirmation_sent_at = None  # long ago
        db.session.commit()
        pending_id = pending.id
    listing = client.get("/admin/subscribers?q=lindq").get_data(as_text=True)
    assert "a.l@example.se" in listing
    detail = client.get(f"/admin/subscribers/{pending_id}").get_data(as_text=True)
    assert "Skicka bekräftelsen igen" in detail
    response = client.post(f"/admin/subscribers/{pending_id}/resend",
                           data={"csrf_token": csrf_token(client, f"/admin/subscribers/{pending_id}")})
    assert response.status_code == 303
    with app.app_context():
        rows = db.session.execute(db.select(QueuedEmail).where(QueuedEmail.kind == "confirm")).scalars().all()
        assert len(rows) == 2  # the first, and the one sent again
    again = client.post(f"/admin/subscribers/{pending_id}/resend",
                        data={"csrf_token": csrf_token(client, f"/admin/subscribers/{pending_id}")},
                        follow_redirects=True)
    assert "Inget mejl skickades" in again.get_data(as_text=True)  # not twice within minutes


def test_the_admin_edits_a_subscribers_name_language_and_topics(app):
    from admin_helpers import csrf_token, logged_in

    client = logged_in(app, "admin", "chef@example.se")
    with app.app_context():
        person_id = subscriber("byt@example.se").id
    page = f"/admin/subscribers/{person_id}"
    assert "Ändra namn, språk eller ämnen" in client.get(page).get_data(as_text=True)
    response = client.post(f"{page}/edit", data={"csrf_token": csrf_token(client, page), "name": "Berit Ek",
                                                 "language": "en", "topics": ["blogg"]})
    assert response.status_code == 303
    with app.app_context():
        person = subscriptions.find_subscriber("byt@example.se")
        chosen = subscriptions.topic_slugs(person)
        assert (person.name, person.language, chosen) == ("Berit Ek", "en", ["blogg"])
        kinds = [(e.kind, e.source) for e in subscriptions.consent_events(person)]
        assert ("preferences", "admin") in kinds
