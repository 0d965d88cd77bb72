"""Polling before compiling: `digest send`, `digest preview`, the admin's preview and "send now",
and the API poll the feeds first (unless told not to), and say which feeds failed."""

from __future__ import annotations

import time_machine
from admin_helpers import csrf_token, log_in
from api_helpers import Api, make_token
from digest_helpers import NOW, subscriber

from newsletter import delivery, digests
from newsletter.extensions import db
from newsletter.models import Article, Feed


def _register_feeds(app, feed_server, *paths: str) -> None:
    """Feeds registered but never polled: new posts wait on the site."""
    with app.app_context():
        for path in paths:
            db.session.add(Feed(url=feed_server.url(path)))
        db.session.commit()
        subscriber("alla@example.se")
        subscriber("en@example.com", language="en")


def _article_count(app) -> int:
    with app.app_context():
        return db.session.execute(db.select(db.func.count()).select_from(Article)).scalar_one()


def test_digest_send_polls_the_feeds_first_and_sends_the_new_posts(smtp_app, smtp_server, feed_server):
    _register_feeds(smtp_app, feed_server, "/nyheter.rss", "/blogg.atom")
    runner = smtp_app.test_cli_runner()
    with time_machine.travel(NOW, tick=True):
        result = runner.invoke(args=["digest", "send"])
    assert result.exit_code == 0, result.output
    assert "sent 2" in result.output and "feeds polled: 2, 7 new articles, 0 failed" in result.output
    sent = smtp_server.messages(to="alla@example.se")
    assert len(sent) == 1
    html = sent[0].get_body(preferencelist=("html",)).get_content()
    assert "Pressmeddelande: 12 miljoner till upprustning av lekplatser" in html
    assert "Tankar efter en vecka i Stockholm" in html  # the Atom feed's post, polled too


def test_no_fetch_compiles_from_what_is_stored_without_polling(smtp_app, smtp_server, feed_server):
    _register_feeds(smtp_app, feed_server, "/nyheter.rss")
    runner = smtp_app.test_cli_runner()
    with time_machine.travel(NOW, tick=True):
        result = runner.invoke(args=["digest", "send", "--no-fetch"])
        assert result.exit_code == 0 and "nothing new" in result.output, result.output
        preview = runner.invoke(args=["digest", "preview", "--no-fetch"])
        assert preview.exit_code != 0 and "nothing new" in preview.output
        assert runner.invoke(args=["digest", "send", "--dry-run", "--no-fetch"]).exit_code == 0
    assert feed_server.requests == [] and smtp_server.messages() == []


def test_preview_dry_run_and_test_poll_too(smtp_app, smtp_server, feed_server):
    _register_feeds(smtp_app, feed_server, "/nyheter.rss")
    runner = smtp_app.test_cli_runner()
    with time_machine.travel(NOW, tick=True):
        result = runner.invoke(args=["digest", "preview", "--lang", "en"])
        assert result.exit_code == 0 and "Subject: Week 48" in result.output, result.output
        assert _article_count(smtp_app) == 5
        feed_server.files["/nyheter.rss"] = feed_server.files["/nyheter.rss"].replace(
            b"12 miljoner", b"13 miljoner")
        result = runner.invoke(args=["digest", "send", "--dry-run"])
        assert result.exit_code == 0 and "13 miljoner" in result.output, result.output
        result = runner.invoke(args=["digest", "send", "--test-to", "redaktor@example.se"])
        assert result.exit_code == 0, result.output
    assert len(feed_server.requests) == 3
    assert [m["To"] for m in smtp_server.messages()] == ["redaktor@example.se"]


def test_a_failed_feed_is_named_and_the_digest_goes_out_without_it(smtp_app, smtp_server, feed_server):
    _register_feeds(smtp_app, feed_server, "/nyheter.rss", "/borta.rss")
    with time_machine.travel(NOW, tick=True):
        result = smtp_app.test_cli_runner().invoke(args=["digest", "send"])
    assert result.exit_code == 0, result.output
    assert "1 failed" in result.output
    assert f"feed failed: {feed_server.url('/borta.rss')}: " in result.output
    assert "HTTPError: 404" in result.output
    assert len(smtp_server.messages()) == 2


def test_the_poll_keeps_to_its_time_limit(app, feed_server):
    app.config["DIGEST_FETCH_SECONDS"] = 0
    _register_feeds(app, feed_server, "/nyheter.rss", "/blogg.atom")
    with app.app_context():
        results = digests.poll_feeds_first(NOW)
        assert [(r.status, r.error) for r in results] == [
            ("error", "not polled: the time limit was reached")] * 2
    assert feed_server.requests == []


def test_a_feed_polled_a_moment_ago_is_not_polled_again_by_the_web(app, feed_server):
    _register_feeds(app, feed_server, "/nyheter.rss")
    with app.app_context():
        digests.fetch_all_feeds()
        assert digests.poll_feeds_first(fresh_seconds=60) == []
        assert len(digests.poll_feeds_first()) == 1
    assert len(feed_server.requests) == 2


def test_the_admins_preview_and_send_now_poll_the_feeds(app, feed_server):
    _register_feeds(app, feed_server, "/nyheter.rss", "/borta.rss")
    client = app.test_client()
    with time_machine.travel(NOW, tick=True):
        log_in(client, app)
        page = client.get("/admin/digest").get_data(as_text=True)
        text = client.get("/admin/digest/preview/sv.txt").get_data(as_text=True)
        assert "Pressmeddelande: 12 miljoner" in text
        assert f"{feed_server.url('/borta.rss')} kunde inte hämtas: " in page and "HTTPError: 404" in page
        assert client.get("/admin/digest/send").status_code == 200
        response = client.post("/admin/digest/send", data={"csrf_token": csrf_token(client, "/admin/digest")})
    assert response.status_code == 303
    with app.app_context():
        delivery.wait_for_sends(30)  # the send runs in a thread: let it end with the test
    assert _article_count(app) == 5
    # The page and the send came within a minute of the first poll: each feed polled once.
    assert sorted(path for path, _ in feed_server.requests) == ["/borta.rss", "/nyheter.rss"]


def test_the_api_polls_before_its_preview_and_send(app, feed_server):
    _register_feeds(app, feed_server, "/nyheter.rss")
    api = Api(app.test_client(), make_token(app, "editor"))
    with time_machine.travel(NOW, tick=True):
        preview = api.get("/digests/preview?lang=sv")
        assert preview.status_code == 200 and preview.json["article_count"] == 4
        feed_server.files["/nyheter.rss"] = feed_server.files["/nyheter.rss"].replace(
            b"12 miljoner", b"13 miljoner")
        with app.app_context():
            db.session.execute(db.update(Feed).values(last_fetched_at=NOW.replace(year=2025)))
            db.session.commit()
        response = api.post("/digests")
    assert response.status_code == 202, response.json
    with app.app_context():
        delivery.wait_for_sends(30)
    assert _titles(app, "13 miljoner")
    assert len(feed_server.requests) == 2


def _titles(app, part: str) -> bool:
    with app.app_context():
        return bool(db.session.execute(db.select(Article.id).where(Article.title.contains(part))).first())
