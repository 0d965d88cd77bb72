"""Feeds managed like anything else: added only when a fetch gives RSS/Atom, edited, paused,
removed (articles stay), listed with their last poll, from the CLI, the admin and the API."""

from __future__ import annotations

from admin_helpers import csrf_token, log_in
from api_helpers import Api, make_token
from sqlalchemy import func, select

from newsletter import digests
from newsletter.digests import feed_registry as feeds
from newsletter.extensions import db
from newsletter.models import Article, AuditEvent, Feed

PAGE = b"<!doctype html><html><head><title>Norrsken</title></head><body><p>Hej</p></body></html>"


def _count(model, *where) -> int:
    return db.session.execute(select(func.count()).select_from(model).where(*where)).scalar_one()


# --- the command line ------------------------------------------------------------------------


def test_feeds_add_refuses_a_404_a_web_page_and_an_unreachable_address(app, runner, feed_server):
    feed_server.files["/sida.html"] = PAGE
    result = runner.invoke(args=["feeds", "add", feed_server.url("/borta.rss")])
    assert result.exit_code == 1
    assert f"{feed_server.url('/borta.rss')} not added: the server answered with an error: 404" \
        in result.output
    result = runner.invoke(args=["feeds", "add", feed_server.url("/sida.html")])
    assert result.exit_code == 1 and "this address is not an RSS or Atom feed" in result.output
    result = runner.invoke(args=["feeds", "add", "http://127.0.0.1:9/feed"])
    assert result.exit_code == 1 and "the server could not be reached: " in result.output
    result = runner.invoke(args=["feeds", "add", feed_server.url("/nyheter.rss"), "--topic", "ingen"])
    assert result.exit_code == 1 and "no such topic: ingen" in result.output
    with app.app_context():
        assert _count(Feed) == 0 and _count(Article) == 0


def test_feeds_add_edit_pause_resume_remove_and_list(app, runner, feed_server):
    result = runner.invoke(args=["feeds", "add", feed_server.url("/nyheter.rss"), "--topic", "nyheter"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"feed 1: {feed_server.url('/nyheter.rss')} (topic nyheter), 5 articles"
    assert runner.invoke(args=["feeds", "add", feed_server.url("/blogg.atom")]).exit_code == 0

    result = runner.invoke(args=["feeds", "edit", "1", "--by-category"])
    assert result.exit_code == 0 and "(topic by category)" in result.output
    result = runner.invoke(args=["feeds", "edit", "2", "--url", feed_server.url("/borta.atom")])
    assert result.exit_code == 1 and "feed 2 not changed: the server answered with an error: 404" \
        in result.output
    feed_server.files["/ny-blogg.atom"] = feed_server.files["/blogg.atom"]
    result = runner.invoke(args=["feeds", "edit", feed_server.url("/blogg.atom"), "--url",
                                 feed_server.url("/ny-blogg.atom"), "--topic", "blogg"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        moved = db.session.get(Feed, 2)
        assert moved.url == feed_server.url("/ny-blogg.atom") and moved.topic.slug == "blogg"

    assert runner.invoke(args=["feeds", "pause", "1"]).exit_code == 0
    feed_server.requests.clear()
    result = runner.invoke(args=["feeds", "fetch"])
    assert result.exit_code == 0 and feed_server.url("/nyheter.rss") not in result.output
    assert [path for path, _ in feed_server.requests] == ["/ny-blogg.atom"]
    feed_server.files["/ny-blogg.atom"] = 500
    runner.invoke(args=["feeds", "fetch"])
    listing = runner.invoke(args=["feeds", "list"]).output
    assert "  1  paused" in listing and feed_server.url("/nyheter.rss") in listing
    assert "last error: HTTPError: 500" in listing

    assert runner.invoke(args=["feeds", "resume", feed_server.url("/nyheter.rss")]).exit_code == 0
    result = runner.invoke(args=["feeds", "remove", feed_server.url("/nyheter.rss")])
    assert result.exit_code == 0 and "(5 articles kept)" in result.output
    with app.app_context():
        assert _count(Feed) == 1
        assert _count(Article, Article.feed_id.is_(None)) == 5  # the removed feed's articles stay
    assert runner.invoke(args=["feeds", "remove", "99"]).exit_code == 1


def test_a_feed_set_in_feed_urls_is_paused_not_removed(make_app, feed_server):
    app = make_app(FEED_URLS=[feed_server.url("/nyheter.rss")])
    runner = app.test_cli_runner()
    result = runner.invoke(args=["feeds", "remove", feed_server.url("/nyheter.rss")])
    assert result.exit_code == 1 and "this feed is set in FEED_URLS" in result.output
    assert runner.invoke(args=["feeds", "pause", "1"]).exit_code == 0
    with app.app_context():
        assert digests.fetch_all_feeds() == []


# --- the admin ---------------------------------------------------------------------------------


def test_admin_adds_a_checked_feed_and_edits_pauses_and_removes_it(app, client, feed_server):
    log_in(client, app)
    token = csrf_token(client, "/admin/feeds")
    refused = client.post("/admin/feeds", data={"csrf_token": token, "url": feed_server.url("/borta.rss"),
                                                "topic": ""})
    assert refused.status_code == 422
    assert "Kunde inte läggas till: servern svarade 404" in refused.get_data(as_text=True)
    added = client.post("/admin/feeds", data={"csrf_token": token, "url": feed_server.url("/nyheter.rss"),
                                              "topic": ""}, follow_redirects=True)
    assert "Flödet lades till med 5 artiklar." in added.get_data(as_text=True)
    with app.app_context():
        feed_id = db.session.execute(select(Feed.id)).scalar_one()

    edit = client.get(f"/admin/feeds/{feed_id}")
    assert edit.status_code == 200 and feed_server.url("/nyheter.rss") in edit.get_data(as_text=True)
    changed = client.post(f"/admin/feeds/{feed_id}", data={
        "csrf_token": token, "url": feed_server.url("/nyheter.rss"), "topic": "pressmeddelanden"})
    assert changed.status_code == 303
    not_a_feed = client.post(f"/admin/feeds/{feed_id}", data={
        "csrf_token": token, "url": feed_server.url("/"), "topic": ""})
    assert not_a_feed.status_code == 422
    assert "servern svarade 404" in not_a_feed.get_data(as_text=True)

    assert client.post(f"/admin/feeds/{feed_id}/pause", data={"csrf_token": token}).status_code == 303
    page = client.get("/admin/feeds").get_data(as_text=True)
    assert "Pausat" in page and "Fortsätt" in page
    with app.app_context():
        feed = db.session.get(Feed, feed_id)
        assert feed.paused and feed.topic.slug == "pressmeddelanden"
    assert client.post(f"/admin/feeds/{feed_id}/resume", data={"csrf_token": token}).status_code == 303
    removed = client.post(f"/admin/feeds/{feed_id}/remove", data={"csrf_token": token}, follow_redirects=True)
    assert "Flödet togs bort; dess 5 artiklar finns kvar." in removed.get_data(as_text=True)
    with app.app_context():
        assert _count(Feed) == 0 and _count(Article) == 5
        actions = {a for a, in db.session.execute(select(AuditEvent.action))}
        assert {"feed.add", "feed.edit", "feed.pause", "feed.resume", "feed.remove"} <= actions


def test_admin_feed_pages_need_a_login(client):
    for url in ("/admin/feeds/1", "/admin/feeds/1/pause", "/admin/feeds/1/remove"):
        response = client.post(url) if not url.endswith("/1") else client.get(url)
        assert response.status_code in (302, 400, 403)


# --- the API ---------------------------------------------------------------------------------


def test_api_adds_lists_changes_pauses_and_removes_feeds(app, client, feed_server):
    api = Api(client, make_token(app, "editor"))
    refused = api.post("/feeds", json={"url": feed_server.url("/borta.rss")})
    assert refused.status_code == 422 and refused.json["error"]["code"] == "feed_http"
    assert "404" in refused.json["error"]["message"]
    created = api.post("/feeds", json={"url": feed_server.url("/nyheter.rss"), "topic": "nyheter"})
    assert created.status_code == 201, created.json
    feed = created.json
    assert feed["topic"] == "nyheter" and feed["paused"] is False and feed["last_status"] == "ok"
    assert api.post("/feeds", json={"url": feed_server.url("/nyheter.rss")}).status_code == 200

    changed = api.patch(f"/feeds/{feed['id']}", json={"topic": None, "paused": True})
    assert changed.status_code == 200 and changed.json["topic"] is None and changed.json["paused"] is True
    assert api.patch(f"/feeds/{feed['id']}", json={"colour": "red"}).status_code == 422
    listed = api.get("/feeds").json["data"]
    assert [(f["id"], f["paused"]) for f in listed] == [(feed["id"], True)]
    assert api.delete(f"/feeds/{feed['id']}").status_code == 204
    assert api.get(f"/feeds/{feed['id']}").status_code == 404
    with app.app_context():
        assert _count(Article) == 5
    document = client.get("/api/v1/openapi.json").json
    assert {"/feeds", "/feeds/{feed_id}"} <= set(document["paths"])


# --- the rules underneath ------------------------------------------------------------------------


def test_refusals_say_why_in_words(app, feed_server):
    with app.app_context():
        for path, reason in (("/borta.rss", "http"), ("/", "http")):
            try:
                feeds.register_feed(feed_server.url(path))
            except feeds.FeedRefused as exc:
                assert exc.reason == reason
            else:
                raise AssertionError("a 404 was added")
        feed_server.files["/sida.html"] = PAGE
        try:
            feeds.register_feed(feed_server.url("/sida.html"))
        except feeds.FeedRefused as exc:
            assert exc.reason == "not-a-feed"
        else:
            raise AssertionError("a web page was added")
        assert _count(Feed) == 0
