"""Admin subscriber pages: list, filters, pages, detail, add, unsubscribe, erase, export, escaping;
and the dashboard's figures."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from admin_helpers import add_subscribers, audit_actions, count, csrf_token, logged_in, post_form
from sqlalchemy import select

from newsletter import subscriptions
from newsletter.extensions import db
from newsletter.models import AuditEvent, ConsentEvent, QueuedEmail, Subscriber
from newsletter.subscriptions import stats

FIXTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures"
if not FIXTURES.exists():
    FIXTURES = Path(__file__).resolve().parent / "fixtures"
ROW_LINK = re.compile(r'href="/admin/subscribers/(\d+)"')


def _ids_on(html: str) -> list[int]:
    return [int(i) for i in ROW_LINK.findall(html)]


def _next_link(html: str, rel: str) -> str | None:
    match = re.search(rf'<a rel="{rel}" href="([^"]+)"', html)
    return match.group(1).replace("&amp;", "&") if match else None


# --- escaping ---------------------------------------------------------------------------------

XSS_NAME = '<script>alert("name")</script><img src=x onerror=alert(1)>'
XSS_EMAIL = "x'onmouseover=alert`1`'@example.org"  # valid: ' and = are allowed in an address
RAW_EMAIL = '<svg onload=alert("e")>@example.org'  # not valid, but could come from old data


def test_xss_payloads_in_names_and_addresses_are_escaped_on_list_and_detail(app):
    with app.app_context():
        valid = subscriptions.add_subscriber(
            XSS_EMAIL, name=XSS_NAME, confirmed=True, detail={"note": "<b>bold</b>"}
        )
        db.session.add(Subscriber(email=RAW_EMAIL, name=XSS_NAME, status="pending"))
        db.session.commit()
        ids = [
            valid.id,
            db.session.execute(select(Subscriber.id).where(Subscriber.email == RAW_EMAIL)).scalar_one(),
        ]
    client = logged_in(app)
    pages = ["/admin/subscribers", f"/admin/subscribers?q={quote(XSS_EMAIL)}", "/admin/subscribers?q=<svg"]
    pages += [f"/admin/subscribers/{i}" for i in ids] + [f"/admin/subscribers/{i}/erase" for i in ids]
    for url in pages:
        response = client.get(url)
        assert response.status_code == 200, url
        html = response.get_data(as_text=True)
        for raw in ("<script>alert", "<img src=x", "<svg onload", "'onmouseover=alert`1`'", "<b>bold"):
            assert raw not in html, (url, raw)
    html = client.get("/admin/subscribers").get_data(as_text=True)
    assert "&lt;script&gt;alert(&#34;name&#34;)&lt;/script&gt;" in html
    assert "&lt;svg onload=alert(&#34;e&#34;)&gt;@example.org" in html
    assert "x&#39;onmouseover=alert`1`&#39;@example.org" in html


def test_csv_export_defuses_spreadsheet_formulas(app):
    with app.app_context():
        subscriptions.add_subscriber("formula@example.org", name='=HYPERLINK("http://evil")', confirmed=True)
    client = logged_in(app)
    rows = list(
        csv.DictReader(io.StringIO(client.get("/admin/subscribers/export.csv").get_data(as_text=True)))
    )
    assert rows[0]["name"].startswith("'=")


# --- list, pages, filters --------------------------------------------------------------------


def test_pages_walk_the_whole_list_newest_first_and_back(make_app):
    app = make_app(ADMIN_PAGE_SIZE=10)
    with app.app_context():
        ids = add_subscribers(25)
    client = logged_in(app)
    seen, pages, url = [], [], "/admin/subscribers"
    while url:
        html = client.get(url).get_data(as_text=True)
        page_ids = _ids_on(html)
        pages.append((url, page_ids))
        seen += page_ids
        assert "25 subscribers match." in html or "25 prenumeranter matchar." in html
        url = _next_link(html, "next")
    assert seen == sorted(ids, reverse=True)
    assert [len(p) for _, p in pages] == [10, 10, 5]
    assert _next_link(client.get(pages[0][0]).get_data(as_text=True), "prev") is None
    # back from the last page through "newer": the same pages again
    html = client.get(pages[2][0]).get_data(as_text=True)
    back = []
    while (url := _next_link(html, "prev")) is not None:
        html = client.get(url).get_data(as_text=True)
        back.append(_ids_on(html))
    assert back == [pages[1][1], pages[0][1]]


def test_pages_keep_the_filters(make_app):
    app = make_app(ADMIN_PAGE_SIZE=3)
    with app.app_context():
        pending = add_subscribers(5, status="pending", prefix="waiting")
        add_subscribers(5, status="confirmed", prefix="ok")
    client = logged_in(app)
    first = client.get("/admin/subscribers?status=pending").get_data(as_text=True)
    second_url = _next_link(first, "next")
    assert "status=pending" in second_url
    second = client.get(second_url).get_data(as_text=True)
    assert _ids_on(first) + _ids_on(second) == sorted(pending, reverse=True)


def test_filters_by_state_language_topic_and_search(app):
    with app.app_context():
        add_subscribers(3, status="confirmed", language="sv", topics=("blogg",), prefix="blog")
        add_subscribers(2, status="pending", language="en", topics=("nyheter",), prefix="news")
        add_subscribers(1, status="unsubscribed", language="sv", prefix="all")  # no topic = every topic
        db.session.add(Subscriber(email="per_cent%odd@example.org", status="confirmed"))
        db.session.commit()
    client = logged_in(app)

    def emails(query: str) -> set[str]:
        html = client.get(f"/admin/subscribers?{query}").get_data(as_text=True)
        return set(re.findall(r'href="/admin/subscribers/\d+">([^<]+)</a>', html))

    assert emails("status=pending") == {"news0@example.org", "news1@example.org"}
    assert emails("language=en") == {"news0@example.org", "news1@example.org"}
    assert emails("topic=blogg") == {
        "blog0@example.org",
        "blog1@example.org",
        "blog2@example.org",
        "all0@example.org",
        "per_cent%odd@example.org",
    }
    assert emails("topic=blogg&status=confirmed&language=sv&q=BLOG1") == {"blog1@example.org"}
    assert emails("q=news") == {"news0@example.org", "news1@example.org"}
    assert emails("q=%25") == {"per_cent%odd@example.org"}  # % is a character, not a wildcard
    assert emails("q=_") == {"per_cent%odd@example.org"}
    assert len(emails("status=bogus&topic=nope&language=xx")) == 7  # unknown values are ignored


# --- detail, add, unsubscribe, erase --------------------------------------------------------


def test_detail_shows_the_consent_events(app, client):
    with app.app_context():
        subscriptions.request_signup(
            "reader@example.org", topics=["nyheter"], language="sv", ip="192.0.2.7", user_agent="Firefox-ish"
        )
        sid = subscriptions.find_subscriber("reader@example.org").id
    admin = logged_in(app)
    html = admin.get(f"/admin/subscribers/{sid}?lang=en").get_data(as_text=True)
    assert "Consent events" in html and "signed up" in html and "192.0.2.7" in html and "Firefox-ish" in html
    assert admin.get("/admin/subscribers/99999").status_code == 404


def test_adding_a_pending_subscriber_sends_a_confirmation(app):
    client = logged_in(app)
    data = {
        "email": "New.Person@Example.org",
        "name": "New Person",
        "language": "en",
        "topics": ["blogg"],
        "confirmed": "pending",
        "note": "",
    }
    response = post_form(client, "/admin/subscribers/new", data, page="/admin/subscribers/new")
    assert response.status_code == 302
    with app.app_context():
        person = subscriptions.find_subscriber("new.person@example.org")
        assert (
            person.status == "pending"
            and person.language == "en"
            and subscriptions.topic_slugs(person) == ["blogg"]
        )
        assert count(QueuedEmail, QueuedEmail.kind == "confirm", QueuedEmail.subscriber_id == person.id) == 1
        event = db.session.execute(
            select(ConsentEvent).where(ConsentEvent.subscriber_id == person.id)
        ).scalar_one()
        assert (event.kind, event.source) == ("admin", "admin")
        assert ("admin@example.org", "subscriber_added", f"subscriber:{person.id}") in audit_actions()


def test_adding_a_confirmed_subscriber_needs_a_note_kept_as_evidence(app):
    client = logged_in(app)
    data = {"email": "paper@example.org", "language": "sv", "confirmed": "confirmed", "note": ""}
    response = post_form(client, "/admin/subscribers/new", data, page="/admin/subscribers/new")
    assert response.status_code == 400
    with app.app_context():
        assert count(Subscriber) == 0
    data["note"] = "Signed up on paper at the annual meeting"
    assert post_form(client, "/admin/subscribers/new", data, page="/admin/subscribers/new").status_code == 302
    with app.app_context():
        person = subscriptions.find_subscriber("paper@example.org")
        assert person.status == "confirmed" and person.confirmed_at is not None
        assert count(QueuedEmail) == 0
        event = db.session.execute(
            select(ConsentEvent).where(ConsentEvent.subscriber_id == person.id)
        ).scalar_one()
        assert event.source == "admin" and event.detail["note"] == "Signed up on paper at the annual meeting"
        assert event.detail["by"] == "admin@example.org"


@pytest.mark.parametrize("email", ["not-an-address", "two@@example.org", "line\nbreak@example.org"])
def test_adding_an_invalid_address_is_400_and_stores_nothing(app, email):
    client = logged_in(app)
    data = {"email": email, "language": "sv", "confirmed": "pending"}
    response = post_form(client, "/admin/subscribers/new", data, page="/admin/subscribers/new")
    assert response.status_code == 400
    with app.app_context():
        assert count(Subscriber) == 0


def test_adding_an_address_already_on_the_list_says_so(app):
    with app.app_context():
        add_subscribers(1, prefix="there")
    client = logged_in(app)
    response = post_form(
        client,
        "/admin/subscribers/new",
        {"email": "THERE0@example.org", "language": "sv", "confirmed": "pending"},
        page="/admin/subscribers/new",
    )
    assert response.status_code == 400
    with app.app_context():
        assert count(Subscriber) == 1


def test_unsubscribe_from_the_admin_is_a_consent_event(app):
    with app.app_context():
        (sid,) = add_subscribers(1)
    client = logged_in(app, "editor")
    response = post_form(client, f"/admin/subscribers/{sid}/unsubscribe", page=f"/admin/subscribers/{sid}")
    assert response.status_code == 302
    with app.app_context():
        person = db.session.get(Subscriber, sid)
        assert person.status == "unsubscribed"
        event = db.session.execute(select(ConsentEvent).where(ConsentEvent.subscriber_id == sid)).scalar_one()
        assert (event.kind, event.source) == ("unsubscribe", "admin")
        assert ("editor@example.org", "subscriber_unsubscribed", f"subscriber:{sid}") in audit_actions()


def test_erase_needs_the_address_typed_and_leaves_no_address_behind(app):
    with app.app_context():
        person = subscriptions.add_subscriber("gone@example.org", name="Gone Person", confirmed=True)
        sid = person.id
    client = logged_in(app)
    page = client.get(f"/admin/subscribers/{sid}/erase")
    assert page.status_code == 200
    response = post_form(
        client,
        f"/admin/subscribers/{sid}/erase",
        {"confirm_email": "other@example.org"},
        page=f"/admin/subscribers/{sid}/erase",
    )
    assert response.status_code == 400
    with app.app_context():
        assert db.session.get(Subscriber, sid) is not None
    response = post_form(
        client,
        f"/admin/subscribers/{sid}/erase",
        {"confirm_email": " GONE@example.org "},
        page=f"/admin/subscribers/{sid}/erase",
    )
    assert response.status_code == 302
    with app.app_context():
        db.session.expire_all()
        assert db.session.get(Subscriber, sid) is None
        events = list(db.session.execute(select(ConsentEvent)).scalars())
        assert [(e.kind, e.subscriber_id) for e in events] == [("erase", None)]
        audit_rows = list(db.session.execute(select(AuditEvent)).scalars())
        assert any(e.action == "subscriber_erased" and e.target == f"subscriber:{sid}" for e in audit_rows)
        assert not any("gone@example.org" in f"{e.target} {e.detail}" for e in audit_rows)


# --- export -------------------------------------------------------------------------------


def test_export_is_csv_of_the_chosen_state_and_is_audited(app):
    with app.app_context():
        add_subscribers(3, status="confirmed", topics=("blogg",), prefix="c")
        add_subscribers(2, status="pending", prefix="p")
    client = logged_in(app)
    response = client.get("/admin/subscribers/export.csv?status=confirmed")
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert sorted(r["email"] for r in rows) == ["c0@example.org", "c1@example.org", "c2@example.org"]
    assert {r["status"] for r in rows} == {"confirmed"} and {r["topics"] for r in rows} == {"blogg"}
    everyone = client.get("/admin/subscribers/export.csv").get_data(as_text=True)
    assert len(list(csv.DictReader(io.StringIO(everyone)))) == 5
    with app.app_context():
        exports = [
            e for e in db.session.execute(select(AuditEvent)).scalars() if e.action == "subscribers_exported"
        ]
        assert [e.detail["rows"] for e in exports] == [3, 5]


# --- import --------------------------------------------------------------------------------


def _upload(client, path: Path, confirmed: bool):
    data = {
        "csrf_token": csrf_token(client, "/admin/subscribers/import"),
        "file": (io.BytesIO(path.read_bytes()), path.name),
    }
    if confirmed:
        data["confirmed"] = "y"
    return client.post("/admin/subscribers/import?lang=en", data=data, content_type="multipart/form-data")


def test_import_of_the_mailchimp_and_listmonk_exports_keeps_their_consent_evidence(app):
    client = logged_in(app)
    response = _upload(client, FIXTURES / "mailchimp-export.csv", confirmed=True)
    assert response.status_code == 200, response.get_data(as_text=True)
    html = response.get_data(as_text=True)
    assert "Import result" in html and "mailchimp" in html.lower()
    assert _upload(client, FIXTURES / "listmonk-export.csv", confirmed=True).status_code == 200
    with app.app_context():
        karin = subscriptions.find_subscriber("karin.holm@example.se")
        assert karin is not None and karin.status == "confirmed"
        event = db.session.execute(
            select(ConsentEvent).where(ConsentEvent.subscriber_id == karin.id)
        ).scalar_one()
        assert "192.0.2.10" in str(event.detail) and "mailchimp-export.csv" in str(event.detail)
        assert subscriptions.find_subscriber("sara.ek@example.se").status == "confirmed"
        assert subscriptions.find_subscriber("blocked.person@example.se") is None  # opted out there
        imported = [
            e for e in db.session.execute(select(AuditEvent)).scalars() if e.action == "subscribers_imported"
        ]
        assert [e.target for e in imported] == ["mailchimp-export.csv", "listmonk-export.csv"]


def test_an_unreadable_import_is_400_and_imports_nothing(app):
    client = logged_in(app)
    data = {
        "csrf_token": csrf_token(client, "/admin/subscribers/import"),
        "file": (io.BytesIO(b"no,header,we,know\n1,2,3,4\n"), "odd.csv"),
    }
    response = client.post("/admin/subscribers/import", data=data, content_type="multipart/form-data")
    assert response.status_code == 400
    with app.app_context():
        assert count(Subscriber) == 0


# --- dashboard ----------------------------------------------------------------------------------


def test_weekly_trend_counts_who_was_confirmed_at_the_end_of_each_week(app):
    now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)  # a Wednesday
    with app.app_context():
        db.session.add_all(
            [
                Subscriber(
                    email="old@example.org", status="confirmed", confirmed_at=now - timedelta(days=60)
                ),
                Subscriber(
                    email="left@example.org",
                    status="unsubscribed",
                    confirmed_at=now - timedelta(days=30),
                    unsubscribed_at=now - timedelta(days=9),
                ),
                Subscriber(email="new@example.org", status="confirmed", confirmed_at=now - timedelta(days=1)),
                Subscriber(email="wait@example.org", status="pending"),
                Subscriber(
                    email="bounce@example.org", status="bounced", confirmed_at=now - timedelta(days=30)
                ),
            ]
        )
        db.session.commit()
        points = stats.weekly_trend(now, weeks=12)
    assert len(points) == 12 and points[-1].end == now
    assert [p.label for p in points][-3:] == ["46", "47", "48"]
    assert points[0].confirmed == 0 or points[0].confirmed == 1
    assert [p.confirmed for p in points][-6:] == [1, 2, 2, 2, 1, 2]  # "left" goes on Monday 16 Nov at noon
    assert points[-1].joined == 1 and sum(p.left for p in points) == 1


def test_dashboard_shows_counts_trend_and_the_next_digest(app):
    with app.app_context():
        add_subscribers(4, status="confirmed")
        add_subscribers(2, status="pending", prefix="p")
    client = logged_in(app, "editor")
    html = client.get("/admin/?lang=en").get_data(as_text=True)
    assert re.search(r'<span class="num">4</span><span class="label">confirmed', html)
    assert re.search(r'<span class="num">2</span><span class="label">pending', html)
    assert "<svg" in html and "<polyline" in html and "Next digest" in html
    assert "Nothing new yet" in html
    sv = client.get("/admin/?lang=sv").get_data(as_text=True)
    assert "Nästa nyhetsbrev" in sv and "Prenumeranter" in sv


def test_dashboard_shows_what_the_coming_digest_contains_and_the_last_sends(app):
    from newsletter.engine.clock import utcnow
    from newsletter.models import Article, Delivery, Digest

    now = utcnow()
    with app.app_context():
        ids = add_subscribers(3)
        old = Article(
            source_id="old",
            title="Sent last week",
            url="https://example.se/old",
            published_at=now - timedelta(days=2),
        )
        new = Article(
            source_id="new", title="<i>Fresh</i> news", url="https://example.se/new", published_at=now
        )
        hidden = Article(
            source_id="hid", title="Hidden one", url="https://example.se/hid", published_at=now, hidden=True
        )
        digest = Digest(
            status="done",
            subject_sv="Veckans nyheter",
            subject_en="This week",
            started_at=now,
            finished_at=now,
            recipient_count=3,
        )
        digest.articles = [old]
        db.session.add_all([old, new, hidden, digest])
        db.session.flush()
        db.session.add_all(
            [
                Delivery(digest_id=digest.id, subscriber_id=ids[0], state="sent"),
                Delivery(digest_id=digest.id, subscriber_id=ids[1], state="sent"),
                Delivery(digest_id=digest.id, subscriber_id=ids[2], state="failed"),
            ]
        )
        db.session.commit()
        digest_id = digest.id
    client = logged_in(app, "editor")
    html = client.get("/admin/?lang=en").get_data(as_text=True)
    coming = html[html.index("Next digest") : html.index("Last sends")]
    assert (
        "&lt;i&gt;Fresh&lt;/i&gt; news" in coming
        and "Hidden one" not in coming
        and "Sent last week" not in coming
    )
    assert "1 new article so far, to about 3 confirmed subscribers" in coming
    sends = html[html.index("Last sends") :]
    assert f"#{digest_id} This week" in sends
    assert re.search(r"<td>2</td><td>1</td><td>0</td>\s*<td>0</td><td>3</td>", sends)


def test_ids_and_page_keys_beyond_32_bits_are_404_or_empty_never_500(app):
    client = logged_in(app)
    for url in ("/admin/subscribers/99999999999", "/admin/subscribers/99999999999999999999999",
                "/admin/subscribers/99999999999/erase", "/admin/subscribers?before=999999999999999999",
                "/admin/subscribers?after=99999999999", "/admin/subscribers?before=-1&after=x",
                "/admin/audit?before=999999999999999999"):
        assert client.get(url).status_code in (200, 404), url
    assert post_form(client, "/admin/subscribers/99999999999/unsubscribe").status_code == 404
    assert post_form(client, "/admin/admins/99999999999/active", {"active": "0"}).status_code == 404
