"""The suppression list: every way in refuses and reports a suppressed or erased address, and
only the person's own new double opt-in brings it back (a bounce or complaint: an admin)."""

from __future__ import annotations

import io

from admin_helpers import csrf_token, logged_in
from sqlalchemy import select
from subs_helpers import form_fields, signup, subscriber

from newsletter import subscriptions
from newsletter.extensions import db
from newsletter.models import AuditEvent, ConsentEvent, QueuedEmail, Subscriber, Suppression
from newsletter.subscriptions import imports, suppression, tokens


def _erased(email: str) -> None:
    subscriptions.erase_subscriber(subscriptions.add_subscriber(email, confirmed=True, source="cli"),
                                   source="form")


def _unsubscribed(email: str) -> None:
    person = subscriptions.add_subscriber(email, confirmed=True, source="cli")
    subscriptions.unsubscribe(person, source="form")


def test_an_erasure_leaves_a_keyed_hash_and_nothing_else(app):
    with app.app_context():
        _erased("Erik.Ek@Example.se")
        [entry] = db.session.execute(select(Suppression)).scalars()
        assert entry.reason == "erased" and "erik" not in entry.address_hash
        assert entry.address_hash == suppression.address_hash("erik.ek@example.se")
        # The ledger's trace says an erasure happened, and nothing about whose.
        [trace] = db.session.execute(select(ConsentEvent)).scalars()
        assert (trace.kind, trace.subscriber_id, trace.email_hash, trace.ip) == ("erase", None, "", "")
        # A keyed hash: another SECRET_KEY gives another value (a list of addresses cannot be tried).
        app.config["SECRET_KEY"] = "another key"
        assert suppression.address_hash("erik.ek@example.se") != entry.address_hash
        assert suppression.suppression_of("erik.ek@example.se") is None


def test_cli_add_refuses_a_suppressed_address(app, runner):
    with app.app_context():
        _erased("erased@example.se")
        _unsubscribed("gone@example.se")
    for email, reason in (("erased@example.se", "erased"), ("GONE@example.se", "unsubscribed")):
        result = runner.invoke(args=["subscribers", "add", email, "--confirmed"])
        assert result.exit_code == 1
        assert f"suppressed ({reason})" in result.output and "left as it is" in result.output
    with app.app_context():
        assert subscriber("erased@example.se") is None
        assert subscriber("gone@example.se").status == "unsubscribed"


def test_cli_import_confirmed_reports_and_leaves_suppressed_addresses(app, runner, tmp_path):
    with app.app_context():
        _erased("erased@example.se")
        _unsubscribed("gone@example.se")
    path = tmp_path / "members.csv"
    path.write_text("email,name\nerased@example.se,E\ngone@example.se,G\nnew@example.se,N\n",
                    encoding="utf-8")
    result = runner.invoke(args=["subscribers", "import", str(path), "--confirmed"])
    assert result.exit_code == 0, result.output
    assert "members.csv:2: skipped: suppressed (erased): not imported" in result.output
    assert "members.csv:3: skipped: unsubscribed here: not subscribed again by an import" in result.output
    assert "1 added" in result.output and "2 suppressed" in result.output
    with app.app_context():
        assert subscriber("erased@example.se") is None
        assert subscriber("gone@example.se").status == "unsubscribed"
        assert subscriber("new@example.se").status == "confirmed"


def test_admin_add_and_web_import_refuse_a_suppressed_address(app):
    with app.app_context():
        _erased("erased@example.se")
    admin = logged_in(app, "admin")
    page = admin.post("/admin/subscribers/new", data={
        "csrf_token": csrf_token(admin, "/admin/subscribers/new"), "email": "erased@example.se",
        "language": "sv", "confirmed": "confirmed", "note": "asked at the meeting"})
    assert page.status_code == 400
    assert "spärrlistan (raderad)" in page.get_data(as_text=True)
    upload = admin.post("/admin/subscribers/import", data={
        "csrf_token": csrf_token(admin, "/admin/subscribers/import"), "confirmed": "y",
        "file": (io.BytesIO(b"email\nerased@example.se\nnew@example.se\n"), "list.csv")},
        content_type="multipart/form-data")
    assert "spärrlistan (raderad): inte importerad" in upload.get_data(as_text=True)  # the Swedish admin
    with app.app_context():
        assert subscriber("erased@example.se") is None
        assert subscriber("new@example.se") is not None


def test_the_persons_own_double_opt_in_lifts_an_erasure(app, client):
    with app.app_context():
        _erased("anna@example.se")
    signup(client, "anna@example.se")
    with app.app_context():
        assert subscriber("anna@example.se").status == "pending"  # a new person, not yet confirmed
        assert suppression.suppression_of("anna@example.se") == "erased"
        assert db.session.execute(select(QueuedEmail.kind)).scalars().all() == ["confirm"]
        path = tokens.confirm_url(subscriber("anna@example.se")).split("newsletter.test", 1)[1]
    page = client.get(path)
    client.post(path, data=form_fields(page.get_data(as_text=True)))
    with app.app_context():
        assert subscriber("anna@example.se").status == "confirmed"
        assert suppression.suppression_of("anna@example.se") is None


def test_a_bounce_blocks_even_the_persons_signup_until_an_admin_lifts_it(app, client):
    with app.app_context():
        person = subscriptions.add_subscriber("bounced@example.se", confirmed=True, source="cli")
        person.status = "bounced"
        db.session.commit()
    signup(client, "bounced@example.se")
    with app.app_context():
        assert subscriber("bounced@example.se").status == "bounced"
        assert db.session.execute(select(QueuedEmail)).first() is None
    admin = logged_in(app, "admin")
    refused = admin.post("/admin/privacy", data={"csrf_token": csrf_token(admin, "/admin/privacy"),
                                                 "email": "nobody@example.se"})
    assert refused.status_code == 400
    lifted = admin.post("/admin/privacy", data={"csrf_token": csrf_token(admin, "/admin/privacy"),
                                                "email": "Bounced@example.se"})
    assert lifted.status_code == 302
    with app.app_context():
        assert subscriber("bounced@example.se").status == "unsubscribed"
        audit = db.session.execute(
            select(AuditEvent).where(AuditEvent.action == "suppression_lifted")).scalar_one()
        assert audit.detail["reason"] == "bounced" and "bounced@" not in audit.target
    signup(client, "bounced@example.se")
    with app.app_context():
        assert subscriber("bounced@example.se").status == "pending"


def test_opt_outs_of_mailchimp_and_listmonk_exports_join_the_suppression_list(app, runner, tmp_path):
    from conftest import FIXTURES

    mailchimp = tmp_path / "unsubscribed_members.csv"
    mailchimp.write_text(
        "Email Address,First Name,Last Name,OPTIN_TIME,UNSUB_TIME,LEID\n"
        "left.mailchimp@example.se,Lena,Ek,2025-01-01 10:00:00,2025-06-01 10:00:00,1\n", encoding="utf-8")
    cleaned = tmp_path / "cleaned_members.csv"
    cleaned.write_text("Email Address,First Name,CLEAN_TIME\ncleaned@example.se,C,2025-06-01 10:00:00\n",
                       encoding="utf-8")
    for path in (mailchimp, cleaned, FIXTURES / "listmonk-export.csv"):
        result = runner.invoke(args=["subscribers", "import", str(path), "--confirmed"])
        assert result.exit_code == 0, result.output
    assert "1 opted out at the source" in result.output
    with app.app_context():
        assert subscriber("left.mailchimp@example.se") is None
        assert suppression.suppressed(["left.mailchimp@example.se", "cleaned@example.se",
                                       "blocked.person@example.se", "sara.ek@example.se"]) == {
            "left.mailchimp@example.se": "imported", "cleaned@example.se": "imported",
            "blocked.person@example.se": "imported"}
    again = runner.invoke(args=["subscribers", "add", "blocked.person@example.se", "--confirmed"])
    assert again.exit_code == 1 and "suppressed (imported)" in again.output


def test_a_dry_run_import_adds_no_suppression(app):
    with app.app_context():
        imports.import_csv(io.BytesIO(b"uuid,email,name,attributes,status\n1,x@example.se,X,{},blocklisted\n"),
                           confirmed=True, source="cli", filename="l.csv", dry_run=True)
        assert db.session.execute(select(Suppression)).first() is None
        assert db.session.execute(select(Subscriber)).first() is None


def test_cli_erase_erases_and_suppresses(app, runner):
    with app.app_context():
        subscriptions.add_subscriber("erik@example.se", confirmed=True, source="cli")
    result = runner.invoke(args=["subscribers", "erase", "Erik@example.se"])
    assert result.exit_code == 0, result.output
    assert "erik@" not in result.output
    unknown = runner.invoke(args=["subscribers", "erase", "never.here@example.se"])
    assert unknown.exit_code == 0 and "suppression list" in unknown.output
    with app.app_context():
        assert subscriber("erik@example.se") is None
        assert suppression.suppressed(["erik@example.se", "never.here@example.se"]) == {
            "erik@example.se": "erased", "never.here@example.se": "erased"}


def test_an_import_does_not_confirm_a_new_signup_after_an_erasure(app, client, runner, tmp_path):
    with app.app_context():
        _erased("back@example.se")
    signup(client, "back@example.se")  # their own new signup: pending until they confirm
    path = tmp_path / "list.csv"
    path.write_text("email\nback@example.se\n", encoding="utf-8")
    result = runner.invoke(args=["subscribers", "import", str(path), "--confirmed"])
    assert result.exit_code == 0, result.output
    assert "suppressed (erased): left pending until the person confirms" in result.output
    with app.app_context():
        assert subscriber("back@example.se").status == "pending"
