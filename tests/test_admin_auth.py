"""Admin access: login, logout, sessions, roles, CSRF, first-run setup, the `admin` commands, audit."""

from __future__ import annotations

import re

import pytest
from admin_helpers import (
    PASSWORD,
    audit_actions,
    count,
    csrf_token,
    logged_in,
    login,
    make_admin,
    post_form,
)

from newsletter.admins import accounts
from newsletter.extensions import db
from newsletter.models import Admin, Subscriber

# --- login and logout -------------------------------------------------------------------


def test_login_then_logout(app, client):
    make_admin(app)
    response = login(client)
    assert response.status_code == 302 and response.headers["Location"] == "/admin/"
    page = client.get("/admin/")
    assert page.status_code == 200 and "boss@example.org" in page.get_data(as_text=True)

    response = post_form(client, "/admin/logout")
    assert response.status_code == 302 and response.headers["Location"].startswith("/admin/login")
    assert client.get("/admin/").status_code == 302

    with app.app_context():
        assert [a for _, a, _ in audit_actions()] == ["login", "logout"]


def test_a_failed_login_to_a_real_account_is_kept_in_the_audit_log_though_the_answer_is_401(app, client):
    make_admin(app)
    assert login(client, "boss@example.org", "wrong password here").status_code == 401
    with app.app_context():
        assert ("anonymous", "login_failed", "boss@example.org") in audit_actions()


def test_logout_is_a_post_with_csrf_token(app):
    client = logged_in(app)
    assert client.get("/admin/logout").status_code == 405
    assert client.post("/admin/logout").status_code == 400  # no token: still logged in
    assert client.get("/admin/").status_code == 200


@pytest.mark.parametrize(
    "email, password",
    [
        ("boss@example.org", "wrong password here"),
        ("nobody@example.org", PASSWORD),
        ("BOSS@example.org ", "wrong password here"),
    ],
)
def test_wrong_password_or_unknown_address_get_the_same_generic_answer(app, client, email, password):
    make_admin(app)
    response = login(client, email, password)
    assert response.status_code == 401
    html = response.get_data(as_text=True)
    assert "Wrong email address or password." in html or "Fel e-postadress eller lösenord." in html
    assert client.get("/admin/").status_code == 302


def test_the_address_is_case_insensitive(app, client):
    make_admin(app)
    assert login(client, "Boss@Example.ORG").status_code == 302


def test_a_deactivated_admin_cannot_log_in_and_its_session_ends(app):
    client = logged_in(app, "editor", "ed@example.org")
    with app.app_context():
        accounts.set_active(accounts.admin_by_email("ed@example.org"), False)
    assert client.get("/admin/").status_code == 302
    assert login(app.test_client(), "ed@example.org").status_code == 401


def test_login_is_rate_limited_per_ip(make_app):
    app = make_app(ADMIN_LOGIN_RATE="3 per minute")
    make_admin(app)
    client = app.test_client()
    for _ in range(3):
        assert login(client, password="wrong password here").status_code == 401
    response = login(client)  # even the right password, once the limit is reached
    assert response.status_code == 429
    assert client.get("/admin/").status_code == 302


def test_successful_logins_do_not_count_against_the_limit(make_app):
    app = make_app(ADMIN_LOGIN_RATE="2 per minute")
    make_admin(app)
    client = app.test_client()
    for _ in range(4):  # an office behind one address logs in all day
        assert login(client).status_code == 302
        post_form(client, "/admin/logout")


def test_an_attacker_elsewhere_cannot_lock_the_real_admin_out(make_app):
    """The per-address limit counts the address from one client IP: an attacker locks out only
    themselves, the admin at another address still logs in."""
    app = make_app(ADMIN_LOGIN_RATE_PER_ADDRESS="2 per hour")
    make_admin(app)
    attacker = app.test_client()
    attacker.environ_base["REMOTE_ADDR"] = "203.0.113.66"
    for _ in range(2):
        assert login(attacker, password="wrong password here").status_code == 401
    assert login(attacker, "BOSS@example.org", "wrong password here").status_code == 429
    assert login(attacker).status_code == 429  # even the right password, from there
    admin = app.test_client()
    admin.environ_base["REMOTE_ADDR"] = "198.51.100.7"
    assert login(admin).status_code == 302
    assert admin.get("/admin/").status_code == 200


def test_next_goes_back_to_the_page_asked_for_but_never_off_site(app, client):
    make_admin(app)
    response = client.get("/admin/subscribers?status=pending")
    assert response.status_code == 302
    login_url = response.headers["Location"]
    assert login_url.startswith("/admin/login?next=")
    page = client.get(login_url).get_data(as_text=True)
    assert 'value="/admin/subscribers?status=pending"' in page
    data = {"csrf_token": csrf_token(client), "email": "boss@example.org", "password": PASSWORD}
    response = client.post("/admin/login", data={**data, "next": "/admin/subscribers?status=pending"})
    assert response.headers["Location"] == "/admin/subscribers?status=pending"
    for target in ("https://evil.example/admin", "//evil.example/admin", "/\\evil.example", "/subscribe"):
        fresh = app.test_client()
        data["csrf_token"] = csrf_token(fresh)
        response = fresh.post("/admin/login", data={**data, "next": target})
        assert response.headers["Location"] == "/admin/", target


def test_session_cookie_is_httponly_and_samesite_lax(app, client):
    make_admin(app)
    login(client)
    cookie = client.get_cookie("session")
    assert cookie is not None and cookie.http_only and cookie.same_site == "Lax"
    from config import Config

    assert Config.SESSION_COOKIE_SECURE == Config.PUBLIC_URL.startswith("https://")


def test_admin_pages_are_not_cached_nor_framed_by_other_sites(app):
    client = logged_in(app)
    response = client.get("/admin/")
    assert response.headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'self'" in response.headers["Content-Security-Policy"]


# --- sessions end on a password change ---------------------------------------------------


def test_a_password_change_ends_the_other_sessions_but_not_this_one(app):
    phone = logged_in(app, email="boss@example.org")
    laptop = app.test_client()
    assert login(laptop).status_code == 302
    assert phone.get("/admin/").status_code == 200

    new = "another long passphrase"
    response = post_form(
        laptop,
        "/admin/account",
        {"current": PASSWORD, "password": new, "password_again": new},
        page="/admin/account",
    )
    assert response.status_code == 302
    assert laptop.get("/admin/").status_code == 200  # this session goes on
    assert phone.get("/admin/").status_code == 302  # the other one is over
    assert login(app.test_client(), password=PASSWORD).status_code == 401
    assert login(app.test_client(), password=new).status_code == 302
    with app.app_context():
        assert ("boss@example.org", "password_changed", "boss@example.org") in audit_actions()


@pytest.mark.parametrize(
    "current, new, again",
    [
        ("wrong password here", "another long passphrase", "another long passphrase"),
        (PASSWORD, "short", "short"),
        (PASSWORD, "another long passphrase", "a different passphrase"),
    ],
)
def test_a_bad_password_change_changes_nothing(app, current, new, again):
    client = logged_in(app, email="boss@example.org")
    response = post_form(
        client,
        "/admin/account",
        {"current": current, "password": new, "password_again": again},
        page="/admin/account",
    )
    assert response.status_code == 400
    assert client.get("/admin/").status_code == 200
    assert login(app.test_client(), password=PASSWORD).status_code == 302


# --- logged out, forged, forbidden --------------------------------------------------------

ADMIN_GETS = [
    "/admin/",
    "/admin/subscribers",
    "/admin/subscribers/1",
    "/admin/subscribers/new",
    "/admin/subscribers/import",
    "/admin/subscribers/export.csv",
    "/admin/subscribers/1/erase",
    "/admin/account",
    "/admin/admins",
    "/admin/audit",
]


def test_a_logged_out_user_is_sent_to_the_login_page_and_gets_nothing(app, client):
    with app.app_context():
        db.session.add(
            Subscriber(email="secret.person@example.org", name="Secret Person", status="confirmed")
        )
        db.session.commit()
    make_admin(app)
    for url in ADMIN_GETS:
        response = client.get(url)
        assert response.status_code == 302, url
        assert response.headers["Location"].startswith("/admin/login"), url
        assert b"secret.person" not in response.data
    token = csrf_token(client)  # a real token of this (logged-out) session does not help either
    for url in (
        "/admin/subscribers/1/unsubscribe",
        "/admin/subscribers/1/erase",
        "/admin/subscribers/new",
        "/admin/admins",
        "/admin/admins/1/active",
    ):
        response = client.post(
            url,
            data={
                "csrf_token": token,
                "confirm_email": "secret.person@example.org",
                "email": "evil@example.org",
                "password": "x" * 20,
                "password_again": "x" * 20,
                "role": "admin",
                "active": "0",
            },
        )
        assert response.status_code == 302 and response.headers["Location"].startswith("/admin/login"), url
    with app.app_context():
        assert db.session.get(Subscriber, 1).status == "confirmed"
        assert count(Admin) == 1 and db.session.get(Admin, 1).active


def test_a_post_without_csrf_token_is_rejected_and_changes_nothing(app):
    client = logged_in(app)
    with app.app_context():
        db.session.add(Subscriber(email="kept@example.org", status="confirmed"))
        db.session.commit()
    forged = [
        ("/admin/subscribers/1/unsubscribe", {}),
        ("/admin/subscribers/1/erase", {"confirm_email": "kept@example.org"}),
        ("/admin/subscribers/new", {"email": "new@example.org", "confirmed": "pending", "language": "sv"}),
        (
            "/admin/admins",
            {"email": "evil@example.org", "role": "admin", "password": "x" * 20, "password_again": "x" * 20},
        ),
        ("/admin/account", {"current": PASSWORD, "password": "y" * 20, "password_again": "y" * 20}),
    ]
    for url, data in forged:
        for token in (None, "forged-token"):
            body = dict(data, **({"csrf_token": token} if token else {}))
            response = client.post(url, data=body, headers={"Origin": "https://evil.example"})
            assert response.status_code == 400, url
    with app.app_context():
        db.session.expire_all()
        assert db.session.get(Subscriber, 1).status == "confirmed"
        assert count(Subscriber) == 1 and count(Admin) == 1
    assert login(app.test_client(), "admin@example.org", PASSWORD).status_code == 302


def test_an_editor_gets_403_on_export_erase_import_and_admin_pages(app):
    with app.app_context():
        db.session.add(Subscriber(email="someone@example.org", status="confirmed"))
        db.session.commit()
    editor = logged_in(app, "editor")
    for url in (
        "/admin/subscribers/export.csv",
        "/admin/subscribers/1/erase",
        "/admin/subscribers/import",
        "/admin/admins",
        "/admin/audit",
    ):
        response = editor.get(url)
        assert response.status_code == 403, url
        assert b"someone@example.org" not in response.data
    token = csrf_token(editor, "/admin/subscribers/1")
    assert (
        editor.post(
            "/admin/subscribers/1/erase", data={"csrf_token": token, "confirm_email": "someone@example.org"}
        ).status_code
        == 403
    )
    assert (
        editor.post(
            "/admin/admins",
            data={
                "csrf_token": token,
                "email": "x@example.org",
                "role": "admin",
                "password": "x" * 20,
                "password_again": "x" * 20,
            },
        ).status_code
        == 403
    )
    with app.app_context():
        assert count(Subscriber) == 1 and count(Admin) == 1
    # what an editor may do
    assert editor.get("/admin/").status_code == 200
    page = editor.get("/admin/subscribers")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "export.csv" not in html and "/admin/admins" not in html


# --- admins page ------------------------------------------------------------------------------


def test_an_admin_adds_an_editor_and_deactivates_it(app):
    client = logged_in(app)
    data = {
        "email": "new.editor@example.org",
        "role": "editor",
        "password": "x" * 14,
        "password_again": "x" * 14,
    }
    assert post_form(client, "/admin/admins", data, page="/admin/admins").status_code == 302
    editor = app.test_client()
    assert login(editor, "new.editor@example.org", "x" * 14).status_code == 302
    with app.app_context():
        editor_id = accounts.admin_by_email("new.editor@example.org").id
    response = post_form(client, f"/admin/admins/{editor_id}/active", {"active": "0"}, page="/admin/admins")
    assert response.status_code == 302
    assert editor.get("/admin/").status_code == 302
    with app.app_context():
        actions = [a for _, a, _ in audit_actions()]
    assert "admin_created" in actions and "admin_deactivated" in actions


def test_one_cannot_deactivate_oneself(app):
    client = logged_in(app)
    post_form(client, "/admin/admins/1/active", {"active": "0"}, page="/admin/admins")
    assert client.get("/admin/").status_code == 200
    with app.app_context():
        assert db.session.get(Admin, 1).active


# --- first-run setup --------------------------------------------------------------------------


def _setup_token(app) -> str:
    with app.test_request_context():
        return accounts.make_setup_token()


def test_with_no_admin_the_login_page_explains_the_setup(app, client):
    html = client.get("/admin/login?lang=en").get_data(as_text=True)
    assert "No admin account yet" in html and "admin create" in html


def test_setup_creates_the_first_admin_only_with_the_token_and_only_once(app, client):
    assert client.get("/admin/setup").status_code == 404
    assert client.get("/admin/setup?token=made-up").status_code == 404
    token = _setup_token(app)
    page = client.get(f"/admin/setup?token={token}")
    assert page.status_code == 200
    data = {
        "csrf_token": csrf_token(client, f"/admin/setup?token={token}"),
        "token": token,
        "email": "first@example.org",
        "password": PASSWORD,
        "password_again": PASSWORD,
    }
    assert client.post("/admin/setup", data={**data, "token": "made-up"}).status_code == 404
    response = client.post("/admin/setup", data=data)
    assert response.status_code == 302 and response.headers["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200  # logged in as the new admin

    other = app.test_client()  # the same token, or a new one, is dead now that an admin exists
    assert other.get(f"/admin/setup?token={token}").status_code == 404
    assert other.get(f"/admin/setup?token={_setup_token(app)}").status_code == 404
    data["csrf_token"] = csrf_token(other)
    data["email"] = "second@example.org"
    assert other.post("/admin/setup", data=data).status_code == 404
    with app.app_context():
        assert [a.email for a in accounts.list_admins()] == ["first@example.org"]
        assert ("first@example.org", "admin_setup", "first@example.org") in audit_actions()


def test_an_expired_setup_token_is_refused(make_app):
    app = make_app(ADMIN_SETUP_TOKEN_MAX_AGE=-1)
    assert app.test_client().get(f"/admin/setup?token={_setup_token(app)}").status_code == 404


def test_setup_token_comes_from_another_secret_key_is_refused(make_app):
    token = _setup_token(make_app(SECRET_KEY="one key"))
    other = make_app(SECRET_KEY="another key")
    assert other.test_client().get(f"/admin/setup?token={token}").status_code == 404


# --- the `admin` commands -------------------------------------------------------------------


def test_admin_create_reads_the_password_from_stdin(app, runner):
    result = runner.invoke(
        args=["admin", "create", "Ed@Example.org", "--role", "editor", "--password-stdin"],
        input=PASSWORD + "\n",
    )
    assert result.exit_code == 0, result.output
    with app.app_context():
        admin = accounts.admin_by_email("ed@example.org")
        assert admin is not None and admin.role == "editor"
        assert ("cli", "admin_created", "ed@example.org") in audit_actions()
    assert login(app.test_client(), "ed@example.org").status_code == 302


def test_admin_create_prompts_for_the_password_twice(app, runner):
    result = runner.invoke(args=["admin", "create", "boss@example.org"], input=f"{PASSWORD}\n{PASSWORD}\n")
    assert result.exit_code == 0, result.output
    assert login(app.test_client()).status_code == 302


@pytest.mark.parametrize(
    "args, stdin, message",
    [
        (["boss@example.org"], "short\n", "at least 12 characters"),
        (["not an address"], PASSWORD + "\n", "invalid email address"),
        (["boss@example.org", "--role", "owner"], PASSWORD + "\n", "Invalid value for '--role'"),
        (["boss@example.org"], "", "no password"),
    ],
)
def test_admin_create_fails_clearly_with_non_zero_exit(app, runner, args, stdin, message):
    result = runner.invoke(args=["admin", "create", *args, "--password-stdin"], input=stdin)
    assert result.exit_code != 0
    assert message in result.output
    with app.app_context():
        assert count(Admin) == 0


def test_admin_create_refuses_a_duplicate(app, runner):
    make_admin(app)
    result = runner.invoke(
        args=["admin", "create", "BOSS@example.org", "--password-stdin"], input=PASSWORD + "\n"
    )
    assert result.exit_code == 1 and "already has an account" in result.output


def test_setup_token_command_prints_a_working_link_only_while_no_admin_exists(app, runner):
    result = runner.invoke(args=["admin", "setup-token"])
    assert result.exit_code == 0
    url = result.output.strip()
    assert url.startswith("http://newsletter.test/admin/setup?token=")
    assert app.test_client().get(url.removeprefix("http://newsletter.test")).status_code == 200
    make_admin(app)
    result = runner.invoke(args=["admin", "setup-token"])
    assert result.exit_code == 1 and "admin exists already" in result.output


def test_the_language_switch_keeps_the_query_but_cannot_be_abused(app):
    client = logged_in(app)
    html = client.get("/admin/subscribers?status=pending&q=a").get_data(as_text=True)
    assert "/admin/subscribers?status=pending&amp;q=a&amp;lang=en" in html
    with app.app_context():
        db.session.add(Subscriber(email="one@example.org", status="confirmed"))
        db.session.commit()
    queries = ("_external=1&_scheme=javascript", "endpoint=admin.audit", "subscriber_id=2", "lang=xx&lang=en")
    for query in queries:
        response = client.get(f"/admin/subscribers/1?{query}")
        assert response.status_code == 200, query
        assert "javascript:" not in response.get_data(as_text=True)


def test_nul_bytes_anywhere_are_400_never_500(app):
    make_admin(app)
    client = app.test_client()
    data = {"csrf_token": csrf_token(client), "email": "bo\x00ss@example.org", "password": "x\x00"}
    assert client.post("/admin/login", data=data).status_code == 400
    admin = logged_in(app, "admin", "second@example.org")
    for url in ("/admin/subscribers?q=a%00b", "/admin/subscribers?topic=%00", "/admin/audit?action=%00"):
        assert admin.get(url).status_code == 400, url
    new = {"email": "a@example.org", "language": "sv", "confirmed": "confirmed", "note": "paper\x00note"}
    assert post_form(admin, "/admin/subscribers/new", new).status_code == 400
    account = {
        "email": "n\x00@example.org",
        "role": "editor",
        "password": "c" * 20,
        "password_again": "c" * 20,
    }
    assert post_form(admin, "/admin/admins", account).status_code == 400
    with app.app_context():
        assert count(Subscriber) == 0 and count(Admin) == 2


def test_the_server_logs_a_working_setup_link_when_no_admin_exists(app, caplog):
    from newsletter.web.admin import auth

    with app.app_context(), caplog.at_level("WARNING", logger="newsletter.web.admin.auth"):
        auth.log_setup_link(app)
        auth.log_setup_link(app)  # once per process, not on every visit
    logged = [r.getMessage() for r in caplog.records if "setup?token=" in r.getMessage()]
    assert len(logged) == 1
    path = re.search(r"http://newsletter\.test(/admin/setup\?token=\S+)", logged[0]).group(1)
    assert app.test_client().get(path).status_code == 200
