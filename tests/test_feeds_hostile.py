"""Hostile feeds cannot fail the digest: each feed is polled on its own, its error is recorded
on it, values are cut to what we store, and the limits (bytes, items, seconds, articles per
digest) hold. Served over real HTTP on loopback."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from admin_helpers import logged_in, post_form
from digest_helpers import NOW, subscriber
from hostile_http import Answer, HostileServer, item, rss
from sqlalchemy import select

from newsletter import digests, scheduler
from newsletter.digests import feed_polls, feeds
from newsletter.extensions import db
from newsletter.models import Article, Digest, Feed

FIRE = NOW
LIMITS = {"FEED_TIMEOUT_SECONDS": 1.5, "FEED_MAX_BYTES": 200_000, "FEED_MAX_ITEMS": 50}

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE rss [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<rss version="2.0"><channel><title>Skratt</title><item><title>&lol9;</title>
<link>https://hostile.example/laughs</link></item></channel></rss>"""


@pytest.fixture
def hostile():
    server = HostileServer()
    yield server
    server.close()


def _long_fields_feed() -> bytes:
    long_link = "https://hostile.example/" + "a" * 1500
    return rss("Långa fält", [
        item("Länken är för lång", long_link),
        item("T" * 700 + "\x00" + " slut", "https://hostile.example/lang-titel",
             extra=f'<enclosure url="https://hostile.example/{"b" * 1500}.jpg" type="image/jpeg"/>'),
        item("Lång guid", "https://hostile.example/lang-guid", guid="g" * 3000),
        item("Lång författare", "https://hostile.example/forfattare",
             extra=f"<author>{'x' * 900}@example.org</author>"),
    ])


def _serve_hostile_feeds(server: HostileServer, fixtures) -> dict[str, str]:
    """Every kind of broken feed, and what each one's recorded error says."""
    big_item = item("Stor", "https://hostile.example/stor/{n}")
    server.routes.update({
        "/long-headers.rss": Answer(rss("Långa rubriker", [item("Rubriker", "https://hostile.example/h")]),
                                    headers={"ETag": '"' + "e" * 400 + '"', "Last-Modified": "M" * 200}),
        "/long-fields.rss": Answer(_long_fields_feed()),
        "/error.rss": Answer(b"oops", status=500),
        "/slow.rss": Answer(rss("Långsam", []), delay=4),
        "/trickle.rss": Answer(rss("Droppar", [item("d", "https://hostile.example/d")] * 40), trickle=0.05),
        "/huge.rss": Answer(rss("Enorm", [big_item.replace("{n}", str(n)) for n in range(20_000)])),
        "/invalid.xml": Answer(b"<<<this is { not xml at all"),
        "/laughs.rss": Answer(BILLION_LAUGHS),
        "/nyheter.rss": Answer((fixtures / "nyheter.rss").read_bytes()),
        "/blogg.atom": Answer((fixtures / "blogg.atom").read_bytes(),
                              headers={"Content-Type": "application/atom+xml"}),
    })
    return {
        "/error.rss": "HTTPError: 500",
        "/slow.rss": "no answer in time",
        "/trickle.rss": "no answer in time",
        "/huge.rss": "larger than 200000 bytes",
        "/invalid.xml": "not an RSS or Atom feed",
    }


def test_the_weekly_run_sends_one_digest_from_the_healthy_feeds(make_app, smtp_server, hostile):
    from conftest import FIXTURES

    app = make_app(MAIL_URL=smtp_server.url, **LIMITS)
    broken = _serve_hostile_feeds(hostile, FIXTURES)
    with app.app_context():
        subscriber("a@example.se")
        for path in hostile.routes:
            feeds.add_feed(hostile.url(path))
    started = time.monotonic()
    digest = scheduler.weekly_job(app, scheduled=FIRE, now=FIRE)
    took = time.monotonic() - started
    assert digest is not None and digest.status == "done"
    assert len(smtp_server.messages()) == 1
    assert took < 20, took  # each slow feed costs at most FEED_TIMEOUT_SECONDS

    with app.app_context():
        by_name = {f.url.rsplit("/", 1)[1]: f for f in db.session.execute(select(Feed)).scalars()}
        for path, error in broken.items():
            feed = by_name[path[1:]]
            assert feed.last_status == "error" and error in feed.last_error, (path, feed.last_error)
            assert feed.last_success_at is None
        for name in ("long-headers.rss", "long-fields.rss", "nyheter.rss", "blogg.atom"):
            assert by_name[name].last_status == "ok", (name, by_name[name].last_error)
            assert by_name[name].last_success_at == FIRE
        # Validators longer than their columns are dropped (a cut one would never match).
        assert by_name["long-headers.rss"].etag is None and by_name["long-headers.rss"].modified is None
        stored = {a.url: a for a in db.session.execute(select(Article)).scalars()}
        assert not any("a" * 1500 in url for url in stored)  # the item with a too-long link: skipped
        long_title = stored["https://hostile.example/lang-titel"]
        assert len(long_title.title) <= 500 and "\x00" not in long_title.title
        assert long_title.image_url == ""  # a too-long image URL is dropped
        assert len(stored["https://hostile.example/lang-guid"].source_id) == 1000
        assert len(stored["https://hostile.example/forfattare"].author) <= 200
        assert not any("lollollollol" in a.title for a in stored.values())  # no entity expansion
        sent = db.session.get(Digest, digest.id)
        week = [a for a in stored.values() if a.published_at >= FIRE - timedelta(7)]
        assert len(sent.articles) == len(week)

    # `flask feeds list` shows each broken feed's error and its last success.
    result = app.test_cli_runner().invoke(args=["feeds", "list"])
    assert result.exit_code == 0, result.output
    for path, error in broken.items():
        assert hostile.url(path) in result.output and error in result.output
    assert "last success: never" in result.output

    # … and so does the admin's feeds page.
    editor = logged_in(app, "editor")
    page = editor.get("/admin/feeds").get_data(as_text=True)
    for error in broken.values():
        assert error in page
    assert "Senast lyckad" in page or "Last success" in page


def test_items_per_poll_and_articles_per_digest_are_limited(make_app, hostile):
    app = make_app(FEED_MAX_ITEMS=50, DIGEST_MAX_ARTICLES=30)
    hostile.routes["/many.rss"] = Answer(rss("Många", [
        item(f"Nummer {n}", f"https://hostile.example/n/{n}", extra=f"<pubDate>{_date(n)}</pubDate>")
        for n in range(500)]))
    with app.app_context():
        feeds.add_feed(hostile.url("/many.rss"))
        [result] = feeds.fetch_all_feeds(NOW)
        assert (result.status, result.added) == ("ok", 50)
        coming = digests.coming_articles(NOW)
        assert len(coming) == 30
        # The oldest go first; the rest wait for the next digest.
        oldest = sorted(db.session.execute(select(Article)).scalars(), key=lambda a: a.published_at)[:30]
        assert {a.id for a in coming} == {a.id for a in oldest}
        first = digests.compile_digest(NOW)
        assert len(first.articles) == 30
        assert len(digests.coming_articles(NOW + timedelta(minutes=1))) == 20


def _date(n: int) -> str:
    moment = NOW - timedelta(hours=n % 100)
    return moment.strftime("%a, %d %b %Y %H:%M:%S +0000")


def test_fetch_now_in_the_admin_runs_in_the_background(make_app, hostile):
    app = make_app(FEED_TIMEOUT_SECONDS=5)
    slow = rss("Långsam", [item("Sen", "https://hostile.example/sen")])
    hostile.routes["/slow.rss"] = Answer(slow, delay=2)
    with app.app_context():
        feed_id = feeds.add_feed(hostile.url("/slow.rss")).id
    editor = logged_in(app, "editor")
    started = time.monotonic()
    response = post_form(editor, f"/admin/feeds/{feed_id}/fetch", page="/admin/feeds")
    assert response.status_code == 303
    assert time.monotonic() - started < 1.5  # the request does not wait for the feed
    assert "Hämtar" in editor.get("/admin/feeds").get_data(as_text=True) or feed_polls.polling(feed_id)
    feed_polls.wait()
    with app.app_context():
        feed = db.session.get(Feed, feed_id)
        assert (feed.last_status, feed.title) == ("ok", "Långsam")
    assert post_form(editor, "/admin/feeds/2147483647/fetch", page="/admin/feeds").status_code == 404


def test_a_database_error_in_one_feed_leaves_the_others(app, hostile, monkeypatch):
    hostile.routes["/a.rss"] = Answer(rss("A", [item("A1", "https://hostile.example/a1")]))
    hostile.routes["/b.rss"] = Answer(rss("B", [item("B1", "https://hostile.example/b1")]))
    real_store = feeds._store_entry

    def store(feed, entry, now, base):
        if feed.url.endswith("/a.rss"):
            db.session.execute(db.text("SELECT * FROM no_such_table"))
        return real_store(feed, entry, now, base)

    monkeypatch.setattr(feeds, "_store_entry", store)
    with app.app_context():
        feeds.add_feed(hostile.url("/a.rss"))
        feeds.add_feed(hostile.url("/b.rss"))
        results = feeds.fetch_all_feeds(NOW)
        assert [(r.status, r.added) for r in results] == [("ok", 0), ("ok", 1)]
        assert "1 entries could not be stored" in results[0].error
        assert "no_such_table" not in results[0].error  # no SQL shown to editors
