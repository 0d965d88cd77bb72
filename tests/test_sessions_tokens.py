"""Sessions and tokens: logout ends the session on the server, a deactivated (or demoted)
admin's API tokens stop working."""

from __future__ import annotations

from admin_helpers import PASSWORD, login, make_admin, post_form
from api_helpers import API, auth

from newsletter.admins import accounts, api_tokens
from newsletter.extensions import db
from newsletter.models import Admin, ApiToken


def test_a_copied_session_cookie_opens_nothing_after_logout(app):
    make_admin(app)
    client = app.test_client()
    assert login(client).status_code == 302
    cookie = client.get_cookie("session").value
    copy = app.test_client()
    copy.set_cookie("session", cookie)
    assert copy.get("/admin/").status_code == 200  # the copy works while the session lives
    assert post_form(client, "/admin/logout").status_code == 302
    assert copy.get("/admin/").status_code == 302  # replayed after logout: back to the login page
    assert client.get("/admin/").status_code == 302
    assert login(app.test_client(), password=PASSWORD).status_code == 302  # logging in again works


def test_a_deactivated_admins_api_tokens_stop(app, client):
    boss = make_admin(app)
    other = make_admin(app, "other@example.org")
    with app.app_context():
        _, plaintext = api_tokens.create_token("site", "admin", created_by=other)
    assert client.get(f"{API}/subscribers", headers=auth(plaintext)).status_code == 200
    with app.app_context():
        accounts.set_active(db.session.get(Admin, other), False)
    response = client.get(f"{API}/subscribers", headers=auth(plaintext))
    assert response.status_code == 401
    with app.app_context():
        token = db.session.execute(db.select(ApiToken)).scalar_one()
        assert token.revoked_at is not None  # shown as revoked in the tokens page
        accounts.set_active(db.session.get(Admin, other), True)
    assert client.get(f"{API}/subscribers", headers=auth(plaintext)).status_code == 401  # stays revoked
    assert boss


def test_an_admin_token_of_a_demoted_creator_stops(app, client):
    creator = make_admin(app, "maker@example.org")
    with app.app_context():
        _, admin_token = api_tokens.create_token("admin token", "admin", created_by=creator)
        _, editor_token = api_tokens.create_token("editor token", "editor", created_by=creator)
        db.session.get(Admin, creator).role = "editor"
        db.session.commit()
    assert client.get(f"{API}/subscribers", headers=auth(admin_token)).status_code == 401
    assert client.get(f"{API}/articles", headers=auth(editor_token)).status_code == 200
