"""Property-based tests (hypothesis): generated hostile input (control characters, NUL, invalid
UTF-8, huge and deeply nested values, odd Unicode, IDN addresses) thrown at the public routes,
both webhooks and the JSON API: never a 500, no control character stored, nothing stored for a
refused request."""

from __future__ import annotations

import json
import re

import pytest
from api_helpers import API, auth, make_token
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from newsletter.extensions import db
from newsletter.models import Article, ConsentEvent, Subscriber

SECRET = "hook-secret-for-property-tests"
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

hostile_text = st.one_of(
    st.text(max_size=50),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x1F), max_size=10),
    st.text(alphabet=st.characters(categories=["Cf", "Zs", "Mn", "Co", "So"]), max_size=20),
    st.just("a" * 5000),
    st.sampled_from(["\x00", "ä\u202eb", "=cmd|' /C calc'!A0", "<script>alert(1)</script>", "\ud7ff",
                     "Anna\r\nBcc: x@example.se"]),
)
addresses = st.one_of(
    st.emails(),
    st.sampled_from(["anna@bücher.example", "用户@例子.广告", "a+b@example.se", "x@[127.0.0.1]",
                     "a\x00@example.se", "@example.se", "a" * 400 + "@example.se", "a@b", "\u202e@x.se"]),
    hostile_text,
)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                         st.floats(allow_nan=False), hostile_text)
json_values = st.recursive(json_scalars, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(hostile_text, children, max_size=4)), max_leaves=20)


@pytest.fixture
def hostile_app(make_app):
    return make_app(BOUNCE_WEBHOOK_SECRET=SECRET, RATELIMIT_ENABLED=False)


def _stored_text_is_clean(app) -> None:
    with app.app_context():
        for subscriber in db.session.execute(select(Subscriber)).scalars():
            assert not CONTROL.search(subscriber.email + subscriber.name + subscriber.language)
        for article in db.session.execute(select(Article)).scalars():
            assert not CONTROL.search(article.title + article.url + article.summary + article.author)


def _count(app, model) -> int:
    with app.app_context():
        return db.session.execute(select(func.count()).select_from(model)).scalar_one()


@SETTINGS
@given(email=addresses, topics=json_values, language=json_values, name=json_values, extra=json_values)
def test_the_embedded_signup_never_fails(hostile_app, email, topics, language, name, extra):
    client = hostile_app.test_client()
    started = client.get("/subscribe/start").get_json()["started"]
    body = {"email": email, "topics": topics, "language": language, "name": name, "started": started,
            "extra": extra}
    before = _count(hostile_app, Subscriber)
    response = client.post("/subscribe", json=body, headers={"Accept": "application/json"})
    assert response.status_code in (200, 400, 413), response.status_code
    assert response.is_json
    if response.status_code != 200:
        assert _count(hostile_app, Subscriber) == before  # nothing stored for a refused request
    _stored_text_is_clean(hostile_app)


@SETTINGS
@given(fields=st.dictionaries(st.sampled_from(["email", "topics", "language", "name", "website",
                                                "started", "csrf_token"]) | hostile_text,
                              hostile_text, max_size=6))
def test_the_signup_form_never_fails(hostile_app, fields):
    response = hostile_app.test_client().post("/subscribe", data=fields)
    assert response.status_code in (200, 400, 413), response.status_code
    _stored_text_is_clean(hostile_app)


@SETTINGS
@given(raw=st.binary(max_size=300))
def test_raw_bytes_never_fail_anywhere(hostile_app, raw):
    client = hostile_app.test_client()
    token = make_token(hostile_app)
    for path, headers in (("/subscribe", {"Accept": "application/json"}), (f"/hooks/bounces/{SECRET}", {}),
                          (f"/hooks/ses/{SECRET}", {}), (f"{API}/subscribers", auth(token)),
                          (f"{API}/articles", auth(token))):
        for kind in ("application/json", "application/x-www-form-urlencoded", "text/plain"):
            response = client.post(path, data=raw, content_type=kind, headers=headers)
            assert response.status_code < 500, (path, kind, response.status_code)


@SETTINGS
@given(token=hostile_text, action=st.sampled_from(["confirm", "unsubscribe", "preferences"]))
def test_links_with_any_token_never_fail(hostile_app, token, action):
    client = hostile_app.test_client()
    path = f"/{action}/" + token.replace("/", "%2F").replace("?", "%3F").replace("#", "%23")
    for method in ("get", "post"):
        response = getattr(client, method)(path)
        assert response.status_code < 500, (method, path, response.status_code)
    assert client.get(f"/archive/{abs(hash(token))}").status_code in (404, 200)


@SETTINGS
@given(reports=json_values)
def test_the_webhooks_never_fail(hostile_app, reports):
    client = hostile_app.test_client()
    before = _count(hostile_app, ConsentEvent)
    generic = client.post(f"/hooks/bounces/{SECRET}", json=reports)
    assert generic.status_code in (200, 400, 413, 422), generic.status_code
    if generic.status_code != 200:
        assert _count(hostile_app, ConsentEvent) == before
    envelope = {"Type": "Notification", "Message": json.dumps(reports), "MessageId": "m", "TopicArn": "t"}
    ses = client.post(f"/hooks/ses/{SECRET}", data=json.dumps(envelope), content_type="text/plain")
    assert ses.status_code < 500, ses.status_code


@SETTINGS
@given(body=st.dictionaries(st.sampled_from(["email", "name", "language", "topics", "status", "title",
                                              "url", "summary", "source_id", "published", "image_url",
                                              "author", "hidden"]) | hostile_text,
                            json_values, max_size=7))
def test_the_api_never_fails(hostile_app, body):
    client = hostile_app.test_client()
    token = make_token(hostile_app)
    for path in ("/subscribers", "/articles"):
        before = _count(hostile_app, Subscriber) + _count(hostile_app, Article)
        response = client.post(API + path, json=body, headers=auth(token))
        assert response.status_code in (200, 201, 400, 409, 413, 422), (path, response.status_code)
        if response.status_code >= 400:
            assert _count(hostile_app, Subscriber) + _count(hostile_app, Article) == before
    _stored_text_is_clean(hostile_app)
