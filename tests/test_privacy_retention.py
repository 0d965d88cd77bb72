"""Retention, with time moved forward: each rule removes exactly what it should and nothing else."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import time_machine
from api_helpers import Api, make_token
from sqlalchemy import select, text

from newsletter import delivery, subscriptions
from newsletter import privacy as retention
from newsletter.extensions import db
from newsletter.models import (
    ConsentEvent,
    Delivery,
    Digest,
    QueuedEmail,
    SendTotal,
    Subscriber,
    Suppression,
    subscriber_topics,
)
from newsletter.subscriptions import suppression
from newsletter.subscriptions.consent import email_hash

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def at(days: float):
    return time_machine.travel(T0 + timedelta(days=days), tick=False)


def person(email: str, *, status: str = "confirmed", ip: str = "192.0.2.7") -> int:
    """Someone who signed up on the form (with IP and browser), then reached `status`."""
    subscriptions.request_signup(email, topics=["nyheter"], language="sv", ip=ip, user_agent="Firefox/140")
    subscriber = subscriptions.find_subscriber(email)
    if status == "confirmed":
        subscriber.status, subscriber.confirmed_at = "confirmed", datetime.now(UTC)
        subscriptions.record_event(subscriber, "confirm", source="email", ip=ip)
    elif status == "unsubscribed":
        subscriptions.unsubscribe(subscriber, source="form", ip=ip)
    elif status in ("bounced", "complained"):
        subscriber.status = status
        subscriber.generation += 1
        kind = "bounce" if status == "bounced" else "complaint"
        subscriptions.record_event(subscriber, kind, source="webhook")
    db.session.commit()
    return subscriber.id


def rows_naming(address: str) -> list[str]:
    """Every table and column where the address (or its plain SHA-256) still appears."""
    found = []
    needles = (address, email_hash(address))
    for table in db.metadata.sorted_tables:
        for column in table.columns:
            if not isinstance(column.type, (db.String, db.Text, db.JSON)) and column.name != "detail":
                continue
            for value in db.session.execute(select(column)).scalars():
                if value is not None and any(n in str(value) for n in needles):
                    found.append(f"{table.name}.{column.name}")
    return found


def test_pending_addresses_are_deleted_after_the_period_with_an_anonymous_trace(app):
    with app.app_context():
        with at(0):
            stale = person("never.confirmed@example.se", status="pending")
            kept = person("confirmed@example.se")
        with at(20):
            recent = person("recent.pending@example.se", status="pending")
        with at(29):  # not yet 30 days
            assert retention.purge().pending == 0
        with at(31):
            report = retention.purge()
        assert (report.pending, report.inactive, report.deliveries) == (1, 0, 0)
        assert db.session.get(Subscriber, stale) is None
        assert {db.session.get(Subscriber, i).email for i in (kept, recent)} == {
            "confirmed@example.se", "recent.pending@example.se"}
        # Its signup event stays, anonymised: what happened and when, not who.
        orphans = db.session.execute(
            select(ConsentEvent).where(ConsentEvent.subscriber_id.is_(None))).scalars().all()
        assert [(e.kind, e.ip, e.user_agent, e.email_hash, e.detail) for e in orphans] == [
            ("signup", "", "", "", {})]
        assert rows_naming("never.confirmed@example.se") == []
        assert db.session.execute(
            select(QueuedEmail).where(QueuedEmail.subscriber_id == stale)).first() is None
        # The confirmed person's proof of consent is untouched.
        kinds = db.session.execute(select(ConsentEvent.kind, ConsentEvent.ip)
                                   .where(ConsentEvent.subscriber_id == kept)).all()
        assert sorted(kinds) == [("confirm", "192.0.2.7"), ("signup", "192.0.2.7")]
        # Deleted, not suppressed: they never asked to be left alone, and may sign up again.
        assert suppression.suppression_of("never.confirmed@example.se") is None


def test_inactive_people_are_reduced_to_a_suppression_entry(app, client):
    with app.app_context():
        with at(0):
            gone = person("gone@example.se", status="unsubscribed")
            bounced = person("bounced@example.se", status="bounced")
            complained = person("complained@example.se", status="complained")
            kept = person("still.here@example.se")
        with at(300):
            late = person("left.later@example.se", status="unsubscribed")
        with at(364):
            assert retention.purge().inactive == 0
        with at(366):
            report = retention.purge()
        assert report.inactive == 3
        for sid in (gone, bounced, complained):
            assert db.session.get(Subscriber, sid) is None
        assert db.session.get(Subscriber, kept).status == "confirmed"
        assert db.session.get(Subscriber, late).status == "unsubscribed"
        for address in ("gone@example.se", "bounced@example.se", "complained@example.se"):
            assert rows_naming(address) == [], address
        assert suppression.suppressed(["gone@example.se", "bounced@example.se", "complained@example.se",
                                       "still.here@example.se"]) == {
            "gone@example.se": "unsubscribed", "bounced@example.se": "bounced",
            "complained@example.se": "complained"}
        hashes = set(db.session.execute(select(Suppression.address_hash)).scalars())
        assert suppression.address_hash("gone@example.se") in hashes
        assert len(hashes) == 3 and all(len(h) == 64 for h in hashes)
        # Nothing that reaches them: no ledger event keeps an IP, a browser or a hash.
        leftover = db.session.execute(
            select(ConsentEvent).where(ConsentEvent.subscriber_id.is_(None))).scalars()
        assert all((e.ip, e.user_agent, e.email_hash, e.detail) == ("", "", "", {}) for e in leftover)
        token = make_token(app)
    # …and the suppression holds: the API cannot bring them back.
    response = Api(client, token).post("/subscribers", json={"email": "gone@example.se"})
    assert response.status_code == 409


def _send(status: str, states: list[str], subscribers: list[int]) -> int:
    digest = Digest(status=status, subject_sv="Veckans nyheter", subject_en="News of the week",
                    started_at=datetime.now(UTC), finished_at=datetime.now(UTC) if status == "done" else None)
    db.session.add(digest)
    db.session.flush()
    for sid, state in zip(subscribers, states, strict=True):
        db.session.add(Delivery(digest_id=digest.id, subscriber_id=sid, state=state,
                                sent_at=datetime.now(UTC) if state in ("sent", "bounced") else None))
    db.session.commit()
    return digest.id


def test_delivery_rows_are_rolled_up_into_totals_the_admin_and_api_keep_showing(app, client):
    with app.app_context():
        with at(0):
            people = [person(f"reader{i}@example.se") for i in range(6)]
            old = _send("done", ["sent", "sent", "sent", "bounced", "failed", "skipped"], people)
            paused = _send("paused", ["sent", "queued", "queued", "queued", "queued", "queued"], people)
        with at(60):
            recent = _send("done", ["sent"] * 6, people)
        before = delivery.send_progress(old)
        with at(91):
            report = retention.purge()
        assert report.deliveries == 6
        remaining = dict(db.session.execute(
            select(Delivery.digest_id, db.func.count()).group_by(Delivery.digest_id)).all())
        assert remaining == {paused: 6, recent: 6}  # a send not finished, and a recent one, stay whole
        after = delivery.send_progress(old)
        for state in ("sent", "failed", "bounced", "skipped", "queued", "total"):
            assert after[state] == before[state], state
        assert (after["sent"], after["bounced"], after["failed"], after["total"]) == (3, 1, 1, 6)
        totals = db.session.get(SendTotal, old)
        assert (totals.sent, totals.bounced, totals.failed, totals.skipped) == (3, 1, 1, 1)
        token = make_token(app)
    progress = Api(client, token).get(f"/digests/{old}").get_json()["progress"]
    assert (progress["sent"], progress["bounced"], progress["failed"], progress["total"]) == (3, 1, 1, 6)


def test_a_purge_of_many_rows_runs_in_batches(app, runner):
    with app.app_context():
        with at(0):
            people = [person(f"r{i}@example.se") for i in range(3)]
            for _ in range(9):  # 27 delivery rows in 9 finished sends
                _send("done", ["sent", "sent", "failed"], people)
            for i in range(4):
                person(f"gone{i}@example.se", status="unsubscribed")
        with at(400):
            dry = retention.purge(dry_run=True)
            assert (dry.pending, dry.inactive, dry.deliveries) == (0, 4, 27)
            assert db.session.execute(select(db.func.count()).select_from(Delivery)).scalar_one() == 27
            seen = []
            report = retention.purge(batch_size=10, on_batch=lambda rule, rows: seen.append((rule, rows)))
        assert seen == report.batches == [("inactive", 4), ("deliveries", 10), ("deliveries", 10),
                                          ("deliveries", 7)]
        assert db.session.execute(select(db.func.count()).select_from(Delivery)).scalar_one() == 0
        sent = db.session.execute(select(db.func.sum(SendTotal.sent))).scalar_one()
        assert sent == 18


def test_the_purge_command_prints_counts_never_addresses(app, runner):
    with app.app_context():
        with at(0):
            person("pending.one@example.se", status="pending")
            person("gone.one@example.se", status="unsubscribed")
    with at(400):
        dry = runner.invoke(args=["privacy", "purge", "--dry-run"])
        assert dry.exit_code == 0, dry.output
        assert "1 would be deleted" in dry.output and "1 would be reduced" in dry.output
        done = runner.invoke(args=["privacy", "purge"])
    assert done.exit_code == 0, done.output
    assert "1 were deleted" in done.output and "@" not in dry.output + done.output
    with app.app_context():
        assert db.session.execute(select(db.func.count()).select_from(Subscriber)).scalar_one() == 0


def test_a_period_of_zero_keeps_everything(app):
    app.config.update(RETENTION_PENDING_DAYS=0, RETENTION_INACTIVE_DAYS=0, RETENTION_DELIVERIES_DAYS=0)
    with app.app_context():
        with at(0):
            people = [person("p@example.se", status="pending"), person("u@example.se", status="unsubscribed")]
            _send("done", ["sent", "sent"], people)
        with at(3000):
            report = retention.purge()
        assert (report.pending, report.inactive, report.deliveries) == (0, 0, 0)
        assert db.session.execute(text("SELECT count(*) FROM subscriber")).scalar_one() == 2


def test_the_scheduler_runs_the_purge_daily(app):
    from newsletter import scheduler

    with app.app_context():
        with at(0):
            person("old.pending@example.se", status="pending")
    with at(40):
        scheduler.retention_job(app)
    with app.app_context():
        assert db.session.execute(select(db.func.count()).select_from(Subscriber)).scalar_one() == 0
        assert db.session.execute(select(db.func.count()).select_from(subscriber_topics)).scalar_one() == 0


def test_the_admin_privacy_page_shows_the_policy_and_what_the_next_run_removes(app):
    from admin_helpers import logged_in

    app.config["RETENTION_DELIVERIES_DAYS"] = 45
    with app.app_context():
        with time_machine.travel(datetime.now(UTC) - timedelta(days=40), tick=False):
            person("stale@example.se", status="pending")
        person("fresh@example.se", status="pending")
        subscriptions.erase_subscriber(
            subscriptions.add_subscriber("gone@example.se", confirmed=True, source="cli"), source="admin")
    admin = logged_in(app, "admin")
    page = admin.get("/admin/privacy?lang=en").get_data(as_text=True)
    policy = page.split('id="retention-policy"', 1)[1].split("</table>", 1)[0]
    assert "30 days" in policy and "365 days" in policy and "45 days" in policy
    assert "<td>1</td>" in policy and "<td>2</td>" not in policy  # the stale address, not the fresh one
    assert "erased: 1" in page
    assert logged_in(app, "editor", "ed@example.org").get("/admin/privacy").status_code == 403


def test_signups_go_on_between_the_batches_of_a_purge(app):
    """Each batch is its own transaction: a signup made while a purge runs is not held up."""
    from subs_helpers import signup

    with app.app_context():
        with at(0):
            people = [person(f"r{i}@example.se") for i in range(2)]
            for _ in range(6):
                _send("done", ["sent", "sent"], people)
    client = app.test_client()
    signed_up = []

    def sign_up_now(rule, rows):
        response = signup(client, f"new{len(signed_up)}@example.se")
        signed_up.append(response.status_code)

    with app.app_context(), at(400):
        report = retention.purge(batch_size=4, on_batch=sign_up_now)
    assert report.deliveries == 12 and signed_up == [200, 200, 200]
    with app.app_context():
        pending = db.session.execute(select(Subscriber.email).where(Subscriber.status == "pending")).scalars()
        assert sorted(pending) == ["new0@example.se", "new1@example.se", "new2@example.se"]


def test_a_bounce_suppression_is_lifted_by_the_cli_and_audited(app, runner):
    with app.app_context():
        person("bounced@example.se", status="bounced")
    refused = runner.invoke(args=["privacy", "unsuppress", "nobody@example.se"])
    assert refused.exit_code == 1
    result = runner.invoke(args=["privacy", "unsuppress", "bounced@example.se"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        assert suppression.suppression_of("bounced@example.se") == "unsubscribed"
        assert not suppression.blocks_own_signup("bounced@example.se")
        actions = db.session.execute(text("SELECT action FROM audit_event")).scalars().all()
        assert "suppression_lifted" in actions
