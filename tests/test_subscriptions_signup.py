"""POST /subscribe: no enumeration, bot defences, CSRF, hostile input, rate limits, languages, embed."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from sqlalchemy import select
from subs_helpers import count, form_fields, nothing_stored, signup, subscriber

from newsletter import subscriptions
from newsletter.engine.clock import utcnow
from newsletter.extensions import db
from newsletter.mail import outbox as mail_queue
from newsletter.mail.transports import MemoryTransport
from newsletter.models import ConsentEvent, QueuedEmail, Subscriber


def outbox(app) -> list:
    return MemoryTransport.boxes.setdefault(app.config["MAIL_URL"], [])


@pytest.fixture(autouse=True)
def empty_memory_outbox(app):
    outbox(app).clear()
    yield
    outbox(app).clear()


def _prepare_states(app):
    """pending@, confirmed@, unsubscribed@ exist; new@ does not."""
    with app.app_context():
        subscriptions.request_signup("pending@example.se", topics=[], language="sv")
        subscriptions.add_subscriber("confirmed@example.se", confirmed=True)
        gone = subscriptions.add_subscriber("unsubscribed@example.se", confirmed=True)
        subscriptions.unsubscribe(gone, source="form")
        mail_queue.flush()
    outbox(app).clear()


def test_the_answer_is_identical_whatever_the_state_of_the_address(app, client):
    _prepare_states(app)
    answers = {state: signup(client, f"{state}@example.se")
               for state in ("new", "pending", "confirmed", "unsubscribed")}
    statuses = {state: r.status_code for state, r in answers.items()}
    # Identical but for the address each typed, which the page repeats (so a typo can be seen).
    bodies = {r.get_data(as_text=True).replace(f"{state}@", "someone@") for state, r in answers.items()}
    assert set(statuses.values()) == {200}, statuses
    assert len(bodies) == 1
    with app.app_context():
        mail_queue.flush()
        # New and unsubscribed get a confirmation; pending was just sent one; confirmed gets nothing.
        assert sorted(rcpt for _, rcpt, _ in outbox(app)) == ["new@example.se", "unsubscribed@example.se"]
        assert subscriber("unsubscribed@example.se").status == "pending"
        assert subscriber("confirmed@example.se").status == "confirmed"


def test_the_json_answer_is_identical_too(app, client):
    _prepare_states(app)
    started = client.get("/subscribe/start").get_json()["started"]
    answers = [client.post("/subscribe", json={"email": f"{state}@example.se", "started": started})
               for state in ("new", "pending", "confirmed", "unsubscribed")]
    assert {r.status_code for r in answers} == {200}
    assert len({r.get_data() for r in answers}) == 1
    assert answers[0].get_json()["ok"] is True


def test_a_pending_address_gets_the_confirmation_again_at_most_once_per_window(app, client):
    with time_machine.travel(utcnow(), tick=False) as traveller:
        signup(client, "anna@example.se")  # three: the default per-address rate limit
        with app.app_context():
            assert mail_queue.flush() == 1
        traveller.shift(timedelta(minutes=app.config["CONFIRM_RESEND_MINUTES"] - 1))
        signup(client, "anna@example.se")
        with app.app_context():
            assert mail_queue.flush() == 0
        traveller.shift(timedelta(minutes=2))
        signup(client, "anna@example.se")
        with app.app_context():
            assert mail_queue.flush() == 1
    assert len(outbox(app)) == 2


def test_address_is_normalised_and_idn_domains_are_accepted(app, client):
    assert signup(client, "  Anna.Lindqvist@EXAMPLE.se ").status_code == 200
    assert signup(client, "Jörgen@Bücher.example").status_code == 200
    with app.app_context():
        assert subscriber("anna.lindqvist@example.se") is not None
        assert subscriber("jörgen@bücher.example") is not None
        assert count(Subscriber) == 2


def test_honeypot_is_answered_like_a_person_and_stores_nothing(app, client):
    person = signup(client, "person@example.se")
    bot = signup(client, "bot@example.se", website="http://spam.example")
    # The same page, but for the address each typed (it is shown, so that a typo can be seen).
    as_bot = person.get_data(as_text=True).replace("person", "bot")
    assert bot.status_code == person.status_code == 200 and bot.get_data(as_text=True) == as_bot
    with app.app_context():
        assert subscriber("bot@example.se") is None


@pytest.mark.parametrize("started", ["fresh", "missing", "forged"])
def test_a_form_filled_faster_than_a_person_can_stores_nothing_and_asks_again(make_app, started):
    app = make_app(SIGNUP_MIN_SECONDS=3)
    client = app.test_client()
    extra = {"fresh": {}, "missing": {"started": ""}, "forged": {"started": "MTIz.abc.def"}}[started]
    response = signup(client, "quick@example.se", **extra)
    assert response.status_code == 200
    assert "en gång till" in response.get_data(as_text=True)  # a second step, not "check your inbox"
    with app.app_context():
        assert nothing_stored()


def test_a_form_filled_at_human_speed_is_accepted(make_app):
    app = make_app(SIGNUP_MIN_SECONDS=3)
    client = app.test_client()
    with time_machine.travel(utcnow(), tick=False) as traveller:
        fields = form_fields(client.get("/subscribe").get_data(as_text=True))
        traveller.shift(timedelta(seconds=4))
        response = client.post("/subscribe", data={**fields, "email": "human@example.se", "language": "sv"})
    assert response.status_code == 200
    with app.app_context():
        assert subscriber("human@example.se").status == "pending"


def test_a_form_post_without_csrf_token_is_400_and_stores_nothing(app, client):
    fields = form_fields(client.get("/subscribe").get_data(as_text=True))
    del fields["csrf_token"]
    response = client.post("/subscribe", data={**fields, "email": "csrf@example.se", "language": "sv"})
    assert response.status_code == 400
    with app.app_context():
        assert nothing_stored()


HOSTILE = ["x\r\nBcc: victim@example.org", "x\nTo: victim@example.org", "x\x00y", "x\u2028y", "x\x1by"]


@pytest.mark.parametrize("field", ["email", "topics", "language", "website", "started", "csrf_token"])
@pytest.mark.parametrize("value", HOSTILE)
def test_line_breaks_and_control_characters_in_any_field_are_400_and_store_nothing(app, client, field, value):
    page = client.get("/subscribe").get_data(as_text=True)
    data = {**form_fields(page), "email": "anna@example.se", "topics": "nyheter", "language": "sv",
            "website": ""}
    data[field] = ("anna@example.se" if field == "email" else data.get(field, "")) + value
    response = client.post("/subscribe", data=data)
    assert response.status_code == 400
    with app.app_context():
        assert nothing_stored()


@pytest.mark.parametrize("field", ["email", "name", "language", "topics", "started", "website"])
def test_hostile_json_is_400_and_stores_nothing(app, client, field):
    started = client.get("/subscribe/start").get_json()["started"]
    data = {"email": "anna@example.se", "name": "Anna", "language": "sv", "topics": ["nyheter"],
            "started": started, "website": ""}
    data[field] = ["nyheter", "x\r\ny"] if field == "topics" else str(data[field]) + "\r\nBcc: x@example.org"
    response = client.post("/subscribe", json=data)
    assert response.status_code == 400
    with app.app_context():
        assert nothing_stored()


@pytest.mark.parametrize("email", ["", "inte-en-adress", "a@b", "anna@@example.se", "x" * 300 + "@example.se",
                                   '"quoted"@example.se', "anna@localhost"])
def test_invalid_addresses_are_400_with_the_error_tied_to_the_field(app, client, email):
    response = signup(client, email, headers={"Accept-Language": "en"})
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert 'aria-invalid="true"' in html and 'aria-describedby="email-hint email-error"' in html
    assert 'id="email-error"' in html
    assert "Enter a valid email address" in html or not email
    with app.app_context():
        assert nothing_stored()


@pytest.mark.parametrize("field, value", [("topics", "nope"), ("language", "de")])
def test_unknown_topics_and_languages_are_400(app, client, field, value):
    response = signup(client, "anna@example.se", **{field: value})
    assert response.status_code == 400
    with app.app_context():
        assert nothing_stored()


def test_no_topic_chosen_means_all_topics(app, client):
    signup(client, "all@example.se", topics=())
    with app.app_context():
        person = subscriber("all@example.se")
        assert person.topics == []
        assert subscriptions.subscriber_data(person)["follows_all_topics"] is True


def test_the_signup_is_in_the_ledger_with_source_version_ip_and_user_agent(app, client):
    signup(client, "ledger@example.se", headers={"User-Agent": "Testläsare/1.0"})
    with app.app_context():
        event = db.session.execute(select(ConsentEvent)).scalar_one()
        assert (event.kind, event.source) == ("signup", "form")
        assert event.wording_version == app.config["CONSENT_VERSION"]
        assert event.ip == "127.0.0.1" and event.user_agent == "Testläsare/1.0"


def test_too_many_signups_from_one_ip_get_429(make_app):
    app = make_app(SIGNUP_RATE_PER_IP="2 per minute")
    client = app.test_client()
    assert [signup(client, f"a{i}@example.se").status_code for i in range(3)] == [200, 200, 429]


def test_too_many_signups_for_one_address_get_429_whatever_the_ip_or_case(make_app):
    app = make_app(SIGNUP_RATE_PER_ADDRESS="2 per hour")
    codes = []
    for i, email in enumerate(["anna@example.se", "ANNA@example.se", "Anna@Example.SE"]):
        client = app.test_client()
        client.environ_base["REMOTE_ADDR"] = f"192.0.2.{i + 1}"
        codes.append(signup(client, email).status_code)
    assert codes == [200, 200, 429]
    with app.app_context():
        assert count(QueuedEmail) == 1


# --- languages ---------------------------------------------------------------------------------


def test_pages_follow_accept_language_and_the_switch_is_remembered(client):
    assert '<html lang="sv">' in client.get("/").get_data(as_text=True)
    english = client.get("/", headers={"Accept-Language": "en-GB,en;q=0.9"}).get_data(as_text=True)
    assert '<html lang="en">' in english and "Subscribe to our news" in english
    swedish = client.get("/subscribe?lang=sv", headers={"Accept-Language": "en"}).get_data(as_text=True)
    assert '<html lang="sv">' in swedish and "Prenumerera på våra nyheter" in swedish
    later = client.get("/subscribe", headers={"Accept-Language": "en"}).get_data(as_text=True)
    assert '<html lang="sv">' in later  # the cookie from ?lang= wins over the browser


def test_the_subscribe_page_shows_topics_consent_version_and_an_accessible_form(app, client):
    html = client.get("/subscribe?lang=en").get_data(as_text=True)
    for text in ("News", "Press releases", "Blog", "<fieldset", "<legend>Topics</legend>",
                 '<label for="email">', f"Wording version {app.config['CONSENT_VERSION']}",
                 'name="website"', 'aria-hidden="true"', 'name="viewport"'):
        assert text in html, text


@pytest.mark.parametrize("language, subject", [("sv", "Bekräfta din prenumeration"),
                                                ("en", "Confirm your subscription")])
def test_the_confirmation_email_is_in_the_chosen_language(app, client, language, subject):
    signup(client, "lang@example.se", language=language)
    with app.app_context():
        mail_queue.flush()
    from email import message_from_bytes, policy

    [(_, _, raw)] = outbox(app)
    message = message_from_bytes(raw, policy=policy.default)
    assert message["Subject"] == subject


# --- the embedded form (JSON + CORS) ------------------------------------------------------------


@pytest.fixture
def embed_app(app):
    app.config["ALLOWED_EMBED_ORIGINS"] = ["https://www.norrsken.example"]
    return app


def test_preflight_allows_only_the_configured_origins(embed_app):
    client = embed_app.test_client()
    allowed = client.options("/subscribe", headers={
        "Origin": "https://www.norrsken.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert allowed.status_code == 204
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://www.norrsken.example"
    assert "POST" in allowed.headers["Access-Control-Allow-Methods"]
    assert "Content-Type" in allowed.headers["Access-Control-Allow-Headers"]
    other = client.options("/subscribe", headers={"Origin": "https://evil.example",
                                                  "Access-Control-Request-Method": "POST"})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_embedded_json_signup_needs_no_csrf_and_is_recorded_as_embed(embed_app):
    client = embed_app.test_client()
    origin = {"Origin": "https://www.norrsken.example"}
    started = client.get("/subscribe/start", headers=origin).get_json()["started"]
    response = client.post("/subscribe", headers=origin, json={
        "email": "embed@example.se", "topics": ["blogg"], "language": "en", "started": started})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "https://www.norrsken.example"
    with embed_app.app_context():
        person = subscriber("embed@example.se")
        assert person.language == "en" and [t.slug for t in person.topics] == ["blogg"]
        event = db.session.execute(select(ConsentEvent)).scalar_one()
        assert event.source == "embed"


def test_embedded_json_without_the_form_stamp_stores_nothing_and_asks_again(embed_app):
    client = embed_app.test_client()
    response = client.post("/subscribe", json={"email": "nostamp@example.se"})
    assert response.status_code == 400 and response.get_json()["error"] == "too_fast"
    with embed_app.app_context():
        assert nothing_stored()


def test_a_form_post_disguised_as_text_is_still_csrf_checked(embed_app):
    client = embed_app.test_client()
    response = client.post("/subscribe", data='{"email": "x@example.se"}', content_type="text/plain")
    assert response.status_code == 400
    with embed_app.app_context():
        assert nothing_stored()


# --- topics: seeded by `db upgrade`, read once per process ------------------------------------


def test_db_upgrade_seeds_the_configured_topics(app_config):
    from config import TestConfig
    from newsletter import create_app
    from newsletter.models import Topic

    app = create_app(app_config, config_class=TestConfig)
    with app.app_context():
        db.drop_all()  # an empty database, as on a new installation
        db.session.execute(db.text("DROP TABLE IF EXISTS alembic_version"))
        db.session.commit()
    with app.app_context():  # as the `flask` command has it
        result = app.test_cli_runner().invoke(args=["db", "upgrade"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        slugs = list(db.session.execute(db.select(Topic.slug).order_by(Topic.position)).scalars())
        assert slugs == [item.partition("=")[0] for item in app.config["TOPICS"]]
        db.session.execute(db.text("DROP TABLE alembic_version"))
        db.session.commit()
        db.engine.dispose()


def test_concurrent_first_signups_on_an_empty_database_never_fail(make_app):
    """Two web processes (apps with their own topic catalogue), eight requests at once, on a
    database nobody has seeded: every signup is accepted and every topic exists once."""
    import threading

    from newsletter.models import Subscriber, Topic

    apps = [make_app(SIGNUP_MIN_SECONDS=0, RATELIMIT_ENABLED=False) for _ in range(2)]
    with apps[0].app_context():
        assert db.session.execute(db.select(db.func.count()).select_from(Topic)).scalar_one() == 0
    clients = [app.test_client() for app in apps]
    starts = [clients[n % 2].get("/subscribe/start").get_json()["started"] for n in range(8)]
    barrier = threading.Barrier(8)
    statuses: list[int] = []

    def sign_up(n: int) -> None:
        barrier.wait()
        body = {"email": f"first{n}@example.se", "topics": ["blogg", "nyheter"], "language": "sv",
                "started": starts[n]}
        response = clients[n % 2].post("/subscribe", json=body, headers={"Accept": "application/json"})
        statuses.append(response.status_code)

    threads = [threading.Thread(target=sign_up, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert statuses == [200] * 8
    with apps[0].app_context():
        slugs = list(db.session.execute(db.select(Topic.slug)).scalars())
        assert sorted(slugs) == sorted(item.partition("=")[0] for item in apps[0].config["TOPICS"])
        people = list(db.session.execute(db.select(Subscriber)).scalars())
        assert len(people) == 8
        assert all(sorted(t.slug for t in p.topics) == ["blogg", "nyheter"] for p in people)
