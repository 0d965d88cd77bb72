"""imports.import_csv: the layouts we read, the rows we refuse, consent evidence, atomicity."""

from __future__ import annotations

import io

import pytest
from conftest import FIXTURES
from sqlalchemy import func, select, text
from subs_helpers import count, subscriber

from newsletter import subscriptions
from newsletter.extensions import db
from newsletter.models import ConsentEvent, QueuedEmail, Subscriber, subscriber_topics
from newsletter.subscriptions import imports
from newsletter.subscriptions.consent import email_hash
from newsletter.subscriptions.imports import ImportFailed, import_csv


def run_import(data: bytes | str, *, confirmed=False, filename="list.csv", **options):
    stream = io.BytesIO(data.encode("utf-8") if isinstance(data, str) else data)
    return import_csv(stream, confirmed=confirmed, source="cli", filename=filename, **options)


def run_fixture(name: str, **options):
    with (FIXTURES / name).open("rb") as stream:
        return import_csv(stream, source="cli", filename=name, **{"confirmed": False, **options})


def table_counts() -> dict[str, int]:
    db.session.expire_all()
    return {
        "subscribers": count(Subscriber), "queued": count(QueuedEmail), "events": count(ConsentEvent),
        "topics": db.session.execute(select(func.count()).select_from(subscriber_topics)).scalar_one(),
    }


def events_of(email: str) -> list[ConsentEvent]:
    person = subscriber(email)
    query = select(ConsentEvent).where(ConsentEvent.subscriber_id == person.id).order_by(ConsentEvent.id)
    return list(db.session.execute(query).scalars())


def test_the_fixture_file_imports_the_good_rows_and_reports_each_bad_one_by_line(app):
    with app.app_context():
        report = run_fixture("subscribers.csv")
        assert (report.layout, report.rows, report.added, report.updated, report.skipped) == (
            "newsletter", 9, 4, 0, 5)
        assert [line for line, _ in report.errors] == [5, 6, 8, 10, 11]
        reasons = dict(report.errors)
        assert reasons[5] == "duplicate of line 2"
        assert "invalid address" in reasons[6]
        assert "line break" in reasons[8]  # the quoted "lisa@example.se\nBcc: …" (lines 8-9)
        assert reasons[10] == "unknown language 'xx'"
        assert reasons[11] == "empty address"
        assert subscriber("victim@example.org") is None and subscriber("lisa@example.se") is None
        anna = subscriber("anna.lindqvist@example.se")
        assert (anna.status, anna.language, anna.name) == ("pending", "sv", "Anna Lindqvist")
        assert subscriptions.topic_slugs(anna) == ["nyheter", "pressmeddelanden"]
        maria = subscriber("maria.oberg@example.se")
        assert (maria.name, maria.language) == ("Maria Öberg", "en")
        assert subscriptions.topic_slugs(maria) == ["blogg"]
        assert subscriber("jörgen@exempel.se").name == "Jörgen Ström"
        assert subscriptions.topic_slugs(subscriber("erik.nilsson@example.se")) == []  # = all topics
        # One confirmation each, queued (rendered when sent), and one ledger event each.
        queued = db.session.execute(select(QueuedEmail)).scalars().all()
        assert sorted(q.to_addr for q in queued) == sorted(
            ["anna.lindqvist@example.se", "erik.nilsson@example.se", "maria.oberg@example.se",
             "jörgen@exempel.se"])
        assert {(q.kind, q.message) for q in queued} == {("confirm", b"")}
        assert anna.confirmation_sent_at is not None
        [event] = events_of("anna.lindqvist@example.se")
        assert (event.kind, event.source) == ("import", "import")
        assert event.detail["file"] == "subscribers.csv" and event.detail["layout"] == "newsletter"
        assert event.detail["line"] == 2 and event.detail["confirmed"] is False
        assert event.email_hash == email_hash("anna.lindqvist@example.se")


def test_a_mailchimp_export_keeps_the_opt_in_and_confirmation_evidence(app):
    with app.app_context():
        report = run_fixture("mailchimp-export.csv")
        assert (report.layout, report.added, report.errors) == ("mailchimp", 2, [])
        karin = subscriber("karin.holm@example.se")
        assert karin.name == "Karin Holm" and karin.status == "pending"
        assert subscriptions.topic_slugs(karin) == ["nyheter"]  # TAGS "nyheter" names a topic
        [event] = events_of("karin.holm@example.se")
        assert event.detail["optin_time"] == "2025-03-02 10:11:12"
        assert event.detail["optin_ip"] == "192.0.2.10"
        assert event.detail["confirm_time"] == "2025-03-02 10:14:40"
        assert event.detail["confirm_ip"] == "192.0.2.10"
        assert event.detail["layout"] == "mailchimp" and event.detail["file"] == "mailchimp-export.csv"
        assert events_of("olle.berg@example.se")[0].detail["optin_ip"] == "198.51.100.7"


def test_a_listmonk_export_leaves_out_the_blocklisted(app):
    with app.app_context():
        report = run_fixture("listmonk-export.csv")
        assert (report.layout, report.added, report.skipped, report.errors) == ("listmonk", 1, 1, [])
        assert report.notices == [(3, "blocklisted in the listmonk export: not imported")]
        assert subscriber("blocked.person@example.se") is None
        assert subscriber("sara.ek@example.se").name == "Sara Ek"
        [event] = events_of("sara.ek@example.se")
        assert event.detail["listmonk_uuid"] == "8a7c7f3e-1a2b-4c3d-9e8f-0a1b2c3d4e5f"
        assert event.detail["created_at"].startswith("2025-05-01 09:00:00")


def test_confirmed_import_confirms_at_once_and_records_the_command_and_file(app):
    with app.app_context():
        report = run_fixture("mailchimp-export.csv", confirmed=True,
                             command="flask subscribers import --confirmed", actor="cli:ops")
        assert (report.added, report.confirmations_queued) == (2, 0)
        olle = subscriber("olle.berg@example.se")
        assert olle.status == "confirmed" and olle.confirmed_at is not None
        assert count(QueuedEmail) == 0
        [event] = events_of("olle.berg@example.se")
        assert (event.kind, event.source, event.detail["confirmed"]) == ("import", "import", True)
        assert event.detail["consent_source"] == "flask subscribers import --confirmed mailchimp-export.csv"
        assert event.detail["actor"] == "cli:ops" and event.detail["confirm_ip"] == "198.51.100.7"


def test_an_import_never_downgrades_or_resubscribes_anyone(app):
    with app.app_context():
        for email in ("gone@example.se", "bounced@example.se", "pending@example.se", "happy@example.se"):
            subscriptions.add_subscriber(email, confirmed=email == "happy@example.se", language="en",
                                         topics=["blogg"])
        subscriptions.unsubscribe(subscriber("gone@example.se"), source="email")
        subscriber("bounced@example.se").status = "bounced"
        db.session.commit()
        before = table_counts()
        rows = "email,status,language,topics\n" + "".join(
            f"{e},confirmed,sv,nyheter\n" for e in ("gone@example.se", "bounced@example.se",
                                                    "pending@example.se", "happy@example.se"))
        report = run_import(rows)
        assert (report.added, report.updated, report.skipped) == (0, 0, 4)
        assert sorted(report.notices) == [(2, "unsubscribed here: not subscribed again by an import"),
                                          (3, "bounced here: not subscribed again by an import")]
        assert table_counts() == before  # no resent confirmation, no changed topics or language
        report = run_import(rows, confirmed=True)
        assert (report.added, report.updated, report.skipped) == (0, 1, 3)
        statuses = {e: subscriber(e).status for e in ("gone@example.se", "bounced@example.se",
                                                      "pending@example.se", "happy@example.se")}
        assert statuses == {"gone@example.se": "unsubscribed", "bounced@example.se": "bounced",
                            "pending@example.se": "confirmed", "happy@example.se": "confirmed"}
        confirmed_now = subscriber("pending@example.se")  # confirmed, and its choices kept
        assert confirmed_now.language == "en" and subscriptions.topic_slugs(confirmed_now) == ["blogg"]
        assert events_of("pending@example.se")[-1].kind == "confirm"
        assert events_of("pending@example.se")[-1].source == "import"


def test_our_export_status_is_respected_pending_stays_pending_and_opt_outs_stay_out(app):
    with app.app_context():
        report = run_import(
            "email,status,language,topics,name,created_at,confirmed_at\n"
            "a@example.se,confirmed,sv,nyheter,A,2026-01-01T00:00:00+00:00,2026-01-01T00:05:00+00:00\n"
            "b@example.se,pending,en,,B,2026-01-02T00:00:00+00:00,\n"
            "c@example.se,unsubscribed,sv,,C,2026-01-03T00:00:00+00:00,\n"
            "d@example.se,maybe,sv,,D,,\n", confirmed=True)
        assert (report.added, report.confirmations_queued) == (2, 1)
        assert report.notices == [(4, "unsubscribed in the export: not imported")]
        assert report.errors == [(5, "unknown status 'maybe'")]
        assert subscriber("a@example.se").status == "confirmed"
        assert subscriber("b@example.se").status == "pending"  # never confirmed: --confirmed cannot say so
        assert subscriber("c@example.se") is None
        assert events_of("a@example.se")[0].detail["confirmed_at"] == "2026-01-01T00:05:00+00:00"


@pytest.mark.parametrize(("data", "encoding"), [
    ("\ufeffemail;name;language\nåsa@example.se;Åsa Öst;sv\n".encode(), "utf-8-sig"),
    ("email\tname\nåsa@example.se\tÅsa Öst\n".encode("utf-16"), "utf-16"),
    ("email,name\r\nåsa@example.se,Åsa Öst\r\n".encode("cp1252"), "cp1252"),
])
def test_bom_delimiters_and_a_windows_1252_file_are_read(app, data, encoding):
    with app.app_context():
        report = run_import(data)
        assert (report.encoding, report.added, report.errors) == (encoding, 1, [])
        assert subscriber("åsa@example.se").name == "Åsa Öst"
        assert bool(report.warnings) == (encoding == "cp1252")  # the fallback is said out loud


def test_a_file_that_stops_being_utf8_half_way_leaves_nothing_behind(app):
    with app.app_context():
        subscriptions.add_subscriber("already@example.se")
        before = table_counts()
        good = "email,name\n" + "".join(f"p{i}@example.se,Person {i}\n" for i in range(4000))
        data = good.encode() + "late@example.se,Ärlig\n".encode("cp1252")
        assert len(good) > imports.HEAD_BYTES  # past what the encoding is guessed from
        with pytest.raises(ImportFailed, match="not valid utf-8 after line"):
            run_import(data, chunk_size=500)
        assert table_counts() == before


class BreaksHalfWay(io.RawIOBase):
    """A file whose disk fails after `limit` bytes; it also refuses to be read whole."""

    def __init__(self, data: bytes, limit: int):
        self.data, self.limit, self.position = data, limit, 0

    def readable(self):
        return True

    def read(self, size=-1):
        assert size is not None and size >= 0, "the import must stream, not read the whole file"
        if self.position >= self.limit:
            raise OSError(5, "Input/output error")
        chunk = self.data[self.position:self.position + size]
        self.position += len(chunk)
        return chunk


def test_a_file_unreadable_half_way_leaves_nothing_behind(app):
    with app.app_context():
        before = table_counts()
        data = ("email\n" + "".join(f"p{i}@example.se\n" for i in range(8000))).encode()
        with pytest.raises(ImportFailed, match="Input/output error"):
            import_csv(BreaksHalfWay(data, limit=80_000), confirmed=False, source="cli", filename="x.csv",
                       chunk_size=1000)
        assert table_counts() == before


def _install_failing_trigger(email: str) -> None:
    if db.engine.dialect.name == "postgresql":
        db.session.execute(text(
            "CREATE OR REPLACE FUNCTION fail_import() RETURNS trigger AS $$ BEGIN "
            f"IF NEW.email = '{email}' THEN RAISE EXCEPTION 'injected failure'; END IF; RETURN NEW; END "
            "$$ LANGUAGE plpgsql"))
        db.session.execute(text("CREATE TRIGGER fail_import BEFORE INSERT ON subscriber "
                                "FOR EACH ROW EXECUTE FUNCTION fail_import()"))
    else:
        db.session.execute(text(f"CREATE TRIGGER fail_import BEFORE INSERT ON subscriber WHEN "
                                f"NEW.email = '{email}' BEGIN SELECT RAISE(ABORT, 'injected failure'); END"))
    db.session.commit()


def _drop_failing_trigger() -> None:
    db.session.rollback()
    if db.engine.dialect.name == "postgresql":
        db.session.execute(text("DROP TRIGGER IF EXISTS fail_import ON subscriber"))
        db.session.execute(text("DROP FUNCTION IF EXISTS fail_import()"))
    else:
        db.session.execute(text("DROP TRIGGER IF EXISTS fail_import"))
    db.session.commit()


def test_a_database_error_late_in_the_import_leaves_nothing_behind(app):
    with app.app_context():
        subscriptions.add_subscriber("already@example.se", topics=["nyheter"])
        before = table_counts()
        rows = [f"p{i}@example.se,nyheter" for i in range(30)] + ["boom@example.se,"]
        _install_failing_trigger("boom@example.se")
        try:
            with pytest.raises(ImportFailed, match="injected failure"):
                run_import("email,topics\n" + "\n".join(rows) + "\n", chunk_size=7)
            assert table_counts() == before
        finally:
            _drop_failing_trigger()
        assert run_import("email,topics\n" + "\n".join(rows) + "\n", chunk_size=7).added == 31


def test_a_dry_run_reports_the_same_and_writes_nothing(app):
    with app.app_context():
        before = table_counts()
        report = run_fixture("subscribers.csv", dry_run=True)
        assert (report.added, len(report.errors), report.confirmations_queued) == (4, 5, 4)
        assert table_counts() == before


@pytest.mark.parametrize(("row", "reason"), [
    ("x@example.se,Name\u2028Injected,sv,", "line break or control character in the name"),
    ('x@example.se,"Anna\r",sv,', "line break or control character in the name"),
    ("x@example.se,N,sv,nyheter;nope", "unknown topic: nope"),
    ("x@example.se,N,sv,nyheter\u0000", "line break or control character in the topics"),
    ('"x@example.se\r",N,sv,', "line break or control character in the address"),
    ("x@example.se,N,\x1bsv,", "unknown language"),
    ("<x@example.se>,N,sv,", "invalid address"),
    ("=cmd|' /C calc'!A0,N,sv,", "invalid address"),
])
def test_hostile_rows_are_refused_with_a_reason(app, row, reason):
    with app.app_context():
        report = run_import("email,name,language,topics\n" + row + "\n")
        assert report.added == 0 and len(report.errors) == 1
        line, why = report.errors[0]
        assert line == 2 and reason in why
        assert count(Subscriber) == 0


def test_an_unquoted_line_break_ends_the_row_and_the_rest_is_refused(app):
    with app.app_context():
        report = run_import("email,name\nx@example.se,N\nBcc: y@example.se,N\n")
        assert report.added == 1 and [line for line, _ in report.errors] == [3]
        assert count(Subscriber, Subscriber.email.like("%bcc%")) == 0


def test_a_headerless_list_of_addresses_and_files_that_cannot_be_imported(app):
    with app.app_context():
        report = run_import("one@example.se\ntwo@example.se\n")
        assert (report.layout, report.added) == ("addresses", 2)
        for data, message in [("", "empty"), ("name,language\nAnna,sv\n", "no email column"),
                              ('email\n"unterminated@example.se\n' + "x" * 200_000, "not valid CSV")]:
            with pytest.raises(ImportFailed, match=message):
                run_import(data)
        assert count(Subscriber) == 2


def test_a_big_file_streams_through_in_chunks(app):
    with app.app_context():
        rows = "".join(f"person{i}@example{i % 7}.se,Person {i},{'sv' if i % 2 else 'en'},nyheter;blogg\n"
                       for i in range(5000))
        data = ("email,name,language,topics\n" + rows + "person7@example0.se,Dup,sv,\n").encode()
        stream = BreaksHalfWay(data, limit=len(data) + 1)  # never fails, but insists on streaming
        report = import_csv(stream, confirmed=False, source="admin", filename="big.csv", chunk_size=1000)
        assert (report.added, report.errors) == (5000, [(5002, "duplicate of line 9")])
        assert table_counts() == {"subscribers": 5000, "queued": 5000, "events": 5000, "topics": 10000}
        # The bulk path stores values exactly as the ORM does (SQLite keeps datetimes as text).
        subscriptions.add_subscriber("orm@example.se")
        stored = db.session.execute(text(
            "SELECT s.created_at, q.next_attempt_at, e.created_at FROM subscriber s JOIN queued_email q "
            "ON q.subscriber_id = s.id JOIN consent_event e ON e.subscriber_id = s.id "
            "WHERE s.email IN ('person1@example1.se', 'orm@example.se') ORDER BY s.id")).all()
        assert [[type(v) for v in row] for row in stored] == [[type(v) for v in stored[1]]] * 2
        assert [[len(str(v)) for v in row] for row in stored] == [[len(str(v)) for v in stored[1]]] * 2
        person = subscriber("person1@example1.se")
        assert person.created_at.tzinfo is not None and person.topics
        [event] = events_of("person1@example1.se")
        assert event.detail["file"] == "big.csv" and event.created_at == person.created_at


@pytest.mark.parametrize("raw", [
    "Anna.Lindqvist@Example.SE", "a+tag@sub.example.se", "-x@example.se", "a_b@xn--bcher-kva.example",
    "a..b@example.se", ".a@example.se", "a@example", "a@-x.se", "a@example.local", "a@x_y.se",
    "a@EXAMPLE.com.", "a@123.45", "x" * 65 + "@example.se", "a@" + "b" * 64 + ".se", "jörgen@exempel.se",
])
def test_the_import_fast_path_normalises_addresses_exactly_like_the_signup_form(raw):
    def outcome(normalise):
        try:
            return normalise(raw)
        except subscriptions.InvalidInput as exc:
            return ("invalid", exc.reason)

    fast = imports.EmailNormaliser()
    assert outcome(fast) == outcome(subscriptions.normalise_email)
    assert outcome(fast) == outcome(subscriptions.normalise_email)  # again, from the domain cache


def test_other_export_shapes_unsubscribed_mailchimp_files_listmonk_language_and_unknown_tags(app):
    with app.app_context():
        subscriptions.add_subscriber("still.here@example.se", confirmed=True)
        report = run_import(
            "Email Address,First Name,Last Name,UNSUB_TIME,UNSUB_CAMPAIGN_TITLE\n"
            "left@example.se,Left,Person,2025-06-01 10:00:00,Juni\n"
            "still.here@example.se,Still,Here,2025-06-02 10:00:00,Juni\n")
        assert (report.layout, report.added, report.skipped) == ("mailchimp", 0, 2)
        assert [line for line, _ in report.notices] == [2, 3]
        assert subscriber("left@example.se") is None
        assert subscriber("still.here@example.se").status == "confirmed"  # never lowered by an import
        report = run_import(
            "uuid,email,name,attributes,status,created_at,updated_at\n"
            'u1,en@example.se,En,"{""language"": ""en""}",enabled,2025-01-01,2025-01-01\n'
            "u2,off@example.se,Off,{},disabled,2025-01-01,2025-01-01\n")
        assert (report.added, report.notices) == (1, [(3, "disabled in the listmonk export: not imported")])
        assert subscriber("en@example.se").language == "en"
        report = run_import(
            "Email Address,First Name,Last Name,OPTIN_TIME,TAGS\n"
            'tags@example.se,T,A,2025-01-01 00:00:00,"""VIP"",""Blog"""\n')
        assert subscriptions.topic_slugs(subscriber("tags@example.se")) == ["blogg"]  # by its English name
        assert report.warnings == ["tags that name no topic were ignored: VIP"]
