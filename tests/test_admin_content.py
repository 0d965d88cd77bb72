"""Admin content pages: articles, feeds, the coming digest, sends (test client, both databases).

Every route is reached by an editor; a logged-out visitor and a POST without the CSRF token
change nothing; an XSS payload in an article title (plain text, so it must be escaped) never
becomes markup on any page.
"""

from __future__ import annotations

import re
import time

from admin_helpers import XSS, add_article, add_subscribers, csrf_token, injected, log_in
from sqlalchemy import func, select

from newsletter import delivery, digests, scheduler
from newsletter.digests import feed_polls
from newsletter.engine.clock import utcnow
from newsletter.extensions import db
from newsletter.models import Article, AuditEvent, Delivery, Digest, Feed

GET_ROUTES = [
    "/admin/articles", "/admin/articles/new", "/admin/articles/1", "/admin/feeds", "/admin/digest",
    "/admin/digest/send", "/admin/digest/preview/sv.html", "/admin/digest/preview/en.html",
    "/admin/digest/preview/sv.txt", "/admin/sends", "/admin/sends/1", "/admin/sends/1/progress.json",
]
POST_ROUTES = [
    "/admin/articles/1/hide", "/admin/articles/1/unhide", "/admin/feeds/fetch", "/admin/feeds/1/fetch",
    "/admin/digest/intro", "/admin/digest/test", "/admin/digest/send", "/admin/sends/1/pause",
    "/admin/sends/1/resume", "/admin/sends/1/cancel",
]


def _audit_actions(app) -> list[str]:
    with app.app_context():
        return list(db.session.execute(select(AuditEvent.action).order_by(AuditEvent.id)).scalars())


def _page(client, url: str, status: int = 200) -> str:
    response = client.get(url)
    assert response.status_code == status, (url, response.status_code, response.get_data(as_text=True)[:1500])
    return response.get_data(as_text=True)


def _digest_mail(smtp_server) -> list:
    """The messages to subscribers (not the admins' test or end-of-send summary)."""
    return [m for m in smtp_server.messages() if not m["To"].endswith("@norrsken.example")]


def _sent_digest(app, recipients: int = 3) -> int:
    """A digest sent (synchronously) to `recipients` subscribers; its id."""
    with app.app_context():
        add_subscribers(recipients, prefix="mottagare")
        digest = digests.prepare_digest()
        delivery.send_digest(digest.id)
        return digest.id


# --- access ------------------------------------------------------------------------------


def test_logged_out_visitor_gets_nothing(app, client):
    with app.app_context():
        add_article("Kommunen bygger ny simhall")
    for url in GET_ROUTES:
        response = client.get(url)
        assert response.status_code == 302 and "/admin/login" in response.headers["Location"], url
    for url in POST_ROUTES:
        response = client.post(url, data={"intro": "Hej"})
        assert response.status_code in (302, 400), url  # to the login page, or refused for the CSRF token
    with app.app_context():
        assert db.session.execute(select(func.count()).select_from(Digest)).scalar_one() == 0
        assert db.session.get(Article, 1).hidden is False


def test_editors_and_admins_reach_every_content_page(app, client):
    log_in(client, app, role="editor")
    admin_client = app.test_client()
    log_in(admin_client, app, email="admin@norrsken.example", role="admin")
    with app.app_context():
        add_article("Kommunen bygger ny simhall")
    for url in GET_ROUTES[:9]:  # the coming digest: before it is sent
        _page(client, url)
    digest_id = _sent_digest(app)
    for url in GET_ROUTES:
        url = url.replace("/sends/1", f"/sends/{digest_id}")
        if "/preview/" in url:
            continue  # nothing is coming once the digest is sent
        _page(client, url)
        _page(admin_client, url)


def test_forged_post_without_csrf_token_changes_nothing(app, client):
    log_in(client, app)
    with app.app_context():
        add_article("Kommunen bygger ny simhall")
        add_subscribers(2)
    for url in ["/admin/articles/1/hide", "/admin/digest/intro", "/admin/digest/send", "/admin/feeds/fetch"]:
        response = client.post(url, data={"intro": "Förfalskad"}, headers={"Origin": "https://evil.example"})
        assert response.status_code == 400, url
        assert "another site" in response.get_data(as_text=True) or "annan webbplats" in \
            response.get_data(as_text=True)
    response = client.post("/admin/digest/send", data={"csrf_token": "forged"})
    assert response.status_code == 400
    with app.app_context():
        assert db.session.get(Article, 1).hidden is False
        assert db.session.execute(select(func.count()).select_from(Digest)).scalar_one() == 0
        assert db.session.execute(select(func.count()).select_from(Delivery)).scalar_one() == 0


# --- articles ------------------------------------------------------------------------------


def test_article_list_shows_the_coming_digest_first_then_hidden_then_earlier(app, client):
    log_in(client, app)
    with app.app_context():
        add_article("Nytt bibliotek öppnar", days_ago=1)
        hidden = add_article("Dold nyhet", days_ago=2)
        hidden.hidden = True
        add_article("Gammal krönika", days_ago=20)
        db.session.commit()
    html = _page(client, "/admin/articles?lang=sv")
    coming, rest = html.split('id="hidden-heading"')
    hidden_part, earlier = rest.split('id="earlier-heading"')
    assert "Nytt bibliotek öppnar" in coming and "Dold nyhet" not in coming
    assert "Dold nyhet" in hidden_part and "Lägg tillbaka i utskicket" in hidden_part
    assert "Gammal krönika" in earlier and "För gammal för utskicket" in earlier
    assert "Hide from the digest" in _page(client, "/admin/articles?lang=en")


def test_add_article_by_hand_and_bad_url_is_refused(app, client):
    log_in(client, app)
    token = csrf_token(client, "/admin/articles/new")
    form = {"csrf_token": token, "title": "Öppet hus på fritidsgården", "url": "https://norrsken.example/oppet-hus",
            "summary": "Välkommen!", "topic": "blogg", "author": "Anna", "published": "2026-11-20T10:30"}
    response = client.post("/admin/articles/new", data=form)
    assert response.status_code == 302
    with app.app_context():
        article = db.session.execute(select(Article)).scalar_one()
        assert (article.title, article.topic.slug, article.author) == (
            "Öppet hus på fritidsgården", "blogg", "Anna")
        assert article.published_at.isoformat() == "2026-11-20T09:30:00+00:00"  # 10:30 in Stockholm
    bad = client.post("/admin/articles/new", data={**form, "url": "javascript:alert(1)", "title": "Ny"})
    assert bad.status_code == 422
    again = client.post("/admin/articles/new", data=form)  # the same URL twice
    assert again.status_code == 422 and "exists already" in again.get_data(as_text=True)
    assert "article.add" in _audit_actions(app)


def test_edit_article_changes_it_and_is_audited(app, client):
    log_in(client, app)
    with app.app_context():
        add_article("Stavfel i rubriken", topic="nyheter")
    html = _page(client, "/admin/articles/1")
    assert 'value="Stavfel i rubriken"' in html
    response = client.post("/admin/articles/1", data={
        "csrf_token": csrf_token(client), "title": "Rättad rubrik", "url": "https://norrsken.example/rattad",
        "summary": "Ny sammanfattning", "topic": "pressmeddelanden", "author": "", "published": "",
        "image_url": "", "image_alt": ""})
    assert response.status_code == 302
    with app.app_context():
        article = db.session.get(Article, 1)
        assert (article.title, article.url, article.topic.slug) == (
            "Rättad rubrik", "https://norrsken.example/rattad", "pressmeddelanden")
    assert "article.edit" in _audit_actions(app)
    assert client.get("/admin/articles/999").status_code == 404


def test_hide_and_unhide_take_an_article_out_of_the_coming_digest_and_its_draft(app, client):
    log_in(client, app)
    with app.app_context():
        add_article("Stannar kvar")
        add_article("Ska bort")
    # a saved draft
    client.post("/admin/digest/intro", data={"csrf_token": csrf_token(client), "intro": "Hej!"})
    response = client.post("/admin/articles/2/hide", data={"csrf_token": csrf_token(client)})
    assert response.status_code == 303
    with app.app_context():
        draft = digests.current_draft()
        assert [a.title for a in draft.articles] == ["Stannar kvar"]
        assert [a.title for a in digests.coming_digest().articles] == ["Stannar kvar"]
    assert "Ska bort" not in _page(client, "/admin/digest/preview/sv.html")
    client.post("/admin/articles/2/unhide", data={"csrf_token": csrf_token(client)})
    with app.app_context():
        assert {a.title for a in digests.current_draft().articles} == {"Stannar kvar", "Ska bort"}
    assert _audit_actions(app)[-2:] == ["article.hide", "article.unhide"]
    _sent_digest(app)  # once sent, an article stays as it was in that digest
    client.post("/admin/articles/1/hide", data={"csrf_token": csrf_token(client)})
    with app.app_context():
        assert db.session.get(Article, 1).hidden is False




# --- feeds ---------------------------------------------------------------------------------


def test_feeds_page_fetches_now_and_shows_errors(app, client, feed_server):
    log_in(client, app)
    feed_server.files["/trasig.rss"] = feed_server.files["/blogg.atom"]
    token = csrf_token(client, "/admin/feeds")
    for path in ("/nyheter.rss", "/trasig.rss"):
        response = client.post("/admin/feeds", data={"csrf_token": token, "url": feed_server.url(path),
                                                     "topic": ""})
        assert response.status_code == 303
    feed_server.files["/trasig.rss"] = 500  # broken after it was added
    feed_server.files["/nyheter.rss"] = feed_server.files["/nyheter.rss"].replace(b"?p=2210", b"?p=9999")
    bad = client.post("/admin/feeds", data={"csrf_token": token, "url": "ftp://x", "topic": ""})
    assert bad.status_code == 422
    response = client.post("/admin/feeds/fetch", data={"csrf_token": token}, follow_redirects=True)
    assert re.search(r"The feeds are being fetched|Flödena hämtas", response.get_data(as_text=True))
    feed_polls.wait()  # in the background: the page shows the outcome once it is there
    html = client.get("/admin/feeds").get_data(as_text=True)
    assert "HTTPError" in html and "500" in html  # the broken feed's error is shown
    with app.app_context():
        feeds = {f.url.rsplit("/", 1)[1]: f for f in db.session.execute(select(Feed)).scalars()}
        assert feeds["nyheter.rss"].last_status == "ok" and feeds["trasig.rss"].last_status == "error"
        assert db.session.execute(select(func.count()).select_from(Article)).scalar_one() > 0
    one = client.post(f"/admin/feeds/{feeds['nyheter.rss'].id}/fetch", data={"csrf_token": token})
    assert one.status_code == 303
    feed_polls.wait()
    assert feed_server.requests[-1][1].get("If-None-Match")  # conditional GET
    assert {"feed.add", "feed.fetch_all", "feed.fetch"} <= set(_audit_actions(app))


# --- the coming digest -----------------------------------------------------------------------


def test_digest_page_previews_html_in_a_sandboxed_iframe_and_the_text_per_language(app, client):
    log_in(client, app)
    with app.app_context():
        add_article("Nytt bibliotek öppnar", topic="nyheter")
        add_article("Tankar om hösten", topic="blogg")
    html = _page(client, "/admin/digest?preview=en&lang=en")
    iframe = re.search(r"<iframe[^>]*>", html).group(0)
    assert 'src="/admin/digest/preview/en.html"' in iframe and 'sandbox=""' in iframe and "title=" in iframe
    assert "Text part" in html and "Tankar om hösten" in html
    preview = client.get("/admin/digest/preview/en.html")
    assert preview.headers["Content-Security-Policy"].startswith("sandbox")
    assert preview.headers["X-Frame-Options"] == "SAMEORIGIN"
    body = preview.get_data(as_text=True)
    assert 'lang="en"' in body and "Nytt bibliotek öppnar" in body and "/unsubscribe/" not in body
    assert 'lang="sv"' in _page(client, "/admin/digest/preview/sv.html")
    text = client.get("/admin/digest/preview/sv.txt")
    assert text.mimetype == "text/plain" and "Tankar om hösten" in text.get_data(as_text=True)
    assert client.get("/admin/digest/preview/de.html").status_code == 404


def test_digest_page_when_nothing_is_new(app, client):
    log_in(client, app)
    html = _page(client, "/admin/digest?lang=en")
    assert "nothing new" in html and "<iframe" not in html
    assert client.get("/admin/digest/preview/sv.txt").status_code == 404
    response = client.post("/admin/digest/send", data={"csrf_token": csrf_token(client)},
                           follow_redirects=True)
    assert "nothing was sent" in response.get_data(as_text=True) or "inget skickades" in response.get_data(
        as_text=True)


def test_editors_intro_goes_on_top_of_the_digest(app, client):
    log_in(client, app)
    with app.app_context():
        add_article("Nytt bibliotek öppnar")
    response = client.post("/admin/digest/intro", data={
        "csrf_token": csrf_token(client), "intro": "Hej alla läsare!\r\n\r\nEn <b>fin</b> vecka."})
    assert response.status_code == 303
    with app.app_context():
        draft = digests.current_draft()
        assert draft.status == "draft" and draft.intro == "Hej alla läsare!\n\nEn <b>fin</b> vecka."
        assert draft.started_at is None
    preview = _page(client, "/admin/digest/preview/sv.html")
    assert "Hej alla läsare!" in preview and "En &lt;b&gt;fin&lt;/b&gt; vecka." in preview
    body = preview[preview.index("<body"):]
    assert body.index("Hej alla läsare!") < body.rindex("Nytt bibliotek öppnar")
    text = client.get("/admin/digest/preview/sv.txt").get_data(as_text=True)
    assert text.index("Hej alla läsare!") < text.rindex("Nytt bibliotek öppnar")
    assert "Hej alla läsare!" in _page(client, "/admin/digest")  # in the form, to edit it again
    with app.app_context():  # an article that comes later joins the draft
        add_article("Senare nyhet")
    assert "Senare nyhet" in _page(client, "/admin/digest/preview/sv.html")
    assert "digest.intro" in _audit_actions(app)


def test_send_a_test_to_me_goes_to_the_logged_in_admin_only(smtp_app, smtp_server):
    client = smtp_app.test_client()
    log_in(client, smtp_app, email="Redaktor@Norrsken.example")
    with smtp_app.app_context():
        add_article("Nytt bibliotek öppnar")
        add_subscribers(3)
    response = client.post("/admin/digest/test", data={"csrf_token": csrf_token(client), "language": "en"})
    assert response.status_code == 303
    messages = smtp_server.messages()
    assert len(messages) == 1 and messages[0]["To"] == "redaktor@norrsken.example"
    assert messages[0]["Subject"].startswith("[TEST]") and "Week" in messages[0]["Subject"]
    with smtp_app.app_context():
        assert db.session.execute(select(func.count()).select_from(Digest)).scalar_one() == 0
    assert "digest.test" in _audit_actions(smtp_app)


def test_send_now_confirms_the_count_then_sends_in_the_background(smtp_app, smtp_server):
    client = smtp_app.test_client()
    log_in(client, smtp_app)
    with smtp_app.app_context():
        add_article("Nytt bibliotek öppnar", topic="nyheter")
        add_subscribers(4, topics=("nyheter",))
        add_subscribers(2, topics=("blogg",), prefix="bloggare")  # nothing for them this week
    html = _page(client, "/admin/digest/send?lang=en")
    assert re.search(r'id="recipient-count">4<', html) and "Yes, send it to 4 subscribers" in html
    assert smtp_server.messages() == []  # the confirmation step sends nothing
    response = client.post("/admin/digest/send", data={"csrf_token": csrf_of_page(html)})
    assert response.status_code == 303
    digest_id = int(response.headers["Location"].rsplit("/", 1)[1])
    with smtp_app.app_context():
        delivery.wait_for_sends(30)
        assert db.session.get(Digest, digest_id).status == "done"
    assert sorted(m["To"] for m in _digest_mail(smtp_server)) == [f"person{n}@example.org" for n in range(4)]
    summary = smtp_server.messages(to="redaktor@norrsken.example")  # admins get a summary of the send
    assert len(summary) == 1 and "4" in summary[0].get_body(("plain",)).get_content()
    progress = client.get(f"/admin/sends/{digest_id}/progress.json").get_json()
    # The two whose topics have nothing this week are not recipients of this send.
    assert (progress["sent"], progress["skipped"], progress["total"], progress["percent"]) == (4, 0, 4, 100.0)
    assert progress["status"] == "done" and progress["final"] is True
    assert "send.start" in _audit_actions(smtp_app)


def csrf_of_page(html: str) -> str:
    return re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html).group(1)


def test_approval_mode_scheduler_compiles_a_draft_and_waits_for_an_editor(make_app, smtp_server):
    app = make_app(DIGEST_REQUIRE_APPROVAL=True, MAIL_URL=smtp_server.url, FEED_POLL_MINUTES=0)
    client = app.test_client()
    log_in(client, app)
    with app.app_context():
        add_article("Nytt bibliotek öppnar")
        add_subscribers(2)
    client.post("/admin/digest/intro", data={"csrf_token": csrf_token(client), "intro": "Redaktörens rader"})
    digest = scheduler.weekly_job(app, scheduled=utcnow(), now=utcnow())
    with app.app_context():
        draft = digests.current_draft()
        assert digest is not None  # (detached now: the run's own session has ended)
        only = db.session.execute(select(Digest)).scalar_one()  # the editor's draft, adopted
        assert draft.id == only.id
        assert draft.period and draft.intro == "Redaktörens rader" and draft.started_at is None
    assert smtp_server.messages() == []  # waits for an approval
    html = _page(client, "/admin/digest?lang=en")
    assert "only when an editor approves" in html and "Approve and send" in html
    response = client.post("/admin/digest/send", data={"csrf_token": csrf_token(client)})
    assert response.status_code == 303
    with app.app_context():
        delivery.wait_for_sends(30)
    assert len(_digest_mail(smtp_server)) == 2
    assert "Redaktörens rader" in _digest_mail(smtp_server)[0].get_body(("plain",)).get_content()
    assert {"digest.approve", "send.start"} <= set(_audit_actions(app))
    # The next run (another period) finds nothing new: no second digest.
    assert scheduler.weekly_job(app, scheduled=utcnow(), now=utcnow()) is None


def test_scheduler_without_approval_sends_the_editors_draft(make_app, smtp_server):
    app = make_app(MAIL_URL=smtp_server.url)
    with app.app_context():
        add_article("Nytt bibliotek öppnar")
        add_subscribers(2)
        digests.set_intro("Hej från redaktionen")
    assert scheduler.weekly_job(app, scheduled=utcnow(), now=utcnow()) is not None
    with app.app_context():
        assert db.session.execute(select(Digest.status)).scalar_one() == "done"  # one digest: the draft
    assert len(_digest_mail(smtp_server)) == 2
    assert "Hej från redaktionen" in _digest_mail(smtp_server)[0].get_body(("plain",)).get_content()


# --- sends ---------------------------------------------------------------------------------


def test_sends_list_and_progress_json(app, client):
    log_in(client, app)
    with app.app_context():
        add_article("Nytt bibliotek öppnar")
    digest_id = _sent_digest(app, recipients=3)
    html = _page(client, "/admin/sends?lang=en")
    assert f'href="/admin/sends/{digest_id}"' in html and "Done" in html
    page = _page(client, f"/admin/sends/{digest_id}?lang=en")
    assert f'data-progress-url="/admin/sends/{digest_id}/progress.json"' in page
    assert "admin-progress.js" in page and "<progress" in page
    progress = client.get(f"/admin/sends/{digest_id}/progress.json?lang=en").get_json()
    for key in ("queued", "sending", "sent", "failed", "bounced", "skipped", "total", "status", "rate",
                "eta_seconds", "started_at", "finished_at", "remaining", "percent", "eta_text", "rate_text"):
        assert key in progress, key
    assert (progress["sent"], progress["remaining"], progress["percent"]) == (3, 0, 100.0)
    assert progress["status_label"] == "Done"
    assert client.get("/admin/sends/999").status_code == 404
    assert client.get("/admin/sends/999/progress.json").status_code == 404


def test_cancel_stops_a_paused_send(app, client):
    log_in(client, app)
    with app.app_context():
        add_article("Nytt bibliotek öppnar")
        add_subscribers(3)
        digest = digests.prepare_digest()
        delivery.start_send(digest.id)
        delivery.pause_send(digest.id)
        digest_id = digest.id
    response = client.post(f"/admin/sends/{digest_id}/cancel", data={"csrf_token": csrf_token(client)})
    assert response.status_code == 303
    with app.app_context():
        assert db.session.get(Digest, digest_id).status == "cancelled"
    progress = client.get(f"/admin/sends/{digest_id}/progress.json").get_json()
    assert progress["final"] is True and progress["sent"] == 0 and progress["eta_text"] == "–"




def test_pause_resume_and_cancel_are_audited_and_obey_the_state(smtp_app, smtp_server):
    client = smtp_app.test_client()
    log_in(client, smtp_app)
    with smtp_app.app_context():
        add_article("Nytt bibliotek öppnar")
        add_subscribers(5)
        digest = digests.prepare_digest()
        delivery.start_send(digest.id)  # pinned and "sending", but no worker runs yet
        digest_id = digest.id
    token = csrf_token(client)
    assert client.post(f"/admin/sends/{digest_id}/pause", data={"csrf_token": token}).status_code == 303
    assert client.get(f"/admin/sends/{digest_id}/progress.json").get_json()["status"] == "paused"
    refused = client.post(f"/admin/sends/{digest_id}/pause", data={"csrf_token": token},
                          follow_redirects=True)
    assert "Det går inte just nu: utskicket är pausat." in refused.get_data(as_text=True)
    assert client.post(f"/admin/sends/{digest_id}/resume", data={"csrf_token": token}).status_code == 303
    with smtp_app.app_context():
        delivery.wait_for_sends(30)
    deadline = time.monotonic() + 30
    while client.get(f"/admin/sends/{digest_id}/progress.json").get_json()["status"] != "done":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert len(_digest_mail(smtp_server)) == 5
    done = client.post(f"/admin/sends/{digest_id}/cancel", data={"csrf_token": token})
    assert done.status_code == 303  # refused (a finished send cannot be cancelled), with a message
    actions = _audit_actions(smtp_app)
    assert actions.count("send.pause") == 1 and "send.resume" in actions and "send.cancel" not in actions
    with smtp_app.app_context():
        events = db.session.execute(
            select(AuditEvent).where(AuditEvent.action == "send.pause")).scalars().all()
        assert events[0].actor == "redaktor@norrsken.example" and events[0].target == f"digest:{digest_id}"


# --- XSS -------------------------------------------------------------------------------------


def test_xss_in_an_article_title_is_escaped_on_every_content_page(app, client):
    log_in(client, app)
    with app.app_context():
        add_article(XSS, summary=XSS)
        add_subscribers(2)
    pages = ["/admin/articles", "/admin/articles/1", "/admin/digest", "/admin/digest/send",
             "/admin/digest/preview/sv.html", "/admin/digest/preview/en.html"]
    for url in pages:
        html = _page(client, url)
        assert not injected(html, ("admin-progress.js",)), url
        # escaped as text, or inside a quoted attribute value (css-inline leaves "<" there: harmless)
        assert "&lt;script" in html or "<script>alert" in _attribute_values(html), url
    digest_id = _sent_digest(app)
    for url in ["/admin/sends", f"/admin/sends/{digest_id}", "/admin/articles"]:
        html = _page(client, url)
        assert not injected(html, ("admin-progress.js",)), url
    assert "&lt;script&gt;" in _page(client, "/admin/sends")  # the subject carries the headline
    text = client.get("/admin/digest/preview/sv.txt")
    assert text.status_code == 404 or text.headers["X-Content-Type-Options"] == "nosniff"


def _attribute_values(html: str) -> str:
    return " ".join(re.findall(r'="([^"]*)"', html))
