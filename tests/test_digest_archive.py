"""The public archive: sent digests newest first, each as a page without any personal link,
drafts not public, and the Atom feed of the archive."""

from __future__ import annotations

import re
from datetime import timedelta

import feedparser
import pytest
from conftest import body_text
from digest_helpers import NOW, subscriber

from newsletter import delivery, digests
from newsletter.digests import articles
from newsletter.extensions import db
from newsletter.models import Digest

TOKEN_LINK = re.compile(r"/(unsubscribe|preferences|confirm)/[^\s\"'<]+")


def _digest(title: str, now, *, send: bool = True) -> int:
    articles.add_article(title=title, url=f"https://norrsken.example/{len(title)}-{now:%j}/", published=now)
    digest = digests.compile_digest(now)
    if send:
        delivery.send_digest(digest.id)
    return digest.id


@pytest.fixture
def archive(smtp_app, smtp_server):
    """Three sent digests a week apart, and a draft compiled after them."""
    with smtp_app.app_context():
        subscriber("alla@example.se")
        ids = {
            "old": _digest("Höstmötet närmar sig", NOW - timedelta(days=14)),
            "middle": _digest("Ny styrelse vald", NOW - timedelta(days=7)),
            "new": _digest("Öppet hus på lördag", NOW),
            "draft": _digest("Ännu inte skickat", NOW + timedelta(days=1), send=False),
        }
    return ids


def test_archive_lists_sent_digests_newest_first_and_no_drafts(smtp_app, archive):
    client = smtp_app.test_client()
    page = client.get("/archive?lang=sv").get_data(as_text=True)
    links = re.findall(r'href="/archive/(\d+)"', page)
    assert links == [str(archive["new"]), str(archive["middle"]), str(archive["old"])]
    assert "Vecka 48: Öppet hus på lördag" in page and "Ännu inte skickat" not in page
    assert "23 november 2026" in page
    english = client.get("/archive?lang=en").get_data(as_text=True)
    assert "Week 48: Öppet hus på lördag" in english and '<html lang="en"' in english


def test_an_archived_digest_has_no_personal_link(smtp_app, smtp_server, archive):
    client = smtp_app.test_client()
    response = client.get(f"/archive/{archive['new']}?lang=sv")
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert "script-src 'none'" in response.headers["Content-Security-Policy"]
    html = response.get_data(as_text=True)
    assert '<html lang="sv"' in html and "Öppet hus på lördag" in html
    assert not TOKEN_LINK.search(html), TOKEN_LINK.search(html)
    assert "@example" not in html  # no subscriber's address either
    assert 'href="http://newsletter.test/subscribe"' in html  # an invitation instead
    assert 'href="http://newsletter.test/archive"' in html
    # The subscriber's own copy did have its links, and its "read in the browser" link leads here.
    own = body_text(smtp_server.messages(to="alla@example.se")[-1], "html")
    assert TOKEN_LINK.search(own)
    web = re.search(r'href="http://newsletter.test(/archive/\d+\?lang=sv)"', own).group(1)
    assert client.get(web).get_data(as_text=True) == html
    english = client.get(f"/archive/{archive['new']}?lang=en").get_data(as_text=True)
    assert '<html lang="en"' in english and "This week's news" in english and not TOKEN_LINK.search(english)


def test_only_digests_sent_or_being_sent_are_public(smtp_app, archive):
    client = smtp_app.test_client()
    for status in ("draft", "approved", "cancelled", "paused", "sending"):
        with smtp_app.app_context():
            db.session.get(Digest, archive["draft"]).status = status
            db.session.commit()
        # "sending" is public: readers click "read it in your browser" while the send goes on.
        expected = 200 if status == "sending" else 404
        assert client.get(f"/archive/{archive['draft']}").status_code == expected, status
        listed = f"/archive/{archive['draft']}" in client.get("/archive").get_data(as_text=True)
        in_feed = f"/archive/{archive['draft']}" in client.get("/archive/feed.xml").get_data(as_text=True)
        assert listed is in_feed is (status == "sending"), status
    assert client.get("/archive/99999").status_code == 404


def test_archive_atom_feed(smtp_app, archive):
    response = smtp_app.test_client().get("/archive/feed.xml?lang=sv")
    assert response.status_code == 200 and response.mimetype == "application/atom+xml"
    feed = feedparser.parse(response.data)
    assert not feed.bozo, feed.bozo_exception
    assert feed.feed.title == "Nyhetsbrevsarkiv"
    assert [entry.link for entry in feed.entries] == [
        f"http://newsletter.test/archive/{archive[key]}?lang=sv" for key in ("new", "middle", "old")]
    assert feed.entries[0].title == "Vecka 48: Öppet hus på lördag"
    assert feed.entries[0].summary == "Öppet hus på lördag"
    assert not TOKEN_LINK.search(response.get_data(as_text=True))
