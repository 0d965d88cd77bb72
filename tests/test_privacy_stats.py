"""Statistics without tracking: per-send figures, and clicks per article only with STATS_CLICKS."""

from __future__ import annotations

import re

from admin_helpers import logged_in
from api_helpers import Api, make_token
from delivery_helpers import seed
from sqlalchemy import select

from newsletter import delivery, subscriptions
from newsletter.delivery import bounces
from newsletter.extensions import db
from newsletter.models import ArticleClick, Digest, SendTotal
from newsletter.subscriptions import tokens

LINK = re.compile(r"https?://[^\s\"'<>]+")


def _links(smtp_server) -> set[str]:
    found = set()
    for message in smtp_server.messages():
        for part in ("plain", "html"):
            body = message.get_body(preferencelist=(part,)).get_content()
            found.update(LINK.findall(body.replace("=\r\n", "")))
    return found


def test_without_stats_clicks_no_link_goes_through_the_redirect(smtp_app, smtp_server):
    with smtp_app.app_context():
        digest_id = seed(3)
        article_url = db.session.get(Digest, digest_id).articles[0].url
        assert delivery.send_digest(digest_id)["sent"] == 3
    links = _links(smtp_server)
    assert article_url in links
    # Every digest's footer links to the privacy page, in the reader's language.
    assert {"http://newsletter.test/privacy?lang=sv", "http://newsletter.test/privacy?lang=en"} <= links
    assert not [link for link in links if "/r/" in link]
    assert not [link for link in links if "pixel" in link or link.endswith((".gif", "/open"))]


def test_the_click_redirect_counts_per_article_and_stores_no_reader(smtp_app, smtp_server):
    smtp_app.config["STATS_CLICKS"] = True
    with smtp_app.app_context():
        digest_id = seed(3)
        article = db.session.get(Digest, digest_id).articles[0]
        article_id, article_url = article.id, article.url
        assert delivery.send_digest(digest_id)["sent"] == 3
    counted = {link for link in _links(smtp_server) if "/r/" in link}
    # One link for everyone: nothing in it tells readers apart.
    assert len(counted) == 1 and article_url not in _links(smtp_server)
    client = smtp_app.test_client()
    path = counted.pop().split("newsletter.test", 1)[1]
    for _ in range(2):
        response = client.get(path)
        assert response.status_code == 302 and response.headers["Location"] == article_url
        assert "Set-Cookie" not in response.headers
    assert client.get("/r/forged-token").status_code == 404
    with smtp_app.app_context():
        [row] = db.session.execute(select(ArticleClick)).scalars()
        assert (row.digest_id, row.article_id, row.clicks) == (digest_id, article_id, 2)
        assert {c.name for c in ArticleClick.__table__.columns} == {"digest_id", "article_id", "clicks"}
        token = make_token(smtp_app)
    progress = Api(client, token).get(f"/digests/{digest_id}").get_json()["progress"]
    assert progress["clicks"] == {str(article_id): 2}
    page = logged_in(smtp_app, "editor").get(f"/admin/sends/{digest_id}").get_data(as_text=True)
    assert 'id="article-clicks"' in page


def test_unsubscribes_and_complaints_count_for_the_latest_send(smtp_app, smtp_server):
    with smtp_app.app_context():
        digest_id = seed(4)
        assert delivery.send_digest(digest_id)["sent"] == 4
        one_click = tokens.unsubscribe_url(subscriptions.find_subscriber("p1@example.se"))
        # By an admin: not from a link of the send.
        subscriptions.unsubscribe(subscriptions.find_subscriber("p2@example.se"), source="admin")
        client = smtp_app.test_client()
        for _ in range(2):  # the second is a repeat: it changes nothing
            client.post(one_click.split("newsletter.test", 1)[1], data={"List-Unsubscribe": "One-Click"})
        bounces.record_bounce("p3@example.se", kind="complaint", source="webhook")
        bounces.record_bounce("p3@example.se", kind="complaint", source="webhook")  # once is enough
        totals = db.session.get(SendTotal, digest_id)
        assert (totals.unsubscribes, totals.complaints) == (1, 1)
        progress = delivery.send_progress(digest_id)
        assert (progress["sent"], progress["unsubscribes"], progress["complaints"]) == (4, 1, 1)
    page = logged_in(smtp_app, "editor").get("/admin/").get_data(as_text=True)
    assert "Unsubscribes" in page or "Avregistreringar" in page
