"""Bounces and complaints: the service, the generic JSON webhook, and Amazon SES via SNS with
real signatures (keys and certificates from openssl, the certificate served over real HTTPS)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from bounces_helpers import (
    TOPIC_ARN,
    HttpsServer,
    Pki,
    now_stamp,
    post_sns,
    ses_bounce,
    ses_complaint,
    sns_notification,
    sns_sign,
)
from sqlalchemy import select

from newsletter import delivery, digests
from newsletter.delivery import bounces
from newsletter.digests import articles
from newsletter.extensions import db
from newsletter.models import ConsentEvent, Delivery, Subscriber
from newsletter.subscriptions.topics import ensure_topics
from newsletter.web.hooks import sns

SECRET = "s3cret-Ω-webhook-0123456789abcdef"
CERT_PATH = "/SimpleNotificationService-0123456789abcdef.pem"


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def https_server(pki):
    server = HttpsServer(pki)
    server.files[CERT_PATH] = pki.sns_cert.read_bytes()
    server.files["/confirm"] = b"<ConfirmSubscriptionResponse/>"
    server.start()
    yield server
    server.stop()


@pytest.fixture
def hook_app(make_app, pki):
    return make_app(BOUNCE_WEBHOOK_SECRET=SECRET, SNS_CERT_HOST_PATTERN="localhost",
                    SNS_CA_BUNDLE=str(pki.tls_cert))


def people(*emails: str, status: str = "confirmed") -> None:
    for email in emails:
        db.session.add(Subscriber(email=email, status=status))
    db.session.commit()


def status(email: str) -> str:
    db.session.expire_all()
    return db.session.execute(select(Subscriber.status).where(Subscriber.email == email)).scalar_one()


def events(kind: str | None = None) -> list[ConsentEvent]:
    query = select(ConsentEvent).order_by(ConsentEvent.id)
    if kind:
        query = query.where(ConsentEvent.kind == kind)
    return list(db.session.execute(query).scalars())


def snapshot() -> tuple:
    db.session.expire_all()
    return (sorted(db.session.execute(select(Subscriber.email, Subscriber.status)).all()), len(events()))


# --- the service ----------------------------------------------------------------------------


def test_record_bounce_marks_permanent_records_soft_and_is_idempotent(app):
    with app.app_context():
        people("hard@example.se", "soft@example.se", "spam@example.se", "gone@example.se")
        people("left@example.se", status="unsubscribed")
        assert bounces.record_bounce("Hard@Example.se", detail={"reason": "550 user unknown"}).email \
            == "hard@example.se"
        bounces.record_bounce("soft@example.se", permanent=False, detail={"reason": "452 mailbox full"})
        bounces.record_bounce("spam@example.se", kind="complaint", permanent=False)  # always permanent
        bounces.record_bounce("left@example.se")
        assert bounces.record_bounce("nobody@example.se") is None
        assert bounces.record_bounce("not an address") is None
        with pytest.raises(ValueError):
            bounces.record_bounce("gone@example.se", kind="spam")

        assert status("hard@example.se") == "bounced"
        assert status("soft@example.se") == "confirmed"
        assert status("spam@example.se") == "complained"
        assert status("left@example.se") == "unsubscribed"  # stays out, for the reason they chose
        assert status("gone@example.se") == "confirmed"
        ledger = {(e.kind, e.detail["permanent"], e.detail["previous_status"]) for e in events()}
        assert ledger == {("bounce", True, "confirmed"), ("bounce", False, "confirmed"),
                          ("complaint", True, "confirmed"), ("bounce", True, "unsubscribed")}
        assert {e.source for e in events()} == {"webhook"}
        hard = events("bounce")[0]
        assert hard.detail["reason"] == "550 user unknown" and hard.subscriber_id is not None

        # A provider retrying the same notification changes nothing and adds no second event.
        before = len(events())
        bounces.record_bounce("hard@example.se")
        bounces.record_bounce("spam@example.se", kind="complaint")
        assert len(events()) == before
        # A complaint outranks a bounce.
        bounces.record_bounce("hard@example.se", kind="complaint")
        assert status("hard@example.se") == "complained"


# --- the generic JSON webhook -------------------------------------------------------------------


def test_generic_webhook_marks_subscribers_without_csrf_or_cookies(hook_app):
    client = hook_app.test_client()
    with hook_app.app_context():
        people("a@example.se", "b@example.se", "c@example.se")
    response = client.post(f"/hooks/bounces/{SECRET}", json=[
        {"email": "a@example.se", "type": "bounce", "permanent": True, "reason": "550 5.1.1"},
        {"email": "b@example.se", "type": "complaint"},
        {"email": "c@example.se", "type": "bounce", "permanent": False, "reason": "421 later"},
        {"email": "stranger@example.se"},
    ])
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json() == {"ok": True, "recorded": 3, "unknown": 1}
    # A single object works too.
    assert client.post(f"/hooks/bounces/{SECRET}", json={"email": "c@example.se"}).status_code == 200
    with hook_app.app_context():
        assert [status(e) for e in ("a@example.se", "b@example.se", "c@example.se")] == \
            ["bounced", "complained", "bounced"]
        assert [e.detail["reason"] for e in events("bounce")][:2] == ["550 5.1.1", "421 later"]
        assert all(e.detail["provider"] == "generic" for e in events())


@pytest.mark.parametrize("configured, path", [
    (SECRET, "/hooks/bounces/wrong-secret"),
    (SECRET, f"/hooks/bounces/{SECRET}x"),
    ("", "/hooks/bounces/anything"),
    ("", "/hooks/bounces/%20"),
])
def test_generic_webhook_is_404_without_the_right_secret(make_app, configured, path):
    app = make_app(BOUNCE_WEBHOOK_SECRET=configured)
    with app.app_context():
        people("a@example.se")
        before = snapshot()
    response = app.test_client().post(path, json={"email": "a@example.se"})
    assert response.status_code == 404
    assert response.get_json() == {"ok": False, "error": "not found"}
    with app.app_context():
        assert snapshot() == before


@pytest.mark.parametrize("body, content_type, error", [
    (b"", "application/json", "empty body"),
    (b"{not json", "application/json", "not JSON"),
    (b"\xff\xfe", "application/json", "not JSON"),
    (json.dumps([]).encode(), "application/json", "empty list"),
    (json.dumps("a@example.se").encode(), "application/json", "expected a JSON object"),
    (json.dumps([{"email": "a@example.se"}, {"email": "b@example.se", "type": "spam"}]).encode(),
     "application/json", "'type'"),
    (json.dumps([{"email": "a@example.se"}, {"email": "bad@@example"}]).encode(), "text/plain", "'email'"),
    (json.dumps([{"email": "a@example.se"}, {"email": "b@example.se", "permanent": "yes"}]).encode(),
     "application/json", "'permanent'"),
    (json.dumps([{"email": "a@example.se"}, {"email": "b@example.se", "extra": 1}]).encode(),
     "application/json", "unknown field"),
    (json.dumps([{"email": "a@example.se"}] * 1001).encode(), "application/json", "more than 1000"),
])
def test_generic_webhook_rejects_bad_input_whole(hook_app, body, content_type, error):
    with hook_app.app_context():
        people("a@example.se", "b@example.se")
        before = snapshot()
    response = hook_app.test_client().post(f"/hooks/bounces/{SECRET}", data=body, content_type=content_type)
    assert response.status_code == 400
    assert error in response.get_json()["error"]
    with hook_app.app_context():
        assert snapshot() == before  # the valid first item was not applied either


def test_generic_webhook_refuses_huge_bodies_and_other_methods(hook_app):
    client = hook_app.test_client()
    big = json.dumps([{"email": "a@example.se", "reason": "x" * 2000}] * 600)
    response = client.post(f"/hooks/bounces/{SECRET}", data=big, content_type="application/json")
    assert response.status_code == 413 and response.get_json()["ok"] is False
    assert client.get(f"/hooks/bounces/{SECRET}").status_code == 405


# --- Amazon SES via SNS -----------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1", "2"])
def test_ses_bounce_and_complaint_with_valid_signatures(hook_app, https_server, pki, version):
    client = hook_app.test_client()
    url = https_server.url(CERT_PATH)
    with hook_app.app_context():
        people("hard@example.se", "soft@example.se", "spam@example.se")
    messages = [
        sns_notification(ses_bounce("hard@example.se"), url, key=pki.sns_key, version=version),
        sns_notification(ses_bounce("soft@example.se", bounce_type="Transient"), url, key=pki.sns_key,
                         version=version, subject=None),
        sns_notification(ses_complaint("spam@example.se"), url, key=pki.sns_key, version=version),
    ]
    for message in messages:
        response = post_sns(client, f"/hooks/ses/{SECRET}", message)
        assert response.status_code == 200, response.get_data(as_text=True)
        assert response.get_json()["recorded"] == 1
    with hook_app.app_context():
        assert status("hard@example.se") == "bounced"
        assert status("soft@example.se") == "confirmed"
        assert status("spam@example.se") == "complained"
        by_kind = [(e.kind, e.detail["permanent"], e.detail["provider"], e.source) for e in events()]
        assert by_kind == [("bounce", True, "ses", "webhook"), ("bounce", False, "ses", "webhook"),
                           ("complaint", True, "ses", "webhook")]
        assert events()[0].detail["sns_message_id"] == messages[0]["MessageId"]
        assert events()[1].detail["bounce_type"] == "Transient"
    # The certificate was fetched once and then cached.
    assert https_server.requests.count(CERT_PATH) <= 1


def test_ses_forged_unsigned_or_tampered_messages_are_403_and_change_nothing(hook_app, https_server, pki):
    client = hook_app.test_client()
    url = https_server.url(CERT_PATH)
    with hook_app.app_context():
        people("victim@example.se")
        before = snapshot()
    good = sns_notification(ses_bounce("someone@example.se"), url, key=pki.sns_key)
    unsigned = {k: v for k, v in good.items() if k not in ("Signature", "SignatureVersion")}
    unsigned["Message"] = json.dumps(ses_complaint("victim@example.se"))
    tampered = {**good, "Message": json.dumps(ses_complaint("victim@example.se"))}
    forged = sns_notification(ses_complaint("victim@example.se"), url, key=pki.forger_key)
    downgraded = {**sns_notification(ses_complaint("victim@example.se"), url, key=pki.sns_key,
                                     version="2"), "SignatureVersion": "1"}
    garbage = {**forged, "Signature": "!!!not base64!!!"}
    short = {**forged, "Signature": "AAAA"}
    other_type = {**good, "Type": "SubscriptionConfirmation", "Token": "t", "SubscribeURL": url}
    two_days_ago = (datetime.now(UTC) - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    old = sns_notification(ses_complaint("victim@example.se"), url, key=pki.sns_key, timestamp=two_days_ago)
    for message in (unsigned, tampered, forged, downgraded, garbage, short, other_type, old):
        response = post_sns(client, f"/hooks/ses/{SECRET}", message)
        assert response.status_code == 403, (message, response.get_data(as_text=True))
        assert response.get_json()["ok"] is False
    with hook_app.app_context():
        assert snapshot() == before


@pytest.mark.parametrize("cert_url", [
    "http://localhost:{port}" + CERT_PATH,  # not https
    "https://127.0.0.1:{port}" + CERT_PATH,  # not the allowed host
    "https://localhost.evil.example:{port}" + CERT_PATH,
    "https://user@localhost:{port}" + CERT_PATH,
    "https://evil.example/?x=https://localhost:{port}" + CERT_PATH,
    "file:///etc/passwd",
])
def test_ses_certificate_only_from_an_allowed_https_host(hook_app, https_server, pki, cert_url):
    message = sns_notification(ses_complaint("victim@example.se"), cert_url.format(port=https_server.port),
                               key=pki.sns_key)
    with hook_app.app_context():
        people("victim@example.se")
    response = post_sns(hook_app.test_client(), f"/hooks/ses/{SECRET}", message)
    assert response.status_code == 403
    assert https_server.requests == []  # refused before anything was fetched
    with hook_app.app_context():
        assert status("victim@example.se") == "confirmed"


def test_default_host_pattern_is_sns_only(app):
    with app.app_context():
        assert sns.allowed_url("https://sns.eu-north-1.amazonaws.com/SimpleNotificationService-abc.pem")
        assert sns.allowed_url("https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-abc.pem")
        for url in ("http://sns.eu-north-1.amazonaws.com/x.pem",
                    "https://sns.eu-north-1.amazonaws.com.evil.example/x.pem",
                    "https://evilsns.eu-north-1.amazonaws.com/x.pem",
                    "https://sns.eu-north-1.amazonaws.com@evil.example/x.pem",
                    "https://s3.amazonaws.com/x.pem", "https://sns.eu-north-1.amazonaws.com:bad/x.pem",
                    None, 42):
            assert not sns.allowed_url(url), url


def test_ses_certificate_must_be_valid_now(hook_app, https_server, pki):
    message_url = https_server.url(CERT_PATH)
    with hook_app.app_context():
        people("victim@example.se")
    with time_machine.travel(datetime.now(UTC) + timedelta(days=5)):  # the certificate is for 2 days
        message = sns_notification(ses_complaint("victim@example.se"), message_url, key=pki.sns_key)
        assert post_sns(hook_app.test_client(), f"/hooks/ses/{SECRET}", message).status_code == 403
        with hook_app.app_context():
            assert status("victim@example.se") == "confirmed"


def test_ses_subscription_confirmation_visits_subscribe_url(hook_app, https_server, pki):
    client = hook_app.test_client()
    message = sns_sign({
        "Type": "SubscriptionConfirmation", "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
        "Token": "2336412f37fb687f5d51e6e241d09c805a5a57b30d712f794cc5f6a988666d92768dd60a7a",
        "TopicArn": TOPIC_ARN,
        "Message": f"You have chosen to subscribe to the topic {TOPIC_ARN}.",
        "SubscribeURL": https_server.url("/confirm?Action=ConfirmSubscription&Token=2336412f37"),
        "Timestamp": now_stamp(), "SigningCertURL": https_server.url(CERT_PATH),
    }, pki.sns_key, "2")
    response = post_sns(client, f"/hooks/ses/{SECRET}", message)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert "/confirm?Action=ConfirmSubscription&Token=2336412f37" in https_server.requests

    # A SubscribeURL elsewhere is not visited, even when the message is signed.
    https_server.requests.clear()
    evil = sns_sign({**message, "SubscribeURL": "https://evil.example/confirm"}, pki.sns_key, "2")
    assert post_sns(client, f"/hooks/ses/{SECRET}", evil).status_code == 403
    assert not any(path.startswith("/confirm") for path in https_server.requests)
    # Nor for an unsigned confirmation.
    unsigned = {**message, "Signature": ""}
    assert post_sns(client, f"/hooks/ses/{SECRET}", unsigned).status_code == 403
    assert not any(path.startswith("/confirm") for path in https_server.requests)


def test_ses_without_secret_needs_a_topic_allow_list(make_app, https_server, pki):
    overrides = {"BOUNCE_WEBHOOK_SECRET": SECRET, "SNS_CERT_HOST_PATTERN": "localhost",
                 "SNS_CA_BUNDLE": str(pki.tls_cert)}
    url = https_server.url(CERT_PATH)
    open_app = make_app(**overrides)
    listed = make_app(**overrides, SNS_TOPIC_ARNS=[TOPIC_ARN])  # the same database
    with listed.app_context():
        people("a@example.se", "b@example.se")
    message = sns_notification(ses_bounce("a@example.se"), url, key=pki.sns_key)
    assert post_sns(open_app.test_client(), "/hooks/ses", message).status_code == 404

    client = listed.test_client()
    other_topic = sns_notification(ses_bounce("b@example.se"), url, key=pki.sns_key,
                                   topic="arn:aws:sns:eu-north-1:999999999999:someone-else")
    assert post_sns(client, "/hooks/ses", other_topic).status_code == 403
    assert post_sns(client, f"/hooks/ses/{SECRET}", other_topic).status_code == 403  # the list applies
    assert post_sns(client, "/hooks/ses", message).status_code == 200
    with listed.app_context():
        assert status("a@example.se") == "bounced" and status("b@example.se") == "confirmed"


def test_ses_raw_delivery_only_with_the_secret_and_bad_input_is_400(hook_app, https_server, pki):
    client = hook_app.test_client()
    with hook_app.app_context():
        people("raw@example.se", "x@example.se")
    raw = ses_bounce("raw@example.se")
    assert client.post("/hooks/ses/wrong", json=raw).status_code == 404
    assert client.post(f"/hooks/ses/{SECRET}", json=raw).get_json() == {"ok": True, "recorded": 1,
                                                                       "unknown": 0}
    # Delivery notifications and the like are accepted and ignored.
    delivered = {"notificationType": "Delivery", "mail": {"messageId": "x"}, "delivery": {}}
    assert client.post(f"/hooks/ses/{SECRET}", json=delivered).get_json()["recorded"] == 0
    url = https_server.url(CERT_PATH)
    not_ses = sns_notification({"hello": "world"}, url, key=pki.sns_key)
    no_recipients = sns_notification({"notificationType": "Bounce", "bounce": {"bounceType": "Permanent"}},
                                     url, key=pki.sns_key)
    for message, error in ((not_ses, "not an SES notification"), (no_recipients, "bouncedRecipients")):
        response = post_sns(client, f"/hooks/ses/{SECRET}", message)
        assert response.status_code == 400 and error in response.get_json()["error"]
    mismatch = client.post(f"/hooks/ses/{SECRET}", data=json.dumps(not_ses),
                           headers={"x-amz-sns-message-type": "SubscriptionConfirmation"})
    assert mismatch.status_code == 400
    assert client.post(f"/hooks/ses/{SECRET}", data=b"[]").status_code == 400
    with hook_app.app_context():
        assert status("raw@example.se") == "bounced" and status("x@example.se") == "confirmed"


# --- a bounced subscriber gets no later digest ---------------------------------------------------


NOW_SENDING = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
REPORT = [  # a permanent bounce, a complaint and a soft bounce, as the generic webhook takes them
    {"email": "bounces@example.se", "type": "bounce", "permanent": True, "reason": "550 5.1.1 gone"},
    {"email": "complains@example.se", "type": "complaint"},
    {"email": "soft@example.se", "type": "bounce", "permanent": False},
]


def _four_readers_and_an_article(make_app, smtp_server):
    app = make_app(MAIL_URL=smtp_server.url, BOUNCE_WEBHOOK_SECRET=SECRET)
    with app.app_context():
        ensure_topics()
        people("stays@example.se", "bounces@example.se", "complains@example.se", "soft@example.se")
        articles.add_article(title="Nytt bibliotek öppnar", url="https://norrsken.example/bibliotek",
                             topic_slug="nyheter", published=NOW_SENDING - timedelta(days=1), now=NOW_SENDING)
    return app


def test_bounced_and_complained_subscribers_get_no_later_digest(make_app, smtp_server):
    app = _four_readers_and_an_article(make_app, smtp_server)
    now = NOW_SENDING
    assert app.test_client().post(f"/hooks/bounces/{SECRET}", json=REPORT).status_code == 200
    with app.app_context():
        digest = digests.compile_digest(now)
        assert digest is not None
        counts = delivery.send_digest(digest.id)
        assert counts["sent"] == 2
    received = sorted(rcpt for _, rcpts, _ in smtp_server.handler.messages for rcpt in rcpts)
    assert received == ["soft@example.se", "stays@example.se"]


def test_a_bounce_reported_after_a_send_counts_in_that_send(make_app, smtp_server):
    """The webhook's permanent bounce turns the subscriber's latest delivery from sent into
    bounced (the send's figures); a soft bounce, a complaint or a repeat changes no delivery."""
    app = _four_readers_and_an_article(make_app, smtp_server)
    with app.app_context():
        digest_id = digests.compile_digest(NOW_SENDING).id
        assert delivery.send_digest(digest_id)["sent"] == 4
    for _ in range(2):  # providers retry: the same report again changes nothing
        assert app.test_client().post(f"/hooks/bounces/{SECRET}", json=REPORT).status_code == 200
        with app.app_context():
            progress = delivery.send_progress(digest_id)
            assert (progress["sent"], progress["bounced"]) == (3, 1)
            rows = db.session.execute(select(Subscriber.email, Delivery.state, Delivery.last_reply).join(
                Delivery, Delivery.subscriber_id == Subscriber.id)).all()
            assert {(email, state) for email, state, _ in rows if state != "sent"} == {
                ("bounces@example.se", "bounced")}
            assert [reply for email, _, reply in rows if email == "bounces@example.se"] == ["550 5.1.1 gone"]
