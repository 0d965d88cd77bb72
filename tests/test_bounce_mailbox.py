"""Bounces, complaints and mailto unsubscribes that come back by mail, read from a real mailbox.

A digest goes out over a real SMTP server (aiosmtpd) with VERP envelope senders; the reports
that come back (a DSN Postfix really wrote, other MTAs' formats from tests/fixtures/inbound)
are put into a real Dovecot started for the tests, and `flask bounces poll` / the scheduler's
job reads them over IMAP or POP3.
"""

from __future__ import annotations

import shutil
from email import message_from_bytes, policy
from urllib.parse import unquote, urlsplit

import pytest
from admin_helpers import logged_in
from delivery_helpers import ledger, seed
from inbound_helpers import Dovecot, sample
from sqlalchemy import func, insert, select

from newsletter import delivery, scheduler
from newsletter.extensions import db
from newsletter.inbound import poll
from newsletter.inbound.mailbox import MailboxError
from newsletter.models import (
    Article,
    AuditEvent,
    ConsentEvent,
    Delivery,
    Digest,
    Subscriber,
    digest_articles,
    utcnow,
)

BOUNCES = "bounces@lists.norrsken.example"
MAILTO = "avregistrera@norrsken.example"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("dovecot") is None,
                       reason="Dovecot is not installed (.ci/run installs dovecot-imapd)"),
]


@pytest.fixture(scope="module")
def dovecot(tmp_path_factory):
    server = Dovecot(tmp_path_factory.mktemp("dovecot"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mailbox_user(request):
    """A fresh mailbox per test (Dovecot makes it at the first login)."""
    return f"bounces-{abs(hash(request.node.nodeid)) % 10**10}"


@pytest.fixture
def sent(make_app, smtp_server, dovecot, mailbox_user):
    """An app with VERP and a bounce mailbox, and a digest sent to p0..p3 over real SMTP:
    (app, digest id, {address: (envelope sender, message)})."""
    app = make_app(MAIL_URL=smtp_server.url, BOUNCE_ADDRESS=BOUNCES, UNSUBSCRIBE_MAILTO=MAILTO,
                   BOUNCE_MAILBOX_URL=dovecot.url(mailbox_user))
    with app.app_context():
        digest_id = seed(4)
        assert delivery.send_digest(digest_id)["sent"] == 4
    with smtp_server.handler.lock:
        received = {rcpts[0]: (mail_from, data) for mail_from, rcpts, data in smtp_server.handler.messages}
    assert len(received) == 4
    return app, digest_id, received


def poll_once(app) -> dict[str, int]:
    with app.app_context():
        return poll.poll_mailbox()


def subscriber(app, email: str) -> Subscriber:
    with app.app_context():
        person = db.session.execute(select(Subscriber).where(Subscriber.email == email)).scalar_one()
        db.session.expunge(person)
        return person


def events(app, email: str) -> list[tuple[str, str, dict]]:
    with app.app_context():
        rows = db.session.execute(
            select(ConsentEvent.kind, ConsentEvent.source, ConsentEvent.detail)
            .join(Subscriber, Subscriber.id == ConsentEvent.subscriber_id)
            .where(Subscriber.email == email).order_by(ConsentEvent.id)).all()
        return [tuple(row) for row in rows]


def delivery_state(app, digest_id: int, email: str) -> str:
    with app.app_context():
        return db.session.execute(
            select(Delivery.state).join(Subscriber, Subscriber.id == Delivery.subscriber_id)
            .where(Delivery.digest_id == digest_id, Subscriber.email == email)).scalar_one()


def message_id(raw: bytes) -> str:
    return message_from_bytes(raw, policy=policy.default)["Message-ID"].strip("<>")


def notes(app) -> list[AuditEvent]:
    with app.app_context():
        query = select(AuditEvent).where(AuditEvent.action == poll.NOTE_ACTION)
        rows = list(db.session.execute(query).scalars())
        db.session.expunge_all()
        return rows


def test_each_message_leaves_with_its_own_signed_envelope_sender(sent):
    app, digest_id, received = sent
    senders = {address: mail_from for address, (mail_from, _) in received.items()}
    assert len(set(senders.values())) == 4
    with app.app_context():
        from newsletter.mail.compose import verp_signer

        signer = verp_signer()
        for address, mail_from in senders.items():
            assert mail_from.startswith("bounces+") and mail_from.endswith("@lists.norrsken.example")
            assert address.split("@")[0] not in mail_from  # no address in clear
            assert len(mail_from.split("@")[0]) <= 64
            token = signer.read(mail_from)
            person = db.session.execute(select(Subscriber).where(Subscriber.email == address)).scalar_one()
            assert token == (digest_id, person.id)
            assert signer.read(mail_from.upper()) == token  # a relay may change the case
            forged = mail_from.replace(f"{person.id:x}.", f"{person.id + 1:x}.", 1)
            assert signer.read(forged) is None


def test_a_hard_bounce_marks_the_delivery_and_the_subscriber_bounced_and_no_send_includes_them(
        sent, dovecot, mailbox_user):
    app, digest_id, received = sent
    verp, raw = received["p1@example.se"]
    dovecot.deliver(mailbox_user, sample("postfix-unknown-user.eml", verp=verp, email="p1@example.se"))

    assert poll_once(app)["bounce"] == 1

    assert subscriber(app, "p1@example.se").status == "bounced"
    assert delivery_state(app, digest_id, "p1@example.se") == "bounced"
    assert delivery_state(app, digest_id, "p2@example.se") == "sent"
    (kind, source, detail), = [e for e in events(app, "p1@example.se") if e[0] == "bounce"]
    assert (source, detail["permanent"], detail["status"]) == ("email", True, "5.1.1")
    assert "unknown user" in detail["reason"]
    assert dovecot.inbox(mailbox_user) == []  # handled, so deleted
    with app.app_context():
        assert ledger(digest_id) == {"sent": 3, "bounced": 1}
        second = _another_digest()
        assert delivery.send_digest(second)["sent"] == 3  # p1 is left out
        assert db.session.execute(select(func.count()).select_from(Delivery).join(Subscriber).where(
            Delivery.digest_id == second, Subscriber.email == "p1@example.se")).scalar_one() == 0


def test_a_bounce_names_its_recipient_through_verp_even_without_a_report(sent, dovecot, mailbox_user):
    """qmail writes no DSN and names a forwarding alias: only the VERP address says who."""
    app, digest_id, received = sent
    verp, _ = received["p2@example.se"]
    dovecot.deliver(mailbox_user, sample("qmail-no-dsn.eml", verp=verp))
    assert poll_once(app)["bounce"] == 1
    assert subscriber(app, "p2@example.se").status == "bounced"
    assert delivery_state(app, digest_id, "p2@example.se") == "bounced"


def test_a_soft_bounce_is_counted_and_changes_nothing_else(sent, dovecot, mailbox_user):
    app, digest_id, received = sent
    verp, raw = received["p3@example.se"]
    dovecot.deliver(mailbox_user, sample("exim-delayed.eml", verp=verp, email="p3@example.se",
                                         message_id=message_id(raw)))
    assert poll_once(app)["bounce"] == 1
    assert subscriber(app, "p3@example.se").status == "confirmed"
    assert delivery_state(app, digest_id, "p3@example.se") == "sent"
    (kind, source, detail), = [e for e in events(app, "p3@example.se") if e[0] == "bounce"]
    assert (source, detail["permanent"], detail["status"]) == ("email", False, "4.2.2")
    assert dovecot.inbox(mailbox_user) == []


def test_a_complaint_takes_the_subscriber_off_the_list(sent, dovecot, mailbox_user):
    app, digest_id, received = sent
    verp, raw = received["p0@example.se"]
    dovecot.deliver(mailbox_user, sample("arf-complaint.eml", verp=verp, email="p0@example.se",
                                         message_id=message_id(raw)))
    assert poll_once(app)["complaint"] == 1
    assert subscriber(app, "p0@example.se").status == "complained"
    (kind, source, detail), = [e for e in events(app, "p0@example.se") if e[0] == "complaint"]
    assert (source, detail["reason"]) == ("email", "abuse")


def test_an_out_of_office_reply_is_dropped(sent, dovecot, mailbox_user):
    app, digest_id, received = sent
    verp, raw = received["p2@example.se"]
    before = events(app, "p2@example.se")
    dovecot.deliver(mailbox_user, sample("outlook-out-of-office.eml", verp=verp, email="p2@example.se",
                                         message_id=message_id(raw)))
    assert poll_once(app)["ignored"] == 1
    assert subscriber(app, "p2@example.se").status == "confirmed"
    assert events(app, "p2@example.se") == before
    assert dovecot.inbox(mailbox_user) == []


def test_a_mailto_unsubscribe_unsubscribes_with_source_email(sent, dovecot, mailbox_user):
    app, digest_id, received = sent
    _, raw = received["p2@example.se"]
    header = message_from_bytes(raw, policy=policy.default)["List-Unsubscribe"]
    mailto = next(part.strip(" <>") for part in header.split(",") if "mailto:" in part)
    target = urlsplit(mailto)
    assert target.path == MAILTO
    subject = unquote(target.query.removeprefix("subject="))
    assert subject.startswith("unsubscribe ")
    dovecot.deliver(mailbox_user, sample("gmail-mailto-unsubscribe.eml", email="p2@example.se",
                                         mailto=MAILTO, subject=subject))
    assert poll_once(app)["unsubscribe"] == 1
    assert subscriber(app, "p2@example.se").status == "unsubscribed"
    assert events(app, "p2@example.se")[-1][:2] == ("unsubscribe", "email")


def test_what_cannot_be_read_is_left_with_one_note_and_a_second_poll_finds_nothing_new(
        sent, dovecot, mailbox_user):
    app, digest_id, received = sent
    verp, raw = received["p1@example.se"]
    dovecot.deliver(mailbox_user, sample("unreadable.eml"))
    dovecot.deliver(mailbox_user, sample("postfix-unknown-user.eml", verp=verp, email="p1@example.se"))
    assert poll_once(app) == {"bounce": 1, "complaint": 0, "unsubscribe": 0, "ignored": 0, "unreadable": 1}
    (left,) = dovecot.inbox(mailbox_user)
    assert b"garbled-0001@relay.example.net" in left
    (note,) = notes(app)
    assert note.actor == poll.NOTE_ACTOR
    assert note.detail["subject"] == "Re: your mail" and note.detail["reason"]
    events_before = events(app, "p1@example.se")

    assert poll_once(app) == {"bounce": 0, "complaint": 0, "unsubscribe": 0, "ignored": 0, "unreadable": 1}
    assert len(notes(app)) == 1
    assert events(app, "p1@example.se") == events_before
    assert len(dovecot.inbox(mailbox_user)) == 1

    # The dashboard says so, and the audit log shows the note.
    client = logged_in(app)
    page = client.get("/admin/").get_data(as_text=True)
    assert "1 meddelande i studsbrevlådan gick inte att läsa" in page  # the admin's language: Swedish
    audit_page = client.get("/admin/audit?action=bounce_mailbox.unreadable").get_data(as_text=True)
    assert "Re: your mail" in audit_page


def test_a_report_handled_twice_is_recorded_once(sent, dovecot, mailbox_user):
    """A poll that died after recording but before deleting: the next one changes nothing."""
    app, digest_id, received = sent
    verp, _ = received["p1@example.se"]
    report = sample("postfix-unknown-user.eml", verp=verp, email="p1@example.se")
    dovecot.deliver(mailbox_user, report)
    dovecot.deliver(mailbox_user, report)
    assert poll_once(app)["bounce"] == 2
    assert len([e for e in events(app, "p1@example.se") if e[0] == "bounce"]) == 1
    assert delivery_state(app, digest_id, "p1@example.se") == "bounced"


def test_without_verp_the_report_fields_name_the_recipient_and_a_forged_token_is_not_trusted(
        make_app, dovecot, mailbox_user):
    app = make_app(BOUNCE_ADDRESS=BOUNCES, BOUNCE_MAILBOX_URL=dovecot.url(mailbox_user))
    with app.app_context():
        digest_id = seed(2)
        delivery.send_digest(digest_id)
    forged = "bounces+1.1.aaaaaaaaaaaaaaaa@lists.norrsken.example"  # names p0, signature wrong
    dovecot.deliver(mailbox_user, sample("postfix-unknown-user.eml", verp=forged, email="p1@example.se"))
    assert poll_once(app)["bounce"] == 1
    assert subscriber(app, "p0@example.se").status == "confirmed"
    assert subscriber(app, "p1@example.se").status == "bounced"


def test_the_mailbox_is_read_over_pop3_and_by_the_scheduler_job(sent, dovecot, mailbox_user):
    app, digest_id, received = sent
    verp, _ = received["p1@example.se"]
    dovecot.deliver(mailbox_user, sample("postfix-unknown-user.eml", verp=verp, email="p1@example.se"))
    dovecot.deliver(mailbox_user, sample("unreadable.eml"))
    app.config["BOUNCE_MAILBOX_URL"] = dovecot.url(mailbox_user, "pop3")
    scheduler.bounce_mailbox_job(app)
    assert subscriber(app, "p1@example.se").status == "bounced"
    assert dovecot.pop3_count(mailbox_user) == 1  # the unreadable one stays
    jobs = {job.id for job in scheduler.build_scheduler(app, scheduler=_Collecting()).jobs}
    assert "bounce-mailbox" in jobs


def test_the_poll_command_says_why_it_cannot_read_the_mailbox(make_app, dovecot, mailbox_user):
    app = make_app(BOUNCE_MAILBOX_URL=dovecot.url(mailbox_user).replace("hemligt", "fel"))
    result = app.test_cli_runner().invoke(args=["bounces", "poll"])
    assert result.exit_code == 1
    assert "IMAP 127.0.0.1" in result.output
    with app.app_context(), pytest.raises(MailboxError):
        poll.poll_mailbox()
    app.config["BOUNCE_MAILBOX_URL"] = dovecot.url(mailbox_user)
    result = app.test_cli_runner().invoke(args=["bounces", "poll"])
    assert result.exit_code == 0, result.output
    assert "0 bounce" in result.output


class _Collecting:
    """Stands in for APScheduler's scheduler: keeps the jobs it is given."""

    def __init__(self):
        self.jobs = []

    def add_job(self, func, trigger=None, **kwargs):
        self.jobs.append(type("Job", (), {"id": kwargs.get("id")}))


def _another_digest() -> int:
    """A second approved digest (its own article), for everyone confirmed now."""
    now = utcnow()
    article = Article(source_id="https://example.se/b/2", title="Ny cykelbana längs älven",
                      url="https://example.se/b/2", summary="Cykelbanan öppnar i maj.", published_at=now)
    db.session.add(article)
    digest = Digest(status="approved", subject_sv="Veckans nyheter 2", subject_en="This week's news 2",
                    compiled_for=now)
    db.session.add(digest)
    db.session.flush()
    db.session.execute(insert(digest_articles),
                       [{"digest_id": digest.id, "article_id": article.id, "position": 0}])
    db.session.commit()
    return digest.id
