"""Feeds added by editors reach only public addresses, in every spelling and through redirects;
the operator's FEED_URLS are trusted; FEED_ALLOW_NETWORKS opens a range."""

from __future__ import annotations

import socket

import pytest
from admin_helpers import logged_in, post_form
from digest_helpers import NOW
from hostile_http import Answer, HostileServer, item, rss
from sqlalchemy import func, select

from newsletter.digests import feed_http, feeds
from newsletter.extensions import db
from newsletter.models import Article, Feed

REFUSED = "the address is not a public one"


@pytest.fixture
def inside():
    """A server on loopback that must never be reached, and one on 127.0.0.2."""
    first, second = HostileServer("127.0.0.1"), HostileServer("127.0.0.2")
    for server in (first, second):
        server.routes["/secret"] = Answer(rss("Hemligt", [item("Intern sida", "https://intern.example/x")]))
    yield first, second
    first.close()
    second.close()


def _spellings(port: int) -> list[str]:
    return [
        f"http://127.0.0.1:{port}/secret",
        f"http://127.1:{port}/secret",
        f"http://2130706433:{port}/secret",  # decimal
        f"http://0x7f000001:{port}/secret",  # hex
        f"http://0177.0.0.1:{port}/secret",  # octal
        f"http://0x7f.0.0.1:{port}/secret",
        f"http://localhost:{port}/secret",
        f"http://[::1]:{port}/secret",
        f"http://[::ffff:127.0.0.1]:{port}/secret",  # IPv4-mapped IPv6
        f"http://[::ffff:7f00:1]:{port}/secret",
        f"http://0.0.0.0:{port}/secret",
        "http://169.254.169.254/latest/meta-data/",  # link-local (cloud metadata)
        "http://10.1.2.3/feed",
        "http://192.168.0.1/feed",
        "http://172.16.5.4/feed",
        "http://100.64.0.1/feed",  # shared address space
        "http://[fd00::1]/feed",  # unique local
        "http://[fe80::1]/feed",
        "http://224.0.0.1/feed",  # multicast
        "http://240.0.0.1/feed",  # reserved
    ]


@pytest.mark.parametrize("index", range(20))
def test_an_editor_cannot_add_an_inside_address_in_any_spelling(make_app, inside, index):
    first, _second = inside
    url = _spellings(first.port)[index]
    app = make_app(FEED_ALLOW_NETWORKS=[])
    with app.app_context():
        with pytest.raises(ValueError) as refused:
            feeds.add_feed(url)
        assert REFUSED in str(refused.value)
        assert db.session.execute(select(func.count()).select_from(Feed)).scalar_one() == 0
    assert first.requests == []


@pytest.mark.parametrize("url", ["ftp://example.org/feed", "file:///etc/passwd", "gopher://127.0.0.1:70/",
                                 "http://[::1", "http://example.org:99999/"])
def test_only_http_and_https_urls_are_taken(make_app, url):
    app = make_app(FEED_ALLOW_NETWORKS=[])
    with app.app_context(), pytest.raises(ValueError):
        feeds.add_feed(url)


def test_the_admin_and_the_cli_refuse_inside_addresses_with_one_message(make_app, inside):
    first, _ = inside
    app = make_app(FEED_ALLOW_NETWORKS=[])
    editor = logged_in(app, "editor")
    for port in (first.port, 1, 9):  # one that answers, two that do not: the same words
        response = post_form(editor, "/admin/feeds", {"url": f"http://127.0.0.1:{port}/secret", "topic": ""},
                             page="/admin/feeds")
        assert response.status_code == 422
        page = response.get_data(as_text=True)
        assert REFUSED in page
        result = app.test_cli_runner().invoke(args=["feeds", "add", f"http://0x7f000001:{port}/secret"])
        assert result.exit_code != 0 and REFUSED in result.output
    assert first.requests == []


def test_a_redirect_inside_is_refused_on_every_hop(make_app, inside):
    first, second = inside
    target = f"http://0x7f000002:{second.port}/secret"  # 127.0.0.2, in hex
    first.routes["/feed.rss"] = Answer(status=302, headers={"Location": target})
    first.routes["/twice.rss"] = Answer(status=301, headers={"Location": "/feed.rss"})
    # Only 127.0.0.1 is opened: the feed itself may be reached, the redirect's target may not.
    app = make_app(FEED_ALLOW_NETWORKS=["127.0.0.1/32"])
    with app.app_context():
        for path in ("/feed.rss", "/twice.rss"):
            feed = feeds.add_feed(first.url(path))
            result = feeds.fetch_feed(feed, now=NOW)
            assert result.status == "error" and REFUSED in result.error
        assert second.requests == []
        assert db.session.execute(select(func.count()).select_from(Article)).scalar_one() == 0
    # With the whole loopback range opened, the same redirect is followed (the target answers).
    opened = make_app(FEED_ALLOW_NETWORKS=["127.0.0.0/8"])
    with opened.app_context():
        result = feeds.fetch_feed(feeds.add_feed(first.url("/feed.rss")), now=NOW)
        assert (result.status, result.added) == ("ok", 1)
    assert len(second.requests) == 1


def test_feed_urls_of_the_operator_are_trusted(make_app, inside):
    first, _ = inside
    url = first.url("/secret")
    app = make_app(FEED_ALLOW_NETWORKS=[], FEED_URLS=[url])
    with app.app_context():
        [result] = feeds.fetch_all_feeds(NOW)
        assert (result.status, result.added) == ("ok", 1)


def test_the_connection_goes_to_the_address_that_was_checked(monkeypatch, inside):
    """A name that resolves to an allowed address for the check and elsewhere afterwards (DNS
    rebinding) is fetched from the checked address: it is resolved once per hop."""
    first, second = inside
    first.routes["/feed.rss"] = Answer(rss("Rätt", [item("Rätt", "https://x.example/r")]))
    second.routes["/feed.rss"] = Answer(rss("Fel", [item("Fel", "https://x.example/f")]))
    answers = iter(["127.0.0.1", "127.0.0.2", "127.0.0.2"])
    real = socket.getaddrinfo

    def rebinding(host, port, *args, **kwargs):
        if host == "feed.rebind.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    response = feed_http.fetch(f"http://feed.rebind.test:{first.port}/feed.rss", headers={},
                               limits=feed_http.Limits(), allow=feed_http.parse_networks(["127.0.0.1/32"]))
    assert response.status == 200 and b"R\xc3\xa4tt" in response.content
    assert first.requests[0][1]["Host"] == f"feed.rebind.test:{first.port}"
    assert second.requests == []


@pytest.mark.parametrize(("address", "allowed"), [
    ("93.184.216.34", True), ("2606:2800:220:1:248:1893:25c8:1946", True),
    ("127.0.0.1", False), ("::1", False), ("::ffff:127.0.0.1", False), ("::ffff:10.0.0.1", False),
    ("10.0.0.1", False), ("169.254.1.1", False), ("fe80::1%eth0", False), ("ff02::1", False),
    ("0.0.0.0", False), ("::", False), ("192.0.2.1", False), ("198.18.0.1", False),
])
def test_address_allowed(address, allowed):
    assert feed_http.address_allowed(address) is allowed
