"""The JSON API (/api/v1): bearer tokens and roles, every endpoint's happy path and errors,
no enumeration on signup, pagination, audit rows, and the admin page for tokens."""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import datetime
from pathlib import Path

import pytest
from api_helpers import (
    API,
    Api,
    add_subscriber,
    audit_actions,
    auth,
    csrf_token,
    log_in,
    make_token,
    recent,
    wait_for_status,
)
from sqlalchemy import select

from newsletter import delivery, subscriptions
from newsletter.extensions import db
from newsletter.mail import outbox as mail_queue
from newsletter.models import ApiToken, Article, AuditEvent, ConsentEvent, QueuedEmail, Subscriber

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture
def token(app):
    return make_token(app, "admin", "website")


@pytest.fixture
def api(client, token):
    return Api(client, token)


@pytest.fixture
def editor_api(app, client):
    return Api(client, make_token(app, "editor", "editor tool"))


def error_of(response) -> dict:
    assert response.is_json, response.get_data(as_text=True)[:300]
    return response.get_json()["error"]


# --- authentication and roles -------------------------------------------------------------


def test_missing_token_is_401_with_a_bearer_challenge(client):
    response = client.get(f"{API}/subscribers")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="newsletter-api"')
    assert error_of(response)["code"] == "unauthorized"


WRONG_AUTHORIZATIONS = ["Bearer nlt_not-a-real-token", "Bearer ", "Basic dXNlcjpwYXNz", "nlt_abc",
                        "Bearer x" * 100]


def test_wrong_token_is_401_invalid_token(client, token):
    for header in WRONG_AUTHORIZATIONS:
        response = client.get(f"{API}/subscribers", headers={"Authorization": header})
        assert response.status_code == 401, header
        assert "WWW-Authenticate" in response.headers
        assert error_of(response)["code"] == "invalid_token"


def test_revoked_token_is_refused(app, client, token, api):
    assert api.get("/subscribers").status_code == 200
    from newsletter.admins import api_tokens

    with app.app_context():
        row = db.session.execute(select(ApiToken)).scalar_one()
        api_tokens.revoke_token(row.id)
    response = api.get("/subscribers")
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_token_is_stored_hashed_and_last_use_recorded(app, token, api):
    with app.app_context():
        row = db.session.execute(select(ApiToken)).scalar_one()
        assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
        assert token not in json.dumps([row.name, row.token_hash, row.role])
        assert row.last_used_at is None
    assert api.get("/articles").status_code == 200
    with app.app_context():
        assert db.session.execute(select(ApiToken)).scalar_one().last_used_at is not None


def test_editor_cannot_erase_or_export_but_admin_can(app, api, editor_api):
    with app.app_context():
        uid = add_subscriber("anna@example.com").uid
    response = editor_api.delete(f"/subscribers/{uid}")
    assert response.status_code == 403
    assert error_of(response)["code"] == "forbidden"
    assert editor_api.get("/subscribers/export").status_code == 403
    assert editor_api.get(f"/subscribers/{uid}").status_code == 200  # reading is fine
    export = api.get("/subscribers/export")
    assert export.status_code == 200 and export.mimetype == "text/csv"
    assert "anna@example.com" in export.get_data(as_text=True)
    assert api.delete(f"/subscribers/{uid}").status_code == 204


def test_no_csrf_token_needed_and_a_cookie_alone_gets_nothing(app, client, api):
    assert app.config.get("WTF_CSRF_ENABLED", True)  # CSRF is on for the rest of the app
    assert api.post("/subscribers", json={"email": "x@example.com"}).status_code == 202
    client.set_cookie("session", "forged")
    assert client.post(f"{API}/subscribers", json={"email": "y@example.com"}).status_code == 401


def test_rate_limited_per_token_with_a_json_429(make_app):
    app = make_app(API_RATE_LIMIT="3 per minute")
    client = app.test_client()
    api = Api(client, make_token(app))
    statuses = [api.get("/digests").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    response = api.get("/digests")
    assert error_of(response)["code"] == "rate_limited"
    assert "Retry-After" in response.headers
    other = Api(client, make_token(app, name="other"))  # another token has its own budget
    assert other.get("/digests").status_code == 200


# --- errors --------------------------------------------------------------------------------


def test_unknown_paths_and_methods_answer_json(client, api):
    response = api.get("/no-such-thing")
    assert response.status_code == 404 and error_of(response)["code"] == "not_found"
    assert error_of(client.get("/api/v2/whatever"))["code"] == "not_found"
    response = api.put("/subscribers")
    assert response.status_code == 405 and error_of(response)["code"] == "method_not_allowed"
    assert "POST" in response.headers["Allow"]
    # outside /api/ the pages keep their HTML errors
    page = client.get("/no-such-page")
    assert page.status_code == 404 and not page.is_json


def test_an_unexpected_error_is_a_json_500_without_details(app, api):
    app.config["PROPAGATE_EXCEPTIONS"] = False  # as in production: the error handler answers

    def broken():
        raise RuntimeError("secret internals")

    app.view_functions["api.list_digests"] = broken
    response = api.get("/digests")
    assert response.status_code == 500
    assert error_of(response) == {"code": "internal_error", "message": "Something went wrong on our side."}


BAD_SIGNUPS = [
    ({"data": "{", "content_type": "application/json"}, 400, "invalid_json", None),
    ({"data": "[1, 2]", "content_type": "application/json"}, 400, "invalid_json", None),
    ({"data": "", "content_type": "application/json"}, 400, "invalid_json", None),
    ({"data": '{"email": NaN}', "content_type": "application/json"}, 400, "invalid_json", None),
    ({"data": b'{"email": "\xff"}', "content_type": "application/json"}, 400, "invalid_json", None),
    ({"data": "email=a@example.com", "content_type": "application/x-www-form-urlencoded"}, 415,
     "unsupported_media_type", None),
    ({"json": {}}, 422, "invalid_input", "email"),
    ({"json": {"email": "a@example.com", "admin": True}}, 422, "invalid_input", "admin"),
    ({"json": {"email": 42}}, 422, "invalid_input", "email"),
    ({"json": {"email": "not an address"}}, 422, "invalid_input", "email"),
    ({"json": {"email": "a@example.com", "topics": ["nope"]}}, 422, "invalid_input", "topics[0]"),
    ({"json": {"email": "a@example.com", "topics": "nyheter"}}, 422, "invalid_input", "topics"),
    ({"json": {"email": "a@example.com", "language": "de"}}, 422, "invalid_input", "language"),
    ({"json": {"email": "a@example.com", "name": "Eve\r\nBcc: x@example.com"}}, 422, "invalid_input",
     "name"),
    ({"json": {"email": "a@example.com\n"}}, 422, "invalid_input", "email"),
]


def test_bad_signup_bodies_are_4xx_with_a_json_error(app, api):
    for kwargs, status, code, field in BAD_SIGNUPS:
        response = api.post("/subscribers", **kwargs)
        assert response.status_code == status, kwargs
        error = error_of(response)
        assert error["code"] == code and error["message"]
        assert error.get("field") == field, kwargs
    with app.app_context():
        assert db.session.execute(select(Subscriber)).first() is None


def test_a_body_over_the_limit_is_413(make_app):
    app = make_app(API_MAX_BODY_BYTES=1000)
    api = Api(app.test_client(), make_token(app))
    response = api.post("/articles", json={"title": "x", "url": "https://example.com/",
                                           "body_html": "<p>" + "x" * 2000})
    assert response.status_code == 413 and error_of(response)["code"] == "payload_too_large"


# --- subscribers -------------------------------------------------------------------------------


def test_create_is_pending_with_one_confirmation_email(smtp_app, smtp_server):
    api = Api(smtp_app.test_client(), make_token(smtp_app))
    response = api.post("/subscribers", json={"email": "Ny.Person@Example.COM", "name": "Ny Person",
                                              "language": "en", "topics": ["blogg"]})
    assert response.status_code == 202
    assert response.get_json()["status"] == "accepted"
    with smtp_app.app_context():
        person = db.session.execute(select(Subscriber)).scalar_one()
        assert (person.email, person.status, person.language) == ("ny.person@example.com", "pending", "en")
        assert [t.slug for t in person.topics] == ["blogg"]
        event = db.session.execute(select(ConsentEvent)).scalar_one()
        assert (event.kind, event.source) == ("signup", "api")
        assert mail_queue.flush() == 1
    [message] = smtp_server.messages("ny.person@example.com")
    body = message.get_body(preferencelist=("plain",)).get_content()
    assert body.count("/confirm/") == 1


def test_create_answers_the_same_whatever_the_state(app, api):
    with app.app_context():
        add_subscriber("confirmed@example.com")
        add_subscriber("pending@example.com", status="pending")
    answers = {
        email: api.post("/subscribers", json={"email": email})
        for email in ("new@example.com", "confirmed@example.com", "pending@example.com")
    }
    assert {(r.status_code, r.get_data()) for r in answers.values()} == {
        (answers["new@example.com"].status_code, answers["new@example.com"].get_data())}
    with app.app_context():
        queued = set(db.session.execute(select(QueuedEmail.to_addr)).scalars())
        # the confirmed person is left alone; the others are asked to confirm
        assert queued == {"new@example.com", "pending@example.com"}
        statuses = dict(db.session.execute(select(Subscriber.email, Subscriber.status)).all())
        assert statuses["confirmed@example.com"] == "confirmed"


def test_create_refuses_and_reports_a_suppressed_address(app, api):
    """Someone other than the person cannot bring back an address that opted out or was erased."""
    with app.app_context():
        add_subscriber("gone@example.com", status="unsubscribed")
        erased = add_subscriber("erased@example.com")
        subscriptions.erase_subscriber(erased, source="admin")
    for email, reason in (("gone@example.com", "unsubscribed"), ("Erased@Example.com", "erased")):
        response = api.post("/subscribers", json={"email": email})
        assert response.status_code == 409
        assert response.get_json()["error"]["code"] == "suppressed"
        assert reason in response.get_json()["error"]["message"]
    with app.app_context():
        assert db.session.execute(select(QueuedEmail.to_addr)).first() is None
        statuses = dict(db.session.execute(select(Subscriber.email, Subscriber.status)).all())
        assert statuses == {"gone@example.com": "unsubscribed"}


def test_list_paginates_with_a_cursor_and_filters(app, api):
    with app.app_context():
        for n in range(5):
            add_subscriber(f"p{n}@example.com", language="en" if n % 2 else "sv",
                           topics=("blogg",) if n < 2 else ("nyheter",) if n == 4 else ())
        add_subscriber("pend@example.com", status="pending")
    seen, cursor, pages = [], None, 0
    while True:
        query = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        response = api.get("/subscribers", query_string=query)
        assert response.status_code == 200
        body = response.get_json()
        seen += [s["email"] for s in body["data"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and len(seen) == len(set(seen)) == 6
    assert seen[:5] == [f"p{n}@example.com" for n in range(5)]

    def emails(**query):
        return [s["email"] for s in api.get("/subscribers", query_string=query).get_json()["data"]]

    assert emails(status="pending") == ["pend@example.com"]
    assert emails(language="en") == ["p1@example.com", "p3@example.com"]
    # Who receives the topic: those who chose it and those who chose none (all topics).
    assert emails(topic="blogg") == ["p0@example.com", "p1@example.com", "p2@example.com", "p3@example.com",
                                     "pend@example.com"]
    assert emails(topic="blogg", language="en") == ["p1@example.com", "p3@example.com"]
    assert emails(topic="nyheter", status="confirmed") == ["p2@example.com", "p3@example.com",
                                                           "p4@example.com"]


BAD_QUERIES = [
    ({"limit": 0}, "limit"), ({"limit": 1000}, "limit"), ({"limit": "ten"}, "limit"),
    ({"cursor": "abc"}, "cursor"), ({"cursor": "9" * 30}, "cursor"), ({"status": "happy"}, "status"),
    ({"topic": "sport"}, "topic"), ({"language": "fi"}, "language"),
]


def test_list_rejects_bad_query_parameters(api):
    for query, field in BAD_QUERIES:
        response = api.get("/subscribers", query_string=query)
        assert response.status_code == 400, query
        assert error_of(response)["field"] == field


def test_get_one_by_uid(app, api):
    with app.app_context():
        uid = add_subscriber("anna@example.com", topics=("nyheter",)).uid
    body = api.get(f"/subscribers/{uid}").get_json()
    assert body["email"] == "anna@example.com" and body["topics"] == ["nyheter"]
    assert body["follows_all_topics"] is False
    for missing in ("0" * 24, "not-a-uid", "%00"):
        response = api.get(f"/subscribers/{missing}")
        assert response.status_code == 404 and error_of(response)["code"] == "not_found"


def test_patch_changes_only_what_is_given(app, api):
    with app.app_context():
        uid = add_subscriber("anna@example.com", topics=("nyheter",)).uid
    body = api.patch(f"/subscribers/{uid}", json={"language": "en"}).get_json()
    assert (body["language"], body["topics"]) == ("en", ["nyheter"])
    body = api.patch(f"/subscribers/{uid}", json={"topics": ["blogg", "nyheter"]}).get_json()
    assert (body["language"], body["topics"]) == ("en", ["blogg", "nyheter"])
    body = api.patch(f"/subscribers/{uid}", json={"topics": []}).get_json()
    assert body["follows_all_topics"] is True
    with app.app_context():
        events = db.session.execute(select(ConsentEvent.kind, ConsentEvent.source)).all()
        assert events.count(("preferences", "api")) == 3
    assert api.patch(f"/subscribers/{uid}", json={}).status_code == 422
    assert error_of(api.patch(f"/subscribers/{uid}", json={"email": "x@example.com"}))["field"] == "email"
    assert api.patch(f"/subscribers/{uid}", json={"language": None}).status_code == 422
    assert api.patch("/subscribers/" + "a" * 24, json={"language": "en"}).status_code == 404


def test_delete_erases_the_person(app, api):
    with app.app_context():
        uid = add_subscriber("anna@example.com").uid
    assert api.delete(f"/subscribers/{uid}").status_code == 204
    assert api.get(f"/subscribers/{uid}").status_code == 404
    assert api.delete(f"/subscribers/{uid}").status_code == 404
    with app.app_context():
        assert db.session.execute(select(Subscriber)).first() is None
        kinds = list(db.session.execute(select(ConsentEvent.kind, ConsentEvent.subscriber_id)).all())
        assert kinds == [("erase", None)]


# --- articles ------------------------------------------------------------------------------------


def test_push_creates_then_updates_by_url_sanitised(app, api):
    response = api.post("/articles", json={
        "title": "<b>Nytt</b> bibliotek <script>alert(1)</script>",
        "url": "https://example.org/nytt-bibliotek",
        "summary": "<p>Öppnar i vår</p>",
        "body_html": '<p onclick="x()">Text <a href="javascript:alert(1)">länk</a></p><script>bad()</script>',
        "image_url": "javascript:alert(1)",
        "topic": "nyheter",
        "published_at": recent(),
    })
    assert response.status_code == 201
    article = response.get_json()
    assert article["title"] == "Nytt bibliotek"
    assert article["summary"] == "Öppnar i vår"
    assert "script" not in article["body_html"] and "onclick" not in article["body_html"]
    assert "javascript" not in article["body_html"] and article["image_url"] == ""
    assert response.headers["Location"].endswith(f"/api/v1/articles/{article['id']}")
    again = api.post("/articles", json={"title": "Nytt bibliotek (uppdaterad)",
                                        "url": "https://example.org/nytt-bibliotek"})
    assert again.status_code == 200
    assert again.get_json()["id"] == article["id"]
    assert again.get_json()["title"] == "Nytt bibliotek (uppdaterad)"
    with app.app_context():
        assert len(db.session.execute(select(Article)).all()) == 1


def test_push_upserts_by_source_id_and_matches_feed_articles_by_url(app, api):
    first = api.post("/articles", json={"source_id": "wp-post-17", "title": "A",
                                        "url": "https://example.org/?p=17"}).get_json()
    moved = api.post("/articles", json={"source_id": "wp-post-17", "title": "A",
                                        "url": "https://example.org/a-permalink"})
    assert moved.status_code == 200 and moved.get_json()["id"] == first["id"]
    assert moved.get_json()["url"] == "https://example.org/a-permalink"
    with app.app_context():
        db.session.add(Article(source_id="tag:feed,2026:99", title="From the feed",
                               url="https://example.org/from-feed",
                               published_at=datetime.fromisoformat(recent())))
        db.session.commit()
    matched = api.post("/articles", json={"title": "From the website", "url": "https://example.org/from-feed"})
    assert matched.status_code == 200 and matched.get_json()["source_id"] == "tag:feed,2026:99"


BAD_ARTICLES = [
    ({"title": "x"}, "url"),
    ({"url": "https://example.org/"}, "title"),
    ({"title": "x", "url": "javascript:alert(1)"}, "url"),
    ({"title": "x", "url": "https://example.org/", "topic": "sport"}, "topic"),
    ({"title": "x", "url": "https://example.org/", "published_at": "yesterday"}, "published_at"),
    ({"title": "x", "url": "https://example.org/", "published_at": "2026-11-20T10:00:00"}, "published_at"),
    ({"title": "x", "url": "https://example.org/", "published_at": "0001-01-01T00:00:00+01:00"},
     "published_at"),
    ({"title": "x", "url": "https://example.org/", "published_at": "2026-02-30T10:00:00Z"}, "published_at"),
    ({"title": "x", "url": "https://example.org/", "hidden": "yes"}, "hidden"),
    ({"title": "x", "url": "https://example.org/", "id": 3}, "id"),
]


def test_push_rejects_bad_articles(app, api):
    for body, field in BAD_ARTICLES:
        response = api.post("/articles", json=body)
        assert response.status_code == 422, body
        assert error_of(response)["field"] == field, body
    response = api.post("/articles", json={"title": "<img src=x>", "url": "https://example.org/"})
    assert response.status_code == 422 and "title" in error_of(response)["message"]
    with app.app_context():
        assert db.session.execute(select(Article)).first() is None


def test_patch_and_list_articles(app, api):
    ids = [api.post("/articles", json={"title": f"T{n}", "url": f"https://example.org/{n}",
                                       "published_at": recent()}).get_json()["id"] for n in range(3)]
    body = api.patch(f"/articles/{ids[0]}", json={"hidden": True, "title": "<i>Ny</i> titel"}).get_json()
    assert body["hidden"] is True and body["title"] == "Ny titel"
    assert api.patch(f"/articles/{ids[0]}", json={}).status_code == 422
    assert api.patch("/articles/999999", json={"hidden": True}).status_code == 404
    assert api.get(f"/articles/{ids[1]}").get_json()["title"] == "T1"
    first = api.get("/articles", query_string={"limit": 2}).get_json()
    assert [a["id"] for a in first["data"]] == [ids[2], ids[1]]
    rest = api.get("/articles", query_string={"limit": 2, "cursor": first["next_cursor"]}).get_json()
    assert [a["id"] for a in rest["data"]] == [ids[0]] and rest["next_cursor"] is None
    # a cursor past the 32-bit ids (PostgreSQL would refuse to compare it) is simply past every row
    assert len(api.get("/articles", query_string={"cursor": "3000000000"}).get_json()["data"]) == 3
    assert api.get("/subscribers", query_string={"cursor": "3000000000"}).get_json()["data"] == []


# --- digests ------------------------------------------------------------------------------------------


def push_articles(api, count: int = 2, prefix: str = "a") -> None:
    for n in range(count):
        assert api.post("/articles", json={"title": f"Artikel {n}", "url": f"https://example.org/{prefix}{n}",
                                           "topic": "nyheter", "published_at": recent()}).status_code == 201


def test_preview_is_204_without_news_and_renders_both_languages(api):
    assert api.get("/digests/preview").status_code == 204
    push_articles(api)
    sv = api.get("/digests/preview?lang=sv").get_json()
    en = api.get("/digests/preview?lang=en").get_json()
    assert sv["article_count"] == en["article_count"] == 2
    assert "Artikel 0" in sv["html"] and "Artikel 1" in sv["text"]
    assert sv["language"] == "sv" and en["language"] == "en" and sv["subject"] != en["subject"]
    assert "/unsubscribe/" not in sv["html"]  # no personal links in a preview
    assert api.get("/digests/preview?lang=fi").status_code == 400
    assert api.get("/digests").get_json()["data"] == []  # a preview consumes nothing


def test_trigger_sends_and_progress_reaches_done(smtp_app, smtp_server):
    client = smtp_app.test_client()
    api = Api(client, make_token(smtp_app, "editor"))
    assert api.post("/digests").status_code == 204  # nothing new
    with smtp_app.app_context():
        for n in range(12):
            add_subscriber(f"r{n}@example.com")
    push_articles(api)
    response = api.post("/digests", json={"intro": "Hej alla!"})
    assert response.status_code == 202
    digest = response.get_json()
    assert digest["recipient_count"] == 12 and digest["article_count"] == 2 and digest["intro"] == "Hej alla!"
    assert response.headers["Location"].endswith(f"/api/v1/digests/{digest['id']}")
    done = wait_for_status(api, digest["id"], ("done",))
    delivery.wait_for_sends(10)
    assert done["status"] == "done"
    assert done["progress"]["sent"] == done["progress"]["total"] == 12
    assert len(smtp_server.messages()) == 12
    listed = api.get("/digests").get_json()["data"]
    assert [d["id"] for d in listed] == [digest["id"]]
    assert api.post("/digests").status_code == 204  # those articles are sent now
    with smtp_app.app_context():
        assert "api.digest.send" in audit_actions()


def _sending_digest(app, api, recipients: int = 3) -> int:
    """A compiled digest whose send has started (recipients pinned) but that no worker runs."""
    from newsletter import digests

    with app.app_context():
        for n in range(recipients):
            add_subscriber(f"s{n}@example.com")
    push_articles(api)
    with app.app_context():
        digest = digests.compile_digest()
        delivery.start_send(digest.id)
        return digest.id


def test_trigger_is_409_while_a_send_is_running(app, api):
    digest_id = _sending_digest(app, api)
    push_articles(api, 1, prefix="later")
    response = api.post("/digests")
    assert response.status_code == 409
    assert error_of(response)["code"] == "send_running" and str(digest_id) in error_of(response)["message"]


def test_pause_resume_cancel(app, api):
    digest_id = _sending_digest(app, api)
    paused = api.post(f"/digests/{digest_id}/pause")
    assert paused.status_code == 200 and paused.get_json()["status"] == "paused"
    assert paused.get_json()["progress"]["queued"] == 3
    again = api.post(f"/digests/{digest_id}/pause")
    assert again.status_code == 409 and error_of(again)["code"] == "invalid_state"
    resumed = api.post(f"/digests/{digest_id}/resume")
    assert resumed.status_code == 200
    done = wait_for_status(api, digest_id, ("done",))
    delivery.wait_for_sends(10)
    assert done["progress"]["sent"] == 3
    assert api.post(f"/digests/{digest_id}/cancel").status_code == 409
    assert api.post("/digests/12345/cancel").status_code == 404
    assert api.post(f"/digests/{digest_id}/explode").status_code == 404
    assert api.get("/digests/12345").status_code == 404
    with app.app_context():
        assert {"api.digest.pause", "api.digest.resume"} <= set(audit_actions())


def test_cancel_a_paused_send(app, api):
    digest_id = _sending_digest(app, api)
    api.post(f"/digests/{digest_id}/pause")
    body = api.post(f"/digests/{digest_id}/cancel").get_json()
    assert body["status"] == "cancelled" and body["finished_at"]


# --- audit ---------------------------------------------------------------------------------------------


def test_mutating_calls_are_audited_with_the_token_as_actor(app, api):
    api.post("/subscribers", json={"email": "anna@example.com"})
    api.get("/subscribers")  # reading is not audited
    uid = api.get("/subscribers").get_json()["data"][0]["uid"]
    api.patch(f"/subscribers/{uid}", json={"language": "en"})
    api.post("/articles", json={"title": "A", "url": "https://example.org/a"})
    api.delete(f"/subscribers/{uid}")
    with app.app_context():
        events = db.session.execute(select(AuditEvent).order_by(AuditEvent.id)).scalars().all()
        assert [e.action for e in events] == ["api.subscriber.signup", "api.subscriber.preferences",
                                              "api.article.create", "api.subscriber.erase"]
        assert {e.actor for e in events} == {"api:website"}
        assert "anna@example.com" not in json.dumps([[e.target, e.detail] for e in events])


# --- the admin page for tokens ---------------------------------------------------------------------------


def test_admin_creates_a_token_sees_it_once_and_revokes_it(app, client):
    log_in(app, client, "boss@example.com", "admin")
    page = client.get("/admin/api-tokens")
    assert page.status_code == 200
    created = client.post("/admin/api-tokens", data={
        "csrf_token": csrf_token(page.get_data(as_text=True)), "name": "Webbplatsen <b>WP</b>",
        "role": "editor"})
    html = created.get_data(as_text=True)
    assert created.status_code == 200
    import re

    [plaintext] = re.findall(r'value="(nlt_[A-Za-z0-9_\-]+)"', html)
    assert "Webbplatsen &lt;b&gt;WP&lt;/b&gt;" in html  # escaped
    api = Api(client, plaintext)
    assert api.get("/subscribers").status_code == 200
    assert api.get("/subscribers/export").status_code == 403  # an editor token
    listing = client.get("/admin/api-tokens").get_data(as_text=True)
    assert plaintext not in listing  # shown once only
    with app.app_context():
        row = db.session.execute(select(ApiToken)).scalar_one()
        assert row.role == "editor" and row.created_by_id is not None
        token_id = row.id
    revoked = client.post(f"/admin/api-tokens/{token_id}/revoke",
                          data={"csrf_token": csrf_token(listing)})
    assert revoked.status_code == 302
    assert api.get("/subscribers").status_code == 401
    with app.app_context():
        actions = audit_actions()
        assert "api_token_created" in actions and "api_token_revoked" in actions


def test_a_forged_post_creates_no_token(app, client):
    log_in(app, client, "boss@example.com", "admin")
    response = client.post("/admin/api-tokens", data={"name": "evil", "role": "admin"})
    assert response.status_code == 400
    with app.app_context():
        assert db.session.execute(select(ApiToken)).first() is None


def test_editors_and_strangers_cannot_reach_the_token_page(app, client, token):
    assert client.get("/admin/api-tokens").status_code == 302  # to the login page
    log_in(app, client, "editor@example.com", "editor")
    assert client.get("/admin/api-tokens").status_code == 403
    page = client.get("/admin/account").get_data(as_text=True)
    response = client.post("/admin/api-tokens", data={"csrf_token": csrf_token(page), "name": "x",
                                                      "role": "admin"})
    assert response.status_code == 403
    with app.app_context():
        token_id = db.session.execute(select(ApiToken.id)).scalar_one()  # only the fixture's token
    revoke = client.post(f"/admin/api-tokens/{token_id}/revoke", data={"csrf_token": csrf_token(page)})
    assert revoke.status_code == 403
    assert Api(client, token).get("/digests").status_code == 200  # still works


# --- the token page in real Chromium, and the token over real HTTP --------------------------------------


def _http_status(url: str, token: str) -> int:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers=auth(token))
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="no /usr/bin/chromium (see .ci/run)")
def test_token_page_in_chromium_and_the_token_over_http(app):
    from playwright.sync_api import expect, sync_playwright
    from werkzeug.serving import make_server

    with app.app_context():
        if db.engine.dialect.name != "sqlite":
            pytest.skip("the browser run covers the page; the database is covered above")
        from newsletter.admins import accounts

        accounts.create_admin("boss@example.org", "a long test password", role="admin")
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True)
            try:
                page = browser.new_page(locale="sv-SE")
                page.goto(f"{base}/admin/login?next=/admin/api-tokens")
                page.get_by_label("E-postadress").fill("boss@example.org")
                page.get_by_label("Lösenord").fill("a long test password")
                page.get_by_role("button", name="Logga in").click()
                expect(page.get_by_role("heading", name="API-nycklar")).to_be_visible()
                page.get_by_label("Namn (vad nyckeln används till, t.ex. webbplatsen)").fill("Webbplatsen")
                page.get_by_label("Redaktör", exact=False).check()
                page.get_by_role("button", name="Skapa nyckel").click()
                token = page.get_by_label("Nyckel", exact=True).input_value()
                assert token.startswith("nlt_")
                page.screenshot(path=str(ARTIFACTS / "admin-api-tokens-created.png"), full_page=True)
                assert _http_status(f"{base}/api/v1/subscribers", token) == 200
                assert _http_status(f"{base}/api/v1/subscribers/export", token) == 403  # editor

                page.goto(f"{base}/admin/api-tokens?lang=en")
                expect(page.get_by_role("cell", name="Webbplatsen", exact=True)).to_be_visible()
                assert token not in page.content()
                # Revoking asks first: "no" changes nothing, "yes" revokes.
                asked: list[str] = []
                page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
                page.get_by_role("button", name="Revoke the token “Webbplatsen”").click()
                assert asked and "Webbplatsen" in asked[0]
                assert _http_status(f"{base}/api/v1/subscribers", token) == 200
                page.once("dialog", lambda dialog: dialog.accept())
                page.get_by_role("button", name="Revoke the token “Webbplatsen”").click()
                expect(page.get_by_text("revoked", exact=True).first).to_be_visible()
                page.screenshot(path=str(ARTIFACTS / "admin-api-tokens.png"), full_page=True)
                assert _http_status(f"{base}/api/v1/subscribers", token) == 401

                phone = browser.new_page(viewport={"width": 375, "height": 740}, locale="en-GB")
                phone.context.add_cookies(page.context.cookies())
                phone.goto(f"{base}/admin/api-tokens")
                phone.screenshot(path=str(ARTIFACTS / "admin-api-tokens-phone.png"), full_page=True)
            finally:
                browser.close()
    finally:
        server.shutdown()
        server.server_close()


def test_a_draft_with_an_intro_is_previewed_and_sent(app, api):
    from newsletter import digests

    with app.app_context():
        add_subscriber("anna@example.com")
    push_articles(api)
    with app.app_context():
        draft = digests.set_intro("Välkommen till veckans brev!")  # the admin's digest page does this
        draft_id = draft.id
    preview = api.get("/digests/preview?lang=sv").get_json()
    assert "Välkommen till veckans brev!" in preview["text"] and preview["article_count"] == 2
    response = api.post("/digests")
    assert response.status_code == 202
    assert response.get_json()["id"] == draft_id  # the draft is sent, not a second digest
    done = wait_for_status(api, draft_id, ("done",))
    delivery.wait_for_sends(10)
    assert done["progress"]["sent"] == 1
    assert api.get("/digests").get_json()["data"][0]["id"] == draft_id
