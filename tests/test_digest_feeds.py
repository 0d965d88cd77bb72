"""Feeds: the fixture feeds over real HTTP, every oddity in them, conditional GET, broken feeds."""

from __future__ import annotations

from datetime import timedelta

import pytest
from digest_helpers import CURRENT_TITLES, NOW, OLD_TITLE, all_articles, load_fixture_feeds

from newsletter.digests import feeds
from newsletter.extensions import db
from newsletter.models import Article, Feed


def test_fixture_feeds_become_clean_articles(app, feed_server):
    with app.app_context():
        results = load_fixture_feeds(feed_server)
        assert [(r.status, r.added, r.updated) for r in results] == [("ok", 5, 1), ("ok", 2, 0)]
        stored = {a.title: a for a in all_articles()}
        # The repeated guid updated its article instead of adding one.
        assert set(stored) == CURRENT_TITLES | {OLD_TITLE}
        library = stored["Nytt bibliotek i Ålidhem öppnar i vår (uppdaterad)"]
        assert library.source_id == "https://norrsken.example/?p=2210"  # non-permalink guid
        assert library.url == "https://norrsken.example/nyheter/nytt-bibliotek-alidhem/"
        # The update had no content:encoded: the image and body of the first version stay.
        assert library.image_url == "https://norrsken.example/wp-content/uploads/2026/11/bibliotek.jpg"
        assert library.image_alt == "Skiss över biblioteket"
        assert library.body_html.startswith("<p>Efter två års planering")
        assert library.author == "Redaktionen"  # dc:creator
        # Categories map to topics; Krönikor is configured to go to nyheter.
        topics = {title: a.topic.slug for title, a in stored.items()}
        assert topics["Pressmeddelande: 12 miljoner till upprustning av lekplatser"] == "pressmeddelanden"
        assert topics["Krönika: Därför behöver vi fler mötesplatser 🏠"] == "nyheter"
        assert topics["Tankar efter en vecka i Stockholm"] == "blogg"
        # Entities decoded into plain text; WordPress's "[…]" became an ellipsis.
        press = stored["Pressmeddelande: 12 miljoner till upprustning av lekplatser"]
        assert "14 lekplatser & två" in press.summary and "&amp;" not in press.summary
        # The item without a date got the time it was collected.
        assert stored["Krönika: Därför behöver vi fler mötesplatser 🏠"].published_at == NOW
        blog = stored["Tankar efter en vecka i Stockholm"]
        assert blog.author == "Maria Öberg"
        assert blog.published_at.isoformat() == "2026-11-21T19:05:00+00:00"  # +01:00 in the feed
        assert "<blockquote>Samhället är människans verk.</blockquote>" in blog.body_html
        feed_titles = sorted(f.title for f in db.session.execute(db.select(Feed)).scalars())
        assert feed_titles == ["Nyheter – Föreningen Norrsken", "Ordförandens blogg"]


def test_script_tags_event_handlers_and_javascript_links_are_gone(app, feed_server):
    with app.app_context():
        load_fixture_feeds(feed_server)
        meeting = db.session.execute(
            db.select(Article).filter_by(source_id="https://norrsken.example/?p=2199")).scalar_one()
        assert meeting.title == "Öppet möte om kollektivtrafiken"
        assert meeting.summary == ("Välkommen till Folkets hus den 3 december kl 18.30. "
                                   "Anmälan behövs inte.")
        for article in all_articles():
            for value in (article.title, article.summary, article.body_html, article.url, article.image_url):
                lowered = value.lower()
                assert "<script" not in lowered and "alert(" not in lowered
                assert "javascript:" not in lowered and "onerror" not in lowered


def test_second_poll_is_conditional_and_changes_nothing(app, feed_server):
    with app.app_context():
        load_fixture_feeds(feed_server)
        before = {(a.id, a.title, a.published_at) for a in all_articles()}
        results = feeds.fetch_all_feeds(NOW + timedelta(hours=1))
        assert [r.status for r in results] == ["not-modified", "not-modified"]
        assert {(a.id, a.title, a.published_at) for a in all_articles()} == before
        second = [headers for path, headers in feed_server.requests if path == "/nyheter.rss"][1]
        assert second["If-None-Match"].startswith('"')
        assert second["If-Modified-Since"] == feed_server.LAST_MODIFIED
        feed = db.session.execute(db.select(Feed).filter_by(url=feed_server.url("/nyheter.rss"))).scalar_one()
        assert feed.last_status == "not-modified" and feed.etag


def test_a_changed_feed_updates_and_keeps_the_undated_items_first_collection_time(app, feed_server):
    with app.app_context():
        load_fixture_feeds(feed_server)
        feed_server.files["/nyheter.rss"] = feed_server.files["/nyheter.rss"].replace(
            b"Efter tv\xc3\xa5 \xc3\xa5rs", b"Efter tre \xc3\xa5rs")
        later = NOW + timedelta(days=1)
        result = feeds.fetch_all_feeds(later)[0]
        assert (result.status, result.added, result.updated) == ("ok", 0, 6)
        column = db.session.execute(
            db.select(Article).filter_by(source_id="https://norrsken.example/?p=2195")).scalar_one()
        assert column.published_at == NOW  # not bumped to the time of the second poll
        assert len(all_articles()) == 7


@pytest.mark.parametrize("problem", ["404", "500", "not-a-feed", "unreachable"])
def test_a_broken_feed_is_recorded_and_skipped(app, feed_server, problem, caplog):
    with app.app_context():
        if problem == "unreachable":
            from conftest import free_port

            bad_url = f"http://127.0.0.1:{free_port()}/feed"
        else:
            feed_server.files["/broken"] = {"404": 404, "500": 500}.get(problem, b"<html>no feed</html>")
            bad_url = feed_server.url("/broken")
        feeds.add_feed(bad_url)
        results = load_fixture_feeds(feed_server)
        assert [r.status for r in results] == ["error", "ok", "ok"]
        assert results[0].error
        broken = db.session.execute(db.select(Feed).filter_by(url=bad_url)).scalar_one()
        assert broken.last_status == "error" and broken.last_error
        assert len(all_articles()) == 7  # the other feeds were read all the same
    assert any("skipped" in record.getMessage() for record in caplog.records)


def test_feed_urls_setting_registers_feeds(app_config, feed_server):
    from conftest import _reset_database

    from config import TestConfig
    from newsletter import create_app

    app_config["FEED_URLS"] = [feed_server.url("/nyheter.rss"), feed_server.url("/blogg.atom")]
    app = create_app(app_config, config_class=TestConfig)
    _reset_database(app)
    with app.app_context():
        results = feeds.fetch_all_feeds(NOW)
        assert [r.url for r in results] == app_config["FEED_URLS"]
        assert len(all_articles()) == 7
        db.session.remove()
        db.engine.dispose()


def test_feed_with_a_topic_puts_every_article_there(app, feed_server):
    with app.app_context():
        feed = feeds.add_feed(feed_server.url("/blogg.atom"), topic_slug="nyheter")
        feeds.fetch_feed(feed, now=NOW)
        assert {a.topic.slug for a in all_articles()} == {"nyheter"}
        with pytest.raises(ValueError):
            feeds.add_feed("javascript:alert(1)")
        with pytest.raises(ValueError):
            feeds.add_feed(feed_server.url("/x"), topic_slug="no-such-topic")


def test_feeds_cli_add_fetch_list(runner, feed_server):
    result = runner.invoke(args=["feeds", "add", feed_server.url("/nyheter.rss"), "--topic", "nyheter"])
    assert result.exit_code == 0 and result.output.endswith(", 5 articles\n"), result.output
    result = runner.invoke(args=["feeds", "fetch"])
    assert result.exit_code == 0 and "not-modified  +0 new" in result.output
    result = runner.invoke(args=["feeds", "list"])
    assert "not-modified" in result.output and feed_server.url("/nyheter.rss") in result.output
    result = runner.invoke(args=["feeds", "add", "ftp://example.se/feed"])
    assert result.exit_code != 0 and "not an http(s) URL" in result.output


def test_articles_add_by_hand(app, runner):
    result = runner.invoke(args=[
        "articles", "add", "--title", "Höstmarknad <b>på torget</b>", "--url", "https://norrsken.example/marknad/",
        "--summary", "Kom &amp; fika", "--topic", "blogg", "--published", "2026-11-22T10:00"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        article = all_articles()[0]
        assert article.title == "Höstmarknad på torget" and article.summary == "Kom & fika"
        assert article.topic.slug == "blogg"
        assert article.published_at.isoformat() == "2026-11-22T09:00:00+00:00"  # Stockholm time
    again = runner.invoke(args=["articles", "add", "--title", "X", "--url", "https://norrsken.example/marknad/"])
    assert again.exit_code != 0 and "exists already" in again.output
    for bad in (["--url", "javascript:alert(1)"], ["--url", "https://e.se/", "--published", "igår"],
                ["--url", "https://e.se/", "--topic", "sport"]):
        result = runner.invoke(args=["articles", "add", "--title", "T", *bad])
        assert result.exit_code != 0 and "Error" in result.output
    with app.app_context():
        assert len(all_articles()) == 1
