"""`flask subscribers add | import | export`: exit codes, messages, emails, the ledger, a round trip."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys

from conftest import FIXTURES, ROOT, _reset_database, body_text
from sqlalchemy import select
from subs_helpers import confirm_links, count, nothing_stored, subscriber

from newsletter import create_app, subscriptions
from newsletter.extensions import db
from newsletter.mail import outbox as mail_queue
from newsletter.models import AuditEvent, ConsentEvent, QueuedEmail, Subscriber


def rows_of(csv_text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(csv_text)))


def ledger(app, email: str) -> list[ConsentEvent]:
    with app.app_context():
        person = subscriber(email)
        return list(db.session.execute(select(ConsentEvent).where(ConsentEvent.subscriber_id == person.id)
                                       .order_by(ConsentEvent.id)).scalars())


# --- add ------------------------------------------------------------------------------


def test_add_sends_a_confirmation_email_through_the_queue(smtp_app, smtp_server):
    result = smtp_app.test_cli_runner().invoke(
        args=["subscribers", "add", "Ny.Person@Example.se", "--lang", "en", "--topic", "blogg",
              "--topic", "nyheter", "--name", "Ny Person"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "ny.person@example.se: pending; confirmation email sent\n"
    [message] = smtp_server.messages(to="ny.person@example.se")
    assert len(confirm_links(body_text(message))) == 1
    with smtp_app.app_context():
        person = subscriber("ny.person@example.se")
        assert (person.status, person.language, person.name) == ("pending", "en", "Ny Person")
        assert subscriptions.topic_slugs(person) == ["blogg", "nyheter"]
        assert mail_queue.pending_count() == 0
    [event] = ledger(smtp_app, "ny.person@example.se")
    assert (event.source, event.detail["confirmed"]) == ("cli", False)


def test_add_confirmed_confirms_at_once_and_records_the_cli_as_consent_source(smtp_app, smtp_server):
    result = smtp_app.test_cli_runner().invoke(args=["subscribers", "add", "anna@example.se", "--confirmed"])
    assert result.exit_code == 0, result.output
    assert "confirmed" in result.stdout
    with smtp_app.app_context():
        assert subscriber("anna@example.se").status == "confirmed"
        assert count(QueuedEmail) == 0
    [event] = ledger(smtp_app, "anna@example.se")
    assert (event.kind, event.source) == ("admin", "cli")
    assert event.detail["command"] == "flask subscribers add --confirmed"
    assert event.detail["confirmed"] is True
    assert event.detail["actor"].startswith("cli")
    assert smtp_server.messages() == []


def test_add_refuses_bad_input_and_existing_subscribers_with_a_reason(app, runner):
    cases = [
        (["inte-en-adress"], "An email address must have an @-sign"),
        (["x@example.se\r\nBcc: y@example.se"], "line break"),
        (["x@example.se", "--topic", "sport"], "unknown topic: sport"),
        (["x@example.se", "--lang", "de"], "unknown language 'de'"),
    ]
    for args, message in cases:
        result = runner.invoke(args=["subscribers", "add", *args])
        assert result.exit_code == 1, (args, result.output)
        assert message in result.stderr and result.stdout == ""
    with app.app_context():
        assert nothing_stored()
    assert runner.invoke(args=["subscribers", "add", "x@example.se"]).exit_code == 0
    again = runner.invoke(args=["subscribers", "add", "X@example.se", "--confirmed"])
    assert again.exit_code == 1 and "already on the list" in again.stderr
    with app.app_context():
        assert subscriber("x@example.se").status == "pending" and count(Subscriber) == 1


# --- import ---------------------------------------------------------------------------


def test_import_of_the_fixture_reports_bad_lines_on_stderr_and_exits_3(app, runner):
    result = runner.invoke(args=["subscribers", "import", str(FIXTURES / "subscribers.csv")])
    assert result.exit_code == 3, result.output
    assert result.stderr.splitlines() == [
        "subscribers.csv:5: duplicate of line 2",
        "subscribers.csv:6: invalid address: An email address must have an @-sign.",
        "subscribers.csv:8: line break or control character in the address",
        "subscribers.csv:10: unknown language 'xx'",
        "subscribers.csv:11: empty address",
    ]
    assert result.stdout.startswith(
        "9 rows (newsletter, utf-8): 4 added, 0 confirmed who were pending, 5 skipped")
    with app.app_context():
        assert count(Subscriber, Subscriber.status == "pending") == 4 and count(QueuedEmail) == 4
        [entry] = db.session.execute(select(AuditEvent)).scalars().all()
        assert (entry.action, entry.target) == ("subscribers_imported", "subscribers.csv")
        assert entry.actor.startswith("cli")
        assert (entry.detail["added"], entry.detail["errors"], entry.detail["layout"]) == (4, 5, "newsletter")


def test_imported_people_get_their_confirmation_email(smtp_app, smtp_server):
    runner = smtp_app.test_cli_runner()
    result = runner.invoke(args=["subscribers", "import", str(FIXTURES / "mailchimp-export.csv")])
    assert result.exit_code == 0, result.output
    assert smtp_server.messages() == []  # queued in bulk, not sent inline
    with smtp_app.app_context():
        assert mail_queue.flush() == 2  # what the app's mail worker or the scheduler does
    listmonk = str(FIXTURES / "listmonk-export.csv")
    result = runner.invoke(args=["subscribers", "import", listmonk, "--send-now"])
    assert result.exit_code == 0, result.output
    assert "blocklisted in the listmonk export" in result.stderr
    for email in ("karin.holm@example.se", "olle.berg@example.se", "sara.ek@example.se"):
        [message] = smtp_server.messages(to=email)
        assert len(confirm_links(body_text(message))) == 1
    assert smtp_server.messages(to="blocked.person@example.se") == []


def test_import_confirmed_records_the_command_and_file_and_sends_nothing(smtp_app, smtp_server):
    result = smtp_app.test_cli_runner().invoke(
        args=["subscribers", "import", "--confirmed", str(FIXTURES / "listmonk-export.csv")])
    assert result.exit_code == 0, result.output
    [event] = ledger(smtp_app, "sara.ek@example.se")
    assert (event.kind, event.source) == ("import", "import")
    assert event.detail["consent_source"] == "flask subscribers import --confirmed listmonk-export.csv"
    assert event.detail["channel"] == "cli" and event.detail["layout"] == "listmonk"
    with smtp_app.app_context():
        assert subscriber("sara.ek@example.se").status == "confirmed" and mail_queue.pending_count() == 0
    assert smtp_server.messages() == []


def test_a_failed_import_says_why_exits_1_and_leaves_the_table_unchanged(app, runner, tmp_path):
    runner.invoke(args=["subscribers", "add", "kept@example.se", "--confirmed"])
    bad = tmp_path / "broken.csv"
    bad.write_bytes(b"email,name\n" + b"".join(b"p%d@example.se,P\n" % i for i in range(6000))
                    + "sist@example.se,Ärlig\n".encode("cp1252"))
    cases = [
        ([str(tmp_path / "missing.csv")], "cannot read"),
        ([str(bad)], "broken.csv: the file is not valid utf-8 after line"),
        ([str(FIXTURES / "nyheter.rss")], "no email column"),
        ([str(bad), "--encoding", "klingon"], "unknown encoding"),
    ]
    for args, message in cases:
        result = runner.invoke(args=["subscribers", "import", *args])
        assert result.exit_code in (1, 2), (args, result.output)
        assert message in result.stderr, result.stderr
    with app.app_context():
        assert [s.email for s in db.session.execute(select(Subscriber)).scalars()] == ["kept@example.se"]
        assert count(QueuedEmail) == 0
    fixed = runner.invoke(args=["subscribers", "import", str(bad), "--encoding", "cp1252", "--dry-run"])
    assert fixed.exit_code == 0 and "dry run, nothing written: 6001 rows" in fixed.stdout
    with app.app_context():
        assert count(Subscriber) == 1


# --- export ---------------------------------------------------------------------------


def _people(app):
    with app.app_context():
        subscriptions.add_subscriber("anna@example.se", name="=HYPERLINK(\"http://evil\")", language="sv",
                                     topics=["nyheter", "blogg"], confirmed=True)
        subscriptions.add_subscriber("erik@example.se", name="Erik", language="en", confirmed=True)
        subscriptions.add_subscriber("-pending@example.se", name="@Pending", language="sv", topics=["blogg"])
        subscriptions.add_subscriber("gone@example.se", name="Gone", confirmed=True)
        subscriptions.unsubscribe(subscriber("gone@example.se"), source="email")


def test_export_writes_csv_to_stdout_formula_safe_and_filtered(app, runner):
    _people(app)
    result = runner.invoke(args=["subscribers", "export"])
    assert result.exit_code == 0 and result.stderr == "exported 4 subscribers\n"
    rows = rows_of(result.stdout)
    assert list(rows[0]) == ["email", "status", "language", "topics", "name", "created_at", "confirmed_at"]
    anna = rows[0]
    assert (anna["email"], anna["status"], anna["language"], anna["topics"]) == (
        "anna@example.se", "confirmed", "sv", "blogg;nyheter")
    assert anna["name"] == "'=HYPERLINK(\"http://evil\")" and anna["confirmed_at"]
    assert rows[2]["email"] == "'-pending@example.se" and rows[2]["name"] == "'@Pending"
    assert [r["status"] for r in rows] == ["confirmed", "confirmed", "pending", "unsubscribed"]
    confirmed = rows_of(runner.invoke(args=["subscribers", "export", "--status", "confirmed"]).stdout)
    assert [r["email"] for r in confirmed] == ["anna@example.se", "erik@example.se"]
    blog = rows_of(runner.invoke(args=["subscribers", "export", "--topic", "blogg"]).stdout)
    # Who receives the topic: those who chose it and those who chose none (all topics).
    assert [r["email"] for r in blog] == ["anna@example.se", "erik@example.se", "'-pending@example.se",
                                          "gone@example.se"]
    news = rows_of(runner.invoke(args=["subscribers", "export", "--topic", "nyheter"]).stdout)
    assert [r["email"] for r in news] == ["anna@example.se", "erik@example.se", "gone@example.se"]
    unknown = runner.invoke(args=["subscribers", "export", "--topic", "sport"])
    assert unknown.exit_code == 1 and "unknown topic 'sport'" in unknown.stderr
    assert runner.invoke(args=["subscribers", "export", "--status", "happy"]).exit_code == 2


def test_export_then_import_round_trips(app, runner, tmp_path):
    _people(app)
    exported = tmp_path / "export.csv"
    result = runner.invoke(args=["subscribers", "export", str(exported)])
    assert result.exit_code == 0 and f"exported 4 subscribers to {exported}" in result.stderr
    assert oct(exported.stat().st_mode & 0o777) == "0o600"
    before = rows_of(exported.read_text(encoding="utf-8"))
    with app.app_context():
        db.drop_all()
        db.create_all()
    result = runner.invoke(args=["subscribers", "import", "--confirmed", str(exported)])
    assert result.exit_code == 0, result.output
    assert "4 rows (newsletter, utf-8): 3 added" in result.stdout
    assert "export.csv:5: skipped: unsubscribed in the export: not imported" in result.stderr
    after = rows_of(runner.invoke(args=["subscribers", "export"]).stdout)
    keys = ("email", "status", "language", "topics", "name")
    assert [tuple(r[k] for k in keys) for r in after] == [
        tuple(r[k] for k in keys) for r in before if r["status"] != "unsubscribed"]
    with app.app_context():  # the escape is undone on import: the name is stored as it was typed
        assert subscriber("anna@example.se").name == "=HYPERLINK(\"http://evil\")"
        assert subscriber("-pending@example.se").status == "pending"  # it never confirmed


def test_the_real_command_line_exits_non_zero_with_the_reason_on_stderr(database_url, tmp_path):
    env = {**os.environ, "DATABASE_URL": database_url, "INSTANCE_PATH": str(tmp_path / "instance"),
           "MAIL_URL": f"outbox://{tmp_path / 'outbox'}", "SECRET_KEY": "x" * 32, "MAIL_QUEUE_THREAD": "1"}
    flask = [sys.executable, "-m", "flask", "--app", "wsgi"]

    def run(*args):
        return subprocess.run([*flask, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)

    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url, "INSTANCE_PATH": str(tmp_path / "instance")})
    _reset_database(app)  # tables (create_all), empty
    with app.app_context():
        db.engine.dispose()
    copy = tmp_path / "subscribers.csv"
    shutil.copy(FIXTURES / "subscribers.csv", copy)
    imported = run("subscribers", "import", str(copy))
    assert imported.returncode == 3 and "subscribers.csv:6: invalid address" in imported.stderr
    assert "4 added" in imported.stdout
    exported = run("subscribers", "export", "--status", "pending")
    assert exported.returncode == 0
    assert sorted(r["email"] for r in rows_of(exported.stdout)) == [
        "anna.lindqvist@example.se", "erik.nilsson@example.se", "jörgen@exempel.se", "maria.oberg@example.se"]
