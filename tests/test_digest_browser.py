"""The digest as people see it: the email, the `digest preview` page and the public archive,
rendered in headless Chromium at 375 px (a phone) and 800 px (a desktop mail client), with
screenshots in test-artifacts/ and checks that nothing overflows."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
import time_machine
from conftest import body_text
from digest_helpers import ARTIFACTS, NOW, load_fixture_feeds, png, subscriber
from playwright.sync_api import sync_playwright
from werkzeug.serving import make_server

from newsletter import delivery
from newsletter.digests import articles

CHROMIUM = "/usr/bin/chromium"
WIDTHS = (375, 800)
PICTURE = png(1600, 900)  # every remote image is served as this: wider than any screen
LONG_WORD = "Kommunfullmäktigesammanträdesprotokollsjusteringsförfarandet" * 2

LAYOUT = """() => {
  const width = document.documentElement.clientWidth;
  const wide = [];
  for (const el of document.body.querySelectorAll('*')) {
    const style = getComputedStyle(el);
    const box = el.getBoundingClientRect();
    const hidden = style.display === 'none' || style.visibility === 'hidden';
    if (hidden || (box.width === 0 && box.height === 0)) continue;
    // Off-screen to the left (a skip link) is fine: it makes nothing scroll.
    if (box.right > width + 0.5 || box.width > width + 0.5)
      wide.push(`${el.tagName.toLowerCase()}.${el.className} ${box.left | 0}..${box.right | 0}`);
  }
  const content = document.querySelector('table.container');
  return {
    viewport: window.innerWidth, scrollWidth: document.documentElement.scrollWidth, wide,
    lang: document.documentElement.lang,
    contentWidth: content ? content.getBoundingClientRect().width : null,
    images: [...document.images].map(img => ({
      alt: img.getAttribute('alt'), loaded: img.complete && img.naturalWidth > 0,
      width: img.getBoundingClientRect().width})),
  };
}"""


@pytest.fixture(scope="module")
def browser():
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install -y chromium"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


def _open(browser, width: int, *, html: str | None = None, url: str | None = None, dark: bool = False):
    page = browser.new_page(viewport={"width": width, "height": 900}, locale="sv-SE",
                            color_scheme="dark" if dark else "light")
    # Nothing leaves the machine: pictures get a local PNG, anything else remote is refused.
    page.route("**/*", lambda route: (
        route.fulfill(status=200, body=PICTURE, content_type="image/png")
        if route.request.resource_type == "image" and "norrsken.example" in route.request.url
        else route.continue_() if route.request.url.startswith(("http://127.0.0.1", "data:", "file:"))
        else route.abort()))
    if html is not None:
        page.set_content(html, wait_until="load")
    else:
        page.goto(url, wait_until="load")
    return page


def _check_layout(page, width: int, lang: str, shot: str, *, email: bool = True) -> dict:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{shot}-{width}.png"), full_page=True)
    layout = page.evaluate(LAYOUT)
    assert layout["lang"] == lang
    assert layout["viewport"] == width
    assert layout["scrollWidth"] <= width, layout
    assert layout["wide"] == [], layout["wide"]
    for image in layout["images"]:
        assert image["alt"], image  # every image says what it shows
        assert image["loaded"] and image["width"] <= min(width, 600), image
    if email:
        assert layout["contentWidth"] <= 600 and layout["contentWidth"] <= width, layout
        if width >= 600:
            assert layout["contentWidth"] == 600
    return layout


def _add_awkward_article() -> None:
    """An article with an unbreakable title, a long URL in its summary and a huge picture."""
    articles.add_article(
        title=f"Om {LONG_WORD}", url=f"https://norrsken.example/blogg/{LONG_WORD.lower()}/",
        summary="Läs hela protokollet på https://norrsken.example/wp-content/uploads/2026/11/"
                f"{LONG_WORD.lower()}-{LONG_WORD.lower()}.pdf innan mötet.",
        topic_slug="blogg", author="Maria Öberg", published=NOW - timedelta(days=4),
        image_url="https://norrsken.example/wp-content/uploads/2026/11/stor.jpg",
        image_alt="En mycket bred bild")


def test_the_digest_email_fits_phones_and_desktops(smtp_app, smtp_server, feed_server, browser):
    with smtp_app.app_context():
        load_fixture_feeds(feed_server)
        _add_awkward_article()
        subscriber("alla@example.se")
        subscriber("blog@example.com", language="en", topics=("blogg",))
        delivery.send_now(NOW)
    emails = {m["To"]: body_text(m, "html") for m in smtp_server.messages()}
    for address, lang in (("alla@example.se", "sv"), ("blog@example.com", "en")):
        for width in WIDTHS:
            page = _open(browser, width, html=emails[address])
            layout = _check_layout(page, width, lang, f"digest-email-{lang}")
            assert len(layout["images"]) == (2 if lang == "sv" else 1)
            # The links a subscriber needs are there, and big enough to tap.
            for name in ("unsubscribe", "preferences"):
                link = page.locator(f"a[href*='/{name}/']")
                assert link.count() == 1 and link.bounding_box()["height"] >= 14
            page.close()
    # Dark mode (Apple Mail, Outlook.com): the light text is on a dark card, not on white.
    page = _open(browser, 375, html=emails["alla@example.se"], dark=True)
    _check_layout(page, 375, "sv", "digest-email-sv-dark")
    card = page.evaluate("getComputedStyle(document.querySelector('td.article')).backgroundColor")
    assert card == "rgb(26, 33, 41)"
    page.close()


def test_digest_preview_command_writes_a_page_that_fits(smtp_app, feed_server, browser, tmp_path):
    runner = smtp_app.test_cli_runner()
    with time_machine.travel(NOW, tick=False):
        for feed in ("/nyheter.rss", "/blogg.atom"):
            assert runner.invoke(args=["feeds", "add", feed_server.url(feed)]).exit_code == 0
        assert runner.invoke(args=["feeds", "fetch"]).exit_code == 0
        pages = {}
        for lang in ("sv", "en"):
            out = tmp_path / f"preview-{lang}.html"
            result = runner.invoke(args=["digest", "preview", "--out", str(out), "--lang", lang])
            assert result.exit_code == 0, result.output
            pages[lang] = out.read_text(encoding="utf-8")
    sv = pages["sv"]
    assert "Vecka 48" in sv and "Nyheter" in sv and "Pressmeddelanden" in sv and "Blogg" in sv
    assert "/unsubscribe/" not in sv and "/preferences/" not in sv and "Prenumerera här" in sv
    for lang, width in (("sv", 375), ("sv", 800), ("en", 375)):
        page = _open(browser, width, url=(tmp_path / f"preview-{lang}.html").as_uri())
        _check_layout(page, width, lang, f"digest-preview-{lang}")
        page.close()


def test_the_public_archive_fits_phones_and_desktops(smtp_app, feed_server, browser):
    with smtp_app.app_context():
        load_fixture_feeds(feed_server)
        subscriber("alla@example.se")
        digest_id = delivery.send_now(NOW).id
    server = make_server("127.0.0.1", 0, smtp_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        for width in WIDTHS:
            page = _open(browser, width, url=f"{base}/archive")
            _check_layout(page, width, "sv", "archive-index", email=False)
            assert page.locator(f"a[href='/archive/{digest_id}']").count() == 1
            page.close()
            for lang in ("sv", "en") if width == 375 else ("sv",):
                page = _open(browser, width, url=f"{base}/archive/{digest_id}?lang={lang}")
                _check_layout(page, width, lang, f"archive-digest-{lang}")
                hrefs = page.eval_on_selector_all("a", "links => links.map(a => a.href)")
                assert not [h for h in hrefs if "/unsubscribe/" in h or "/preferences/" in h], hrefs
                page.close()
    finally:
        server.shutdown()
        thread.join(5)
