"""The send engine against a real SMTP server on loopback (aiosmtpd) with faults injected:
4xx retried, 5xx bounced, dropped connections, pause/resume, error storms, concurrent senders."""

from __future__ import annotations

import itertools
import threading

import pytest
from delivery_helpers import (
    digest_status,
    fault_server,
    first_try_fault,
    ledger,
    number,
    seed,
    wait_for,
)
from sqlalchemy import select

from newsletter import delivery
from newsletter.engine.sending import parse_window, seconds_until_window
from newsletter.engine.smtp import SMTPTransport
from newsletter.extensions import db
from newsletter.models import Admin, ConsentEvent, Delivery, Digest, Subscriber

FAST = {
    "SEND_CONNECTIONS": 4,
    "SEND_INFLIGHT": 10,
    "SEND_BATCH_SIZE": 200,
    "SEND_RETRY_SECONDS": 0.05,
    "SEND_RETRY_MAX_SECONDS": 0.2,
    "SEND_POLL_SECONDS": 0.1,
    "SEND_MAX_ERROR_RATE": 0.5,
    "SEND_PROCESSES": 1,
}


@pytest.fixture
def fast_app(make_app, smtp_server):
    return make_app(MAIL_URL=smtp_server.url, **FAST)


@pytest.mark.parametrize("processes", [1, 2], ids=["one process", "with a send worker"])
def test_4xx_retried_5xx_bounced_and_left_out_of_the_next_digest(fast_app, smtp_server, processes):
    """10 % answered 451 on the first try: all delivered once; 2 % answered 550: bounced,
    never retried, a consent event each, and not in the next digest. The same when a send
    worker (a process of its own, see send_worker) sends part of it."""
    handler = fault_server(smtp_server)
    soft = first_try_fault("451 4.7.1 greylisted, try later", lambda r: number(r) % 10 == 3)
    hard = {f"p{i}@example.se" for i in range(1000) if i % 50 == 7}
    refused: list[str] = []

    def fault(rcpt: str):
        if rcpt in hard:
            refused.append(rcpt)
            return "550 5.1.1 no such user"
        return soft(rcpt)

    handler.faults = fault
    with fast_app.app_context():
        digest_id = seed(1000)
        progress = delivery.send_digest(digest_id, processes=processes)
        assert progress["status"] == "done"
        assert progress["bounced"] == len(hard) == 20
        assert progress["sent"] == 1000 - 20 and progress["failed"] == 0
        counts = handler.counts()
        assert set(counts) == {f"p{i}@example.se" for i in range(1000)} - hard
        assert max(counts.values()) == 1
        assert sorted(refused) == sorted(hard)  # each hard bounce was tried once, never again
        retried = db.session.execute(select(Delivery).where(Delivery.digest_id == digest_id,
                                                            Delivery.attempts == 2)).scalars().all()
        assert len(retried) == 100 and all(row.state == "sent" for row in retried)
        bounced = db.session.execute(select(Subscriber).where(Subscriber.status == "bounced")).scalars().all()
        assert {s.email for s in bounced} == hard
        events = db.session.execute(select(ConsentEvent).where(ConsentEvent.kind == "bounce")).scalars().all()
        assert len(events) == 20 and {e.source for e in events} == {"system"}
        assert all("550" in e.detail["reply"] for e in events)
        # The next digest pins only confirmed subscribers: the bounced ones are not in it.
        next_id = seed(0, status="approved")
        assert delivery.start_send(next_id) == 1000 - 20
        pinned = set(db.session.execute(
            select(Subscriber.email).join(Delivery, Delivery.subscriber_id == Subscriber.id)
            .where(Delivery.digest_id == next_id)).scalars())
        assert not pinned & hard


def test_connection_dropped_every_1000_messages_the_send_continues(fast_app, smtp_server):
    handler = fault_server(smtp_server)
    handler.drop_every = 1000
    with fast_app.app_context():
        digest_id = seed(2100)
        progress = delivery.send_digest(digest_id)
        assert progress["status"] == "done" and progress["sent"] == 2100
    assert handler.dropped >= 2
    counts = handler.counts()
    assert len(counts) == 2100 and max(counts.values()) == 1


def test_pause_and_resume_five_times_exactly_one_copy_each(fast_app, smtp_server):
    handler = fault_server(smtp_server)
    handler.delay = 0.001
    n = 1500
    with fast_app.app_context():
        digest_id = seed(n)
        delivery.start_send(digest_id)
        delivery.launch_send(digest_id)
        for round_ in range(5):
            target = (round_ + 1) * n // 7
            assert wait_for(lambda t=target: handler.received() >= t, 30)
            delivery.pause_send(digest_id)
            delivery.wait_for_sends(timeout=5)  # every worker obeys within a second or two
            settled = handler.received()
            assert 0 < settled < n
            assert wait_for(lambda: ledger(digest_id).get("sending", 0) == 0, 2)
            assert handler.received() == settled  # nothing more after the pause
            in_ledger = ledger(digest_id)
            assert in_ledger.get("sent", 0) == settled  # the ledger knows each message sent
            delivery.resume_send(digest_id)
        delivery.wait_for_sends(timeout=60)
        assert digest_status(digest_id) == "done"
    counts = handler.counts()
    assert len(counts) == n and max(counts.values()) == 1


@pytest.mark.parametrize("processes", [1, 2], ids=["one process", "with a send worker"])
def test_error_storm_pauses_the_send_and_tells_the_admins(make_app, smtp_server, processes):
    app = make_app(MAIL_URL=smtp_server.url, **{**FAST, "SEND_MAX_ERROR_RATE": 0.2, "SEND_ERROR_WINDOW": 50})
    handler = fault_server(smtp_server)
    handler.faults = lambda rcpt: ("451 4.3.0 overloaded" if rcpt.startswith("p") and number(rcpt) >= 300
                                   else None)
    with app.app_context():
        digest_id = seed(1000, admins=("boss@example.se", "admin-en@example.se"))
        progress = delivery.send_digest(digest_id, processes=processes)
        assert progress["status"] == "paused"
        assert 100 <= progress["sent"] <= 300  # the storm stopped it soon after it began
        assert progress["queued"] + progress["failed"] == 1000 - progress["sent"]
        assert progress["queued"] >= 600 and progress["sending"] == 0  # most never tried
        digest = db.session.get(Digest, digest_id)
        assert "SEND_MAX_ERROR_RATE" in digest.error
    summaries = [m for m in smtp_server.messages() if m["To"] in ("boss@example.se", "admin-en@example.se")]
    assert {m["To"] for m in summaries} == {"boss@example.se", "admin-en@example.se"}
    subjects = {m["To"]: m["Subject"] for m in summaries}
    assert "för många fel" in subjects["boss@example.se"]
    assert "too many errors" in subjects["admin-en@example.se"]


def test_done_send_reports_to_the_admins(fast_app, smtp_server):
    handler = fault_server(smtp_server)
    handler.faults = lambda rcpt: "550 5.1.1 gone" if rcpt == "p4@example.se" else None
    with fast_app.app_context():
        digest_id = seed(20, admins=("boss@example.se",))
        db.session.add(Admin(email="gone@example.se", password_hash="x", active=False))
        db.session.commit()
        assert delivery.send_digest(digest_id)["status"] == "done"
    summary = [m for m in smtp_server.messages() if m["To"] == "boss@example.se"]
    assert len(summary) == 1
    assert summary[0]["Subject"] == f"Nyhetsbrev {digest_id} skickat till 19 prenumeranter"
    text = summary[0].get_body(preferencelist=("plain",)).get_content()
    assert "Studsade: 1" in text and "Skickade: 19" in text
    assert not smtp_server.messages(to="gone@example.se")


def test_two_senders_at_once_send_each_message_once(fast_app, smtp_server):
    handler = fault_server(smtp_server)
    soft = first_try_fault("421 4.7.0 too busy, closing", lambda r: number(r) % 17 == 0)
    handler.faults = soft
    with fast_app.app_context():
        digest_id = seed(1000)
    results = []

    def send():
        with fast_app.app_context():
            results.append(delivery.send_digest(digest_id)["status"])
            db.session.remove()

    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == ["done", "done"]
    counts = handler.counts()
    assert len(counts) == 1000 and max(counts.values()) == 1


def test_cancel_is_obeyed_and_sends_nothing_more(fast_app, smtp_server):
    handler = fault_server(smtp_server)
    handler.delay = 0.002
    with fast_app.app_context():
        digest_id = seed(2000)
        delivery.start_send(digest_id)
        delivery.launch_send(digest_id)
        assert wait_for(lambda: handler.received() >= 200, 30)
        delivery.cancel_send(digest_id)
        delivery.wait_for_sends(timeout=5)
        settled = handler.received()
        progress = delivery.send_progress(digest_id)
        assert progress["status"] == "cancelled" and progress["sending"] == 0
        assert progress["sent"] == settled < 2000
        with pytest.raises(ValueError):
            delivery.resume_send(digest_id)


def test_rate_limit_and_window(make_app, smtp_server):
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    app = make_app(MAIL_URL=smtp_server.url, **{**FAST, "SEND_RATE": 200})
    fault_server(smtp_server)
    with app.app_context():
        digest_id = seed(300)
        import time

        began = time.monotonic()
        assert delivery.send_digest(digest_id)["sent"] == 300
        assert time.monotonic() - began >= 1.2  # 300 at 200/s (a burst of 20 at most)
    window = parse_window("07:00-21:00")
    zone = ZoneInfo("Europe/Stockholm")
    assert seconds_until_window(window, datetime(2026, 11, 25, 12, 0, tzinfo=UTC), zone) == 0
    assert seconds_until_window(window, datetime(2026, 11, 25, 5, 0, tzinfo=UTC), zone) == 3600
    night = parse_window("22:00-06:00")
    assert seconds_until_window(night, datetime(2026, 11, 25, 23, 30, tzinfo=UTC), zone) == 0


def test_with_a_rate_limit_the_ledger_hears_of_each_half_second(make_app, smtp_server):
    """A chunk's results are written when it is done. At SEND_RATE a full SEND_INFLIGHT chunk
    would take 2.5 s here; the chunks are cut to about half a second of a connection's share,
    so the progress and the in-flight rows stay fresh."""
    import time

    app = make_app(MAIL_URL=smtp_server.url, **{**FAST, "SEND_RATE": 40, "SEND_CONNECTIONS": 2,
                                                   "SEND_INFLIGHT": 50})
    handler = fault_server(smtp_server)
    with app.app_context():
        digest_id = seed(100)
        delivery.start_send(digest_id)
        delivery.launch_send(digest_id)
        try:
            assert wait_for(lambda: handler.received() > 0, 10)
            first = time.monotonic()
            assert wait_for(lambda: delivery.send_progress(digest_id)["sent"] > 0, 5)
            assert time.monotonic() - first < 1.5
            # and never more than a chunk of half a second in flight per connection
            assert delivery.send_progress(digest_id)["sending"] <= 2 * 10
        finally:
            delivery.cancel_send(digest_id)
            delivery.wait_for_sends(timeout=10)


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "plain"])
def test_smtp_transport_checks_every_reply_and_reconnects(smtp_server, pipelining):
    from newsletter.engine.smtp import MailError, SMTPTransport

    handler = fault_server(smtp_server)
    handler.pipelining = pipelining
    replies = {"bad@example.se": "550 5.1.1 no such user", "later@example.se": "451 4.7.1 later",
               "closing@example.se": "421 4.3.2 shutting down"}
    handler.faults = replies.get
    message = b"Subject: hej\r\nFrom: a@example.se\r\nTo: x@example.se\r\n\r\n.leading dot\r\nbody\r\n"
    transport = SMTPTransport(smtp_server.url)
    try:
        transport.send("a@example.se", "ok1@example.se", message)
        assert transport.pipelining is pipelining
        first = transport._conn
        with pytest.raises(MailError) as refused:
            transport.send("a@example.se", "bad@example.se", message)
        assert refused.value.code == 550 and refused.value.permanent
        with pytest.raises(MailError) as later:
            transport.send("a@example.se", "later@example.se", message)
        assert later.value.code == 451 and not later.value.permanent
        assert transport._conn is first  # refusals keep the connection (RSET)
        with pytest.raises(MailError) as closing:
            transport.send("a@example.se", "closing@example.se", message)
        assert closing.value.code == 421 and transport._conn is None  # 421: the connection is gone
        transport.send("a@example.se", "ok2@example.se", message)  # a new connection
        handler.drop_every = 1
        with pytest.raises(MailError) as dropped:
            transport.send("a@example.se", "ok3@example.se", message)
        assert dropped.value.code is None and transport._conn is None
        handler.drop_every = 0
        transport.send("a@example.se", "ok4@example.se", message)
    finally:
        transport.close()
    assert sorted(handler.counts()) == ["ok1@example.se", "ok2@example.se", "ok4@example.se"]
    assert all(b"\r\n.leading dot\r\n" in data for _, _, data in handler.messages)  # dot-stuffing undone


def test_a_transport_bug_mid_stream_retries_the_messages_it_held(fast_app, smtp_server, monkeypatch):
    """An unexpected exception out of the transport (not a MailError): the messages handed to
    it without an outcome are retried on a new connection, each recipient still gets one copy."""

    fault_server(smtp_server)
    real = SMTPTransport.send_many
    calls = itertools.count(1)  # numbers the streams, also when several connections start at once

    def buggy(self, sender, messages, **kwargs):
        call = next(calls)
        for n, outcome in enumerate(real(self, sender, messages, **kwargs)):
            if call == 2 and n == 3:
                raise RuntimeError("transport bug")
            yield outcome

    monkeypatch.setattr(SMTPTransport, "send_many", buggy)
    with fast_app.app_context():
        digest_id = seed(100)
        progress = delivery.send_digest(digest_id)
        assert progress["status"] == "done" and progress["sent"] == 100
        retried = db.session.execute(select(Delivery).where(
            Delivery.digest_id == digest_id, Delivery.attempts == 2)).scalars().all()
        assert retried and all(row.last_reply == "250" for row in retried)
    counts = smtp_server.handler.counts()
    assert set(counts) == {f"p{i}@example.se" for i in range(100)}
    assert sum(counts.values()) - 100 <= len(retried)  # only the ones in flight may repeat


# --- database errors while sending -------------------------------------------------------------


def _failing(monkeypatch, name: str, calls: set[int]):
    """Make Ledger.<name> raise on the given calls (1-based, counted over all threads)."""
    from newsletter.engine.ledger import Ledger

    real = getattr(Ledger, name)
    counter = itertools.count(1)

    def flaky(self, *args, **kwargs):
        if next(counter) in calls:
            raise RuntimeError(f"database away during {name}")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Ledger, name, flaky)


def test_a_failed_claim_keeps_what_was_sent_and_sends_nobody_twice(make_app, smtp_server, monkeypatch):
    """The results of a chunk go in with the next claim; when that claim fails (and the hand-back
    after it too), they are written once the database answers: no copy is sent again."""
    app = make_app(MAIL_URL=smtp_server.url, **{**FAST, "SEND_CONNECTIONS": 1})
    handler = fault_server(smtp_server)
    _failing(monkeypatch, "claim", {3, 4})
    _failing(monkeypatch, "release_claim", {1})
    with app.app_context():
        digest_id = seed(60)
        progress = delivery.send_digest(digest_id)
        assert progress["status"] == "done" and progress["sent"] == 60
        assert ledger(digest_id) == {"sent": 60}
    counts = handler.counts()
    assert len(counts) == 60 and max(counts.values()) == 1


def test_postgresql_connections_cut_mid_send_lose_and_double_nobody(make_app, smtp_server, database_url):
    """The senders' own PostgreSQL connections (autocommit: a claim is one statement) are cut
    by the server twice mid-send, as a restart or a failover would: they reconnect, write what
    they had sent, and everyone gets exactly one copy."""
    if not database_url.startswith("postgresql"):
        pytest.skip("server-side connection kills are a PostgreSQL matter")
    from sqlalchemy import text

    app = make_app(MAIL_URL=smtp_server.url, **FAST)
    handler = fault_server(smtp_server)
    handler.delay = 0.002

    def cut() -> int:
        with db.engine.connect() as conn:
            killed = conn.execute(text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()")).scalar_one()
            conn.commit()
        return killed

    with app.app_context():
        digest_id = seed(1500)
        delivery.start_send(digest_id)
        delivery.launch_send(digest_id)
        db.session.remove()  # as a request ends: this test's own connection is not cut
        for at in (300, 900):
            assert wait_for(lambda at=at: handler.received() >= at, 30)
            assert cut() >= 4  # the senders' connections, at least
        delivery.wait_for_sends(timeout=60)
        assert digest_status(digest_id) == "done"
        assert ledger(digest_id) == {"sent": 1500}
    counts = handler.counts()
    assert len(counts) == 1500 and max(counts.values()) == 1


def test_a_claim_given_up_by_a_live_process_is_taken_back(app):
    from sqlalchemy import update

    from newsletter.engine import ledger as send_ledger

    with app.app_context():
        digest_id = seed(3)
        delivery.start_send(digest_id)
        token = send_ledger.claim_token()
        db.session.execute(update(Delivery).values(state="sending", claimed_by=token))
        db.session.commit()
        assert delivery.recover_stale(digest_id) == 0  # this process is alive: its claim too
        send_ledger.abandon(token)
        assert delivery.recover_stale(digest_id) == 3
        assert ledger(digest_id) == {"queued": 3}
