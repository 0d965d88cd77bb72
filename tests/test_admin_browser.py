"""The admin in real headless Chromium (Playwright), against the real app over HTTP, a real
SMTP server (aiosmtpd) and the fixture feeds over HTTP: log in, import the fixture CSVs, fetch
the feeds, preview the digest, send a test, send to a few hundred subscribers, pause and
resume while the progress bar moves, close the window mid-send and come back to see it reach
100 % (updated in place, never reloaded). A screenshot of each page goes
to test-artifacts/.

SQLite only: the same views and services run on PostgreSQL in test_admin_content.py, and one
browser run is what keeps the suite's time in check.
"""

from __future__ import annotations

import os
import re
import time

import pytest
from admin_helpers import PASSWORD, make_admin
from browser_helpers import ARTIFACTS, CHROMIUM, serve, write_subscribers_csv
from conftest import FIXTURES, free_port
from sqlalchemy import func, select

from config import TestConfig
from newsletter import create_app, delivery
from newsletter.digests import feed_polls
from newsletter.extensions import db
from newsletter.models import Delivery, Digest, Subscriber

sync_api = pytest.importorskip("playwright.sync_api")

ADMIN_EMAIL = "redaktor@norrsken.example"
GENERATED = 600  # people in the generated CSV, on top of the fixture files
SMTP_DELAY = 0.003  # seconds per recipient at the SMTP server: a send long enough to pause


@pytest.fixture
def browser_app(tmp_path, smtp_server):
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (as .ci/run does)")
    port = free_port()
    app = create_app({
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'browser.db'}",
        "INSTANCE_PATH": str(tmp_path / "instance"),
        "MAIL_URL": smtp_server.url,
        "PUBLIC_URL": f"http://127.0.0.1:{port}",
        "DIGEST_MAX_AGE_DAYS": 36500,  # the fixture feeds' dates are fixed; the clock is not
        "SEND_RATE": 100,  # messages a second: ~6 s for the whole send, long enough to pause it
        "RATELIMIT_ENABLED": False,
    }, config_class=TestConfig)
    with app.app_context():
        db.create_all()
    make_admin(app, ADMIN_EMAIL, role="admin")
    app.config["BROWSER_PORT"] = port
    yield app
    with app.app_context():
        delivery.wait_for_sends(30)
        db.session.remove()
        db.engine.dispose()


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"admin-{name}.png"), full_page=True)


def _count(app, model, *where) -> int:
    with app.app_context():
        try:
            return db.session.execute(select(func.count()).select_from(model).where(*where)).scalar_one()
        finally:
            db.session.remove()


def test_admin_in_a_real_browser(browser_app, smtp_server, feed_server, tmp_path):
    app = browser_app
    generated = write_subscribers_csv(tmp_path / "lasare.csv", GENERATED)
    # The SMTP server takes a little time per recipient, so the send can be paused midway.
    smtp_server.handler.faults = lambda rcpt: time.sleep(SMTP_DELAY)
    with serve(app, app.config["BROWSER_PORT"]) as base, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        # bypass_csp: Playwright's wait_for_function evaluates its string with eval, which the
        # admin's CSP (script-src 'self') rightly forbids; the app's own scripts are files.
        page = browser.new_page(viewport={"width": 1200, "height": 900}, bypass_csp=True)
        page.set_default_timeout(15_000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            _log_in(page, base)
            _import_subscribers(page, base, generated)
            _fetch_feeds(page, base, feed_server)
            _articles(page, base)
            _digest_preview_and_test(page, base, smtp_server)
            digest_id = _send_now(page, base, app)
            page = _pause_resume_and_finish(browser, page, base, app, digest_id)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            _phone(browser, page, base, digest_id)
        finally:
            browser.close()
        assert errors == [], errors

    # Everyone confirmed got exactly one copy, through the real SMTP server.
    with app.app_context():
        confirmed = db.session.execute(
            select(Subscriber.email).where(Subscriber.status == "confirmed")).scalars().all()
    with smtp_server.handler.lock:  # the raw envelopes: parsing 600 messages would take seconds
        received = [(rcpts, data) for _, rcpts, data in smtp_server.handler.messages]
    digest_mail = [(rcpts, data) for rcpts, data in received if rcpts != [ADMIN_EMAIL]]
    recipients = [rcpt for rcpts, _ in digest_mail for rcpt in rcpts]
    assert len(recipients) == len(set(recipients)) == len(confirmed) >= GENERATED
    assert set(recipients) == set(confirmed)
    assert all(b"\nList-Unsubscribe: <" in data for _, data in digest_mail)


def _log_in(page, base: str) -> None:
    page.goto(f"{base}/admin/login?lang=en")
    _shot(page, "01-login")
    page.get_by_label("Email address").fill(ADMIN_EMAIL)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/admin/?$"))


def _import_subscribers(page, base: str, generated) -> None:
    files = [FIXTURES / "subscribers.csv", FIXTURES / "mailchimp-export.csv",
             FIXTURES / "listmonk-export.csv", generated]
    for number, path in enumerate(files):
        page.goto(f"{base}/admin/subscribers/import")
        page.locator("input[type=file]").set_input_files(str(path))
        page.locator("input[name=confirmed]").check()
        page.get_by_role("button", name="Import").click()
        result = page.locator("#report-h")
        result.wait_for()
        if number == len(files) - 1:
            assert page.locator(".stats .num").first.inner_text() == str(GENERATED)
            _shot(page, "02-import")


def _fetch_feeds(page, base: str, feed_server) -> None:
    page.goto(f"{base}/admin/feeds")
    for path in ("/nyheter.rss", "/blogg.atom"):
        page.get_by_role("textbox", name="Feed address (RSS or Atom)").fill(feed_server.url(path))
        page.get_by_role("button", name="Add feed").click()
        page.get_by_text(re.compile(r"The feed was added with [1-9]\d* articles\.")).wait_for()
    page.get_by_role("button", name="Fetch all feeds now").click()
    page.get_by_text("The feeds are being fetched.", exact=False).wait_for()
    feed_polls.wait(30)  # the poll runs in the background; the page shows its outcome
    page.reload()
    assert page.locator("table.feeds tbody tr").count() == 2
    assert page.locator("table.feeds .badge.status-ok").count() == 2
    _shot(page, "03-feeds")


def _articles(page, base: str) -> None:
    page.goto(f"{base}/admin/articles")
    coming = page.locator("section[aria-labelledby=coming-heading] tbody tr")
    assert coming.count() >= 5
    title = coming.first.locator(".article-title").inner_text()
    coming.first.get_by_role("button", name="Hide from the digest").click()
    page.get_by_text(f"“{title}” is left out of the coming digest.").wait_for()
    assert page.locator("section[aria-labelledby=hidden-heading]").get_by_text(title).count() == 1
    _shot(page, "04-articles")
    page.locator("section[aria-labelledby=hidden-heading]").get_by_role(
        "button", name="Put back in the digest").click()
    page.get_by_text(f"“{title}” is back in the coming digest.").wait_for()
    page.goto(f"{base}/admin/articles/new")
    _shot(page, "05-article-new")


def _digest_preview_and_test(page, base: str, smtp_server) -> None:
    page.goto(f"{base}/admin/digest")
    page.get_by_role("textbox", name="Intro in Swedish").fill(
        "Hej alla!\n\nVeckans brev kommer från en riktig webbläsare.")
    page.get_by_role("textbox", name="Intro in English").fill(
        "Hello all!\n\nThis week's letter comes from a real browser.")
    page.get_by_role("button", name="Save intro").click()
    page.get_by_text("The intro was saved on the draft.").wait_for()
    frame = page.frame_locator("iframe.preview")  # in English, the admin's language
    frame.get_by_text("This week's letter comes from a real browser.").wait_for()
    assert frame.get_by_text("Veckans brev kommer från en riktig webbläsare.").count() == 0
    assert frame.locator("a").count() > 3  # the articles' links
    page.get_by_text("Text part", exact=True).click()
    assert "Hello all!" in page.locator("details.text-part pre").inner_text()
    _shot(page, "06-digest")
    page.get_by_role("link", name="Svenska").first.click()  # the preview in Swedish (the page too)
    swedish = page.frame_locator("iframe.preview")
    swedish.locator("html[lang=sv]").wait_for()
    swedish.get_by_text("Veckans brev kommer från en riktig webbläsare.").wait_for()
    page.goto(f"{base}/admin/digest?lang=en&preview=sv")
    page.get_by_role("button", name="Send a test to me").click()
    page.get_by_text(f"A test was sent to {ADMIN_EMAIL}.").wait_for()
    tests = smtp_server.messages(to=ADMIN_EMAIL)
    assert len(tests) == 1 and tests[0]["Subject"].startswith("[TEST]")


def _send_now(page, base: str, app) -> int:
    page.get_by_role("link", name="Send now…").click()
    count = int(page.locator("#recipient-count").inner_text())
    confirmed = _count(app, Subscriber, Subscriber.status == "confirmed")
    assert count == confirmed >= GENERATED
    _shot(page, "07-send-confirm")
    page.get_by_role("button", name=f"Yes, send it to {count} subscribers").click()
    page.wait_for_url(re.compile(r"/admin/sends/\d+$"))
    return int(page.url.rsplit("/", 1)[1])


def _sent(page) -> int:
    return int(page.locator("[data-field=sent]").inner_text())


def _settled_count(app, digest_id: int) -> int:
    """The number sent once the paused worker has stopped (it finishes its batch first)."""
    with app.app_context():
        delivery.wait_for_sends(30)  # the send runs in a thread of this process (the served app)
    return _count(app, Delivery, Delivery.digest_id == digest_id, Delivery.state == "sent")


def _pause_resume_and_finish(browser, page, base: str, app, digest_id: int):
    """Pause, resume, close the browser window mid-send, come back and watch it reach 100 %.
    Returns the new page."""
    # The bar moves without a reload.
    page.wait_for_function("document.querySelector('[data-field=sent]').textContent > 0")
    page.get_by_role("button", name="Pause").click()
    page.get_by_text("The send is paused.").wait_for()
    page.wait_for_function("document.querySelector('[data-field=status_label]').textContent === 'Paused'")
    # The worker obeys between batches: the batch in flight when the pause came finishes first.
    at_pause = _settled_count(app, digest_id)
    page.wait_for_function(f"document.querySelector('[data-field=sent]').textContent == '{at_pause}'")
    time.sleep(1.2)  # the page polls on, and nothing moves while paused
    assert _sent(page) == at_pause == _count(app, Delivery, Delivery.digest_id == digest_id,
                                              Delivery.state == "sent")
    total = int(page.locator("[data-field=total]").inner_text())
    assert 0 < at_pause < total, (at_pause, total)
    assert page.get_by_role("button", name="Resume").is_visible()
    assert not page.get_by_role("button", name="Pause").is_visible()
    _shot(page, "08-send-paused")
    page.get_by_role("button", name="Resume").click()
    page.get_by_text("The send goes on.").wait_for()
    page.wait_for_function("Number(document.getElementById('send-bar').value) > 0 "
                           "&& document.querySelector('[data-field=status_label]').textContent === 'Sending'",
                           timeout=10_000)
    _shot(page, "09-send-running")
    # Closing the window does not stop the send: it runs on the server.
    session = page.context.storage_state()
    before_close = _count(app, Delivery, Delivery.digest_id == digest_id, Delivery.state == "sent")
    page.context.close()
    time.sleep(1)
    assert _count(app, Delivery, Delivery.digest_id == digest_id, Delivery.state == "sent") > before_close
    page = browser.new_page(viewport={"width": 1200, "height": 900}, storage_state=session, bypass_csp=True)
    page.set_default_timeout(15_000)
    page.goto(f"{base}/admin/sends/{digest_id}")
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    bar = page.locator("#send-bar")
    page.wait_for_function("Number(document.getElementById('send-bar').value) >= 100", timeout=40_000)
    assert navigations == []  # updated in place by admin-progress.js, never reloaded
    page.get_by_text("Done", exact=True).wait_for()
    assert bar.get_attribute("aria-valuetext") == "100%"  # the English page: en-GB's "100%"
    assert page.locator("[data-field=remaining]").inner_text() == "0"
    assert not page.get_by_role("button", name="Cancel the send").is_visible()
    _shot(page, "10-send-done")
    with app.app_context():
        assert db.session.get(Digest, digest_id).status == "done"
        db.session.remove()
    page.goto(f"{base}/admin/sends")
    assert page.get_by_role("link", name=re.compile(f"#{digest_id} ")).count() == 1
    _shot(page, "11-sends")
    return page


def _phone(browser, page, base: str, digest_id: int) -> None:
    """The same pages at 375 px: nothing wider than the screen."""
    phone = browser.new_page(viewport={"width": 375, "height": 740},
                             storage_state=page.context.storage_state())
    for name, path in [("digest", "/admin/digest"), ("send", f"/admin/sends/{digest_id}"),
                       ("articles", "/admin/articles"), ("feeds", "/admin/feeds")]:
        phone.goto(f"{base}{path}")
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, (path, width)
        _shot(phone, f"12-phone-{name}")
    phone.close()
