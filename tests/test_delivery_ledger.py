"""The send ledger: pinned recipients, exactly one message each, pause obeyed, 5xx bounces."""

from __future__ import annotations

from newsletter import delivery
from newsletter.delivery import pinning, send
from newsletter.delivery.bounces import record_send_bounces
from newsletter.engine.ledger import HOST, process_owner
from newsletter.engine.prepared import slot
from newsletter.extensions import db
from newsletter.mail.compose import prepare_message
from newsletter.mail.personal import personal_values
from newsletter.models import Delivery, Digest, Subscriber


def _seed(n: int) -> int:
    for i in range(n):
        db.session.add(Subscriber(email=f"person{i}@example.se", status="confirmed"))
    db.session.add(Subscriber(email="pending@example.se", status="pending"))
    digest = Digest(status="draft", subject_sv="Veckans nyheter")
    db.session.add(digest)
    db.session.commit()
    return digest.id


def _factory():
    prepared = prepare_message(subject="Veckans nyheter", text=f"Avsluta: {slot('unsubscribe_url')}",
                               html=f'<a href="{slot("unsubscribe_url")}">Avsluta</a>', bulk=True)
    return lambda subscriber: prepared


def test_send_reaches_each_confirmed_subscriber_once_and_bounces_5xx(smtp_app, smtp_server):
    smtp_server.handler.faults = lambda rcpt: "550 5.1.1 unknown" if rcpt == "person3@example.se" else None
    with smtp_app.app_context():
        digest_id = _seed(10)
        smtp_app.config["SEND_INFLIGHT"] = 4  # several chunks
        counts = delivery.send_digest(digest_id, message_for=_factory())
        assert counts["sent"] == 9 and counts["bounced"] == 1 and counts["total"] == 10
        again = delivery.send_digest(digest_id, message_for=_factory())  # a rerun sends nothing more
        assert again["sent"] == 9
        assert db.session.get(Digest, digest_id).status == "done"
        bounced = db.session.execute(db.select(Subscriber).filter_by(email="person3@example.se")).scalar_one()
        assert bounced.status == "bounced"
    recipients = sorted(m["To"] for m in smtp_server.messages())
    assert len(recipients) == len(set(recipients)) == 9
    assert "pending@example.se" not in recipients


def test_paused_send_stops_and_resumes_without_duplicates(smtp_app, smtp_server):
    with smtp_app.app_context():
        digest_id = _seed(6)
        delivery.start_send(digest_id)
        delivery.pause_send(digest_id)
        assert delivery.send_digest(digest_id, message_for=_factory())["sent"] == 0
        delivery.set_send_status(digest_id, "sending")  # resume_send would also launch a sender
        assert delivery.send_digest(digest_id, message_for=_factory())["sent"] == 6
        assert db.session.execute(db.select(db.func.count()).select_from(Delivery)).scalar_one() == 6
    assert len(smtp_server.messages()) == 6


def test_launch_send_returns_at_once_and_progress_reports(smtp_app, smtp_server):
    with smtp_app.app_context():
        digest_id = _seed(5)
        delivery.start_send(digest_id)
        delivery.pause_send(digest_id)
        progress = delivery.send_progress(digest_id)
        assert progress["status"] == "paused" and progress["queued"] == 5 and progress["total"] == 5
        assert progress["started_at"] and progress["finished_at"] is None
        delivery.resume_send(digest_id)  # relaunches in a background thread
        delivery.wait_for_sends(timeout=30)
        progress = delivery.send_progress(digest_id)
        assert progress["status"] == "done" and progress["eta_seconds"] == 0 and progress["finished_at"]
        assert set(progress) >= {"queued", "sending", "sent", "failed", "bounced", "skipped", "total",
                                 "status", "rate", "eta_seconds", "started_at", "finished_at"}


def test_personal_links_are_the_tokens_the_token_module_makes_and_reads(app):
    from newsletter.engine.links import LinkSigner
    from newsletter.subscriptions import tokens

    with app.app_context():
        person = Subscriber(email="Åsa@exämple.se", status="confirmed")
        db.session.add(person)
        db.session.commit()
        values = personal_values(person)
        assert values["to"] == "Åsa@xn--exmple-cua.se"
        for purpose in ("unsubscribe", "preferences"):
            token = values[f"{purpose}_url"].rsplit("/", 1)[1]
            assert values[f"{purpose}_url"].startswith(f"http://newsletter.test/{purpose}/")
            assert tokens.read_subscriber_token(purpose, token).uid == person.uid
            signer = LinkSigner(app.config["SECRET_KEY"], purpose)
            for _ in range(3):  # the same bytes as itsdangerous, unless a second ticked between
                if signer.token(person.uid) == tokens.make_token(purpose, person.uid):
                    break
            else:
                raise AssertionError("the fast token differs from itsdangerous'")
        other = tokens.read_subscriber_token("preferences", values["preferences_url"].rsplit("/", 1)[1])
        assert other.uid == person.uid


def test_stale_claims_of_dead_or_silent_senders_are_taken_back(app):
    import subprocess
    import sys
    from datetime import timedelta

    from sqlalchemy import update

    from newsletter.engine.clock import utcnow

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = HOST
    with app.app_context():
        digest_id = _seed(6)
        delivery.start_send(digest_id)
        ids = list(db.session.execute(db.select(Delivery.id).order_by(Delivery.id)).scalars())
        claims = [
            ("sending", f"{host}:{gone.pid}:0:aa", utcnow()),  # a dead sender's message in flight
            ("queued", f"{host}:{gone.pid}:0:bb", utcnow()),  # a dead sender's reservation
            ("sending", f"{process_owner()}:cc", utcnow()),  # this process: alive
            ("sending", "elsewhere:123:0:dd", utcnow() - timedelta(hours=1)),  # silent for an hour
            ("sending", "elsewhere:124:0:ee", utcnow()),  # another machine, busy just now
        ]
        for delivery_id, (state, owner, when) in zip(ids, claims, strict=False):
            db.session.execute(update(Delivery).where(Delivery.id == delivery_id)
                               .values(state=state, claimed_by=owner, updated_at=when))
        db.session.commit()
        assert delivery.recover_stale(digest_id) == 3
        rows = {row.id: row for row in db.session.execute(db.select(Delivery)).scalars()}
        assert [(rows[i].state, rows[i].claimed_by) for i in ids[:2]] == [("queued", None)] * 2
        assert rows[ids[2]].claimed_by.endswith(":cc") and rows[ids[2]].state == "sending"
        assert (rows[ids[3]].state, rows[ids[3]].claimed_by) == ("queued", None)
        assert rows[ids[4]].claimed_by == "elsewhere:124:0:ee"


def test_a_big_list_is_pinned_in_chunks_while_the_first_ones_go_out(smtp_app, smtp_server, monkeypatch):
    """`send_digest` pins PIN_FIRST recipients, starts sending, and pins the rest a chunk at a
    time meanwhile; the send is not done before the last chunk, and everyone gets one copy."""
    monkeypatch.setattr(send, "PIN_FIRST", 20)
    monkeypatch.setattr(pinning, "PIN_CHUNK", 50)
    limits = []
    real_pin = pinning._pin
    monkeypatch.setattr(pinning, "_pin", lambda *a, **kw: limits.append(kw["limit"]) or real_pin(*a, **kw))
    with smtp_app.app_context():
        digest_id = _seed(300)
        smtp_app.config["SEND_INFLIGHT"] = 10
        counts = delivery.send_digest(digest_id, message_for=_factory())
        assert counts["sent"] == 300 and counts["total"] == 300
        digest = db.session.get(Digest, digest_id)
        assert digest.status == "done" and digest.recipient_count == 300
    assert limits[0] == 20 and set(limits[1:]) == {50} and len(limits) >= 6  # 20, then chunks of 50
    recipients = [m["To"] for m in smtp_server.messages()]
    assert len(recipients) == len(set(recipients)) == 300


def test_pinning_cut_short_is_finished_by_the_next_sender_with_the_same_recipients(smtp_app, smtp_server):
    """A crash after the first chunk: the send is not done while recipients are missing, and
    the next sender pins the rest: those confirmed before the send started, nobody later."""
    from datetime import timedelta

    from newsletter.engine.clock import utcnow

    with smtp_app.app_context():
        digest_id = _seed(40)
        assert delivery.start_send(digest_id, first=10) == 10  # ... and the process dies here
        assert not delivery.pinning_done(digest_id)
        db.session.execute(db.update(Delivery).values(state="sent"))
        db.session.commit()
        assert not delivery.finish_send(digest_id)  # 10 of 40 sent is not done
        db.session.add(Subscriber(email="later@example.se", status="confirmed",
                                  confirmed_at=utcnow() + timedelta(seconds=5)))
        db.session.commit()
        counts = delivery.send_digest(digest_id, message_for=_factory())
        assert counts["sent"] == 40 and counts["total"] == 40
        assert db.session.get(Digest, digest_id).recipient_count == 40
        assert db.session.get(Digest, digest_id).status == "done"
    recipients = [m["To"] for m in smtp_server.messages()]
    assert len(recipients) == len(set(recipients)) == 30  # the first 10 were marked sent above
    assert "later@example.se" not in recipients


def test_a_failed_claim_commits_nothing_and_the_connection_goes_on(app, database_url):
    """The claim writes the chunk before's results and takes the next chunk: on PostgreSQL one
    statement on an autocommit connection (or a transaction, with a retry or a bounce). When it
    fails, none of it is written, and the same connection claims again afterwards."""
    from datetime import timedelta

    import pytest

    from newsletter.engine.ledger import Results, claim_token, utcnow

    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's claim (SQLite's is a plain transaction, and enforces neither error)")

    def states() -> dict[str, int]:
        rows = db.session.execute(db.select(Delivery.state, db.func.count()).group_by(Delivery.state)).all()
        db.session.commit()
        return dict(rows)

    with app.app_context():
        digest_id = _seed(30)
        delivery.start_send(digest_id)
        ledger = delivery.app_ledger()
        conn = ledger.connect()
        token = claim_token()
        backoff = lambda attempts: timedelta(seconds=60)  # noqa: E731
        try:
            items = ledger.claim(conn, digest_id, token, after=0, size=10, now=utcnow())
            ids = [item.delivery_id for item in items]
            assert len(ids) == 10 and states() == {"queued": 20, "sending": 10}
            # a plain chunk (one statement on PostgreSQL), and one with a retry (a transaction)
            for done in (Results(sent=ids[:5]), Results(sent=ids[:5], retry=[(ids[5], 1, "x" * 600)])):
                with pytest.raises(Exception):  # noqa: B017 (LIMIT -1; a reply too long for its column)
                    ledger.claim(conn, digest_id, token, after=ids[-1], size=-1 if not done.retry else 10,
                                 now=utcnow(), done=done, backoff=backoff)
                assert states() == {"queued": 20, "sending": 10}  # neither the results nor a claim
            more = ledger.claim(conn, digest_id, token, after=ids[-1], size=10, now=utcnow(), backoff=backoff,
                                done=Results(sent=ids[:5], retry=[(ids[5], 1, "451 later")],
                                             bounced=[(ids[6], 1, "550 unknown")],
                                             untried=ids[7:]))
            assert [item.delivery_id for item in more] == sorted(item.delivery_id for item in more)
            assert len(more) == 10 and states() == {"sent": 5, "bounced": 1, "queued": 14, "sending": 10}
            # The ledger records the delivery; the bounce rule (delivery.bounces) takes the person off.
            assert db.session.get(Subscriber, items[6].recipient.id).status == "confirmed"
            assert record_send_bounces(digest_id) == 1
            assert db.session.get(Subscriber, items[6].recipient.id).status == "bounced"
        finally:
            conn.close()
