"""Bounded input: body sizes (413 without reading the body), JSON nesting (400), ids out of
range (404), tokens of an odd shape (400 like a tampered one), over-long CSV lines. Never a 500."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from admin_helpers import logged_in, post_form
from api_helpers import API, auth, make_token
from sqlalchemy import func, select
from werkzeug.serving import make_server

from newsletter.extensions import db
from newsletter.models import Subscriber
from newsletter.subscriptions import tokens

SECRET = "hook-secret-for-tests"


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def _deep_object(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def _count(app) -> int:
    with app.app_context():
        return db.session.execute(select(func.count()).select_from(Subscriber)).scalar_one()


def test_a_100_mb_post_is_refused_with_413_before_it_is_read(make_app):
    app = make_app(BOUNCE_WEBHOOK_SECRET=SECRET)
    token = make_token(app)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        for path, kind in (("/subscribe", "application/json"),
                           ("/subscribe", "application/x-www-form-urlencoded"),
                           ("/api/v1/subscribers", "application/json"),
                           (f"/hooks/bounces/{SECRET}", "application/json")):
            with socket.create_connection(("127.0.0.1", server.server_port), timeout=10) as conn:
                started = time.monotonic()
                conn.sendall(f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {kind}\r\n"
                             f"Accept: application/json\r\nAuthorization: Bearer {token}\r\n"
                             f"Content-Length: {100 * 1024 * 1024}\r\n\r\n"
                             .encode() + b"{" * 4096)
                answer = conn.recv(65536).decode("latin-1")
                assert answer.startswith("HTTP/1.1 413"), (path, answer[:300])
                assert time.monotonic() - started < 5  # answered without waiting for 100 MB
    finally:
        server.shutdown()
    assert _count(app) == 0


def test_public_json_over_the_limit_is_a_json_413(app, client):
    response = client.post("/subscribe", data=b'{"email": "' + b"a" * 70_000 + b'@example.se"}',
                           content_type="application/json", headers={"Accept": "application/json"})
    assert response.status_code == 413
    assert response.get_json()["ok"] is False and response.get_json()["error"] == "too_large"


@pytest.mark.parametrize("body", [_deep(50), _deep(5000), _deep(30_000), _deep_object(3000)])
def test_deeply_nested_json_is_a_400_everywhere(make_app, body):
    app = make_app(BOUNCE_WEBHOOK_SECRET=SECRET)
    client = app.test_client()
    signup = client.post("/subscribe", data=body, content_type="application/json",
                         headers={"Accept": "application/json"})
    assert signup.status_code == 400 and signup.get_json()["ok"] is False
    for path in (f"/hooks/bounces/{SECRET}", f"/hooks/ses/{SECRET}"):
        hook = client.post(path, data=body, content_type="application/json")
        assert hook.status_code == 400, (path, hook.get_data(as_text=True)[:200])
    token = make_token(app)
    api = client.post(f"{API}/subscribers", data=body, content_type="application/json", headers=auth(token))
    assert api.status_code == 400 and api.get_json()["error"]["code"] == "invalid_json"
    assert _count(app) == 0


def test_sns_message_nested_too_deeply_is_a_400(make_app):
    import json

    app = make_app(BOUNCE_WEBHOOK_SECRET=SECRET)
    envelope = {"Type": "Notification", "Message": _deep(100_000), "MessageId": "m", "TopicArn": "t"}
    response = app.test_client().post(f"/hooks/ses/{SECRET}", data=json.dumps(envelope),
                                      content_type="text/plain")
    assert response.status_code in (400, 403), response.get_data(as_text=True)[:300]


@pytest.mark.parametrize("path", [
    "/archive/2147483648", "/archive/99999999999999999999", "/admin/articles/2147483648",
    "/admin/sends/9223372036854775808", "/admin/sends/2147483648/progress.json",
])
def test_ids_out_of_range_are_404(app, path):
    client = logged_in(app, "admin")
    assert client.get(path).status_code == 404


@pytest.mark.parametrize("path", [
    "/admin/articles/2147483648/hide", "/admin/articles/2147483648/unhide", "/admin/feeds/2147483648/fetch",
    "/admin/sends/2147483648/pause", "/admin/sends/2147483648/resume", "/admin/sends/2147483648/cancel",
    "/admin/api-tokens/2147483648/revoke",
])
def test_posts_to_ids_out_of_range_are_404(app, path):
    client = logged_in(app, "admin")
    assert post_form(client, path).status_code == 404


@pytest.mark.parametrize(("purpose", "payload"), [
    ("confirm", {"uid": "x"}), ("confirm", ["abc", "1"]), ("confirm", ["abc", 10**30]),
    ("confirm", [["abc"], 1]), ("confirm", ["abc", 1.5]), ("confirm", ["abc", True]),
    ("confirm", ["a" * 500, 1]), ("confirm", "abc"), ("confirm", None),
    ("unsubscribe", 5), ("unsubscribe", ["abc"]), ("unsubscribe", "a" * 500), ("unsubscribe", ""),
    ("preferences", {"uid": "abc"}), ("preferences", 10**30),
])
def test_a_signed_token_of_an_odd_shape_is_the_same_400_as_a_tampered_one(app, client, purpose, payload):
    with app.test_request_context():
        token = tokens.make_token(purpose, payload)
    page = {"confirm": "/confirm/", "unsubscribe": "/unsubscribe/", "preferences": "/preferences/"}[purpose]
    for method in ("get", "post"):
        tampered = getattr(client, method)(page + "x" + token[1:])
        response = getattr(client, method)(page + token)
        if purpose == "unsubscribe" and method == "post":
            assert response.status_code in (200, 400)  # one-click: never a 500
            continue
        assert response.status_code == 400, (method, response.status_code)
        assert response.get_data(as_text=True) == tampered.get_data(as_text=True)


def test_a_csv_with_an_endless_line_is_refused_without_reading_it_whole(app, tmp_path):
    path = tmp_path / "one-line.csv"
    with path.open("wb") as handle:
        handle.write(b"email\n")
        handle.write(b"a" * (20 * 1024 * 1024))  # 20 MB on one line
    result = app.test_cli_runner().invoke(args=["subscribers", "import", str(path)])
    assert result.exit_code != 0
    assert "longer than" in result.output
    assert _count(app) == 0


def test_the_admin_import_has_its_own_body_limit(make_app):
    app = make_app(IMPORT_MAX_BYTES=10_000)
    admin = logged_in(app, "admin")
    import io

    big = io.BytesIO(b"email\n" + b"someone@example.se\n" * 2000)
    response = post_form(admin, "/admin/subscribers/import", {"file": (big, "big.csv")},
                         page="/admin/subscribers/import")
    assert response.status_code == 413
    small = io.BytesIO(b"email\nsomeone@example.se\n")
    response = post_form(admin, "/admin/subscribers/import", {"file": (small, "small.csv")},
                         page="/admin/subscribers/import")
    assert response.status_code == 200
    assert _count(app) == 1
