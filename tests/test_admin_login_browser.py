"""A short run in real headless Chromium: log in, search the subscriber list, on a desktop and a phone.

Screenshots go to test-artifacts/. The full admin flow in the browser is in the
content area's browser tests; this one checks the admin foundation itself.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from admin_helpers import PASSWORD, add_subscribers, make_admin
from werkzeug.serving import make_server

from newsletter.extensions import db

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (see .ci/run)")


@pytest.fixture
def live_server(app):
    with app.app_context():
        if db.engine.dialect.name != "sqlite":
            pytest.skip("the browser run covers the pages; the database is covered by the other tests")
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_login_and_subscriber_list_in_chromium(app, live_server):
    from playwright.sync_api import expect, sync_playwright

    make_admin(app)
    with app.app_context():
        add_subscribers(3, prefix="reader")
        add_subscribers(1, status="pending", prefix="<b>xss</b>")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page(locale="sv-SE")
            page.goto(f"{live_server}/admin/subscribers")
            expect(page).to_have_url(f"{live_server}/admin/login?next=/admin/subscribers")
            page.get_by_label("E-postadress").fill("boss@example.org")
            page.get_by_label("Lösenord").fill(PASSWORD)
            page.screenshot(path=str(ARTIFACTS / "admin-login.png"), full_page=True)
            page.get_by_role("button", name="Logga in").click()
            expect(page).to_have_url(f"{live_server}/admin/subscribers")
            expect(page.get_by_role("heading", name="Prenumeranter")).to_be_visible()
            expect(page.get_by_role("link", name="reader0@example.org")).to_be_visible()
            expect(page.get_by_text("<b>xss</b> 0")).to_be_visible()  # shown as text, not markup
            page.get_by_label("Sök på adress").fill("reader1")
            page.get_by_label("Sök på adress").press("Enter")
            expect(page.get_by_role("link", name="reader1@example.org")).to_be_visible()
            expect(page.get_by_role("link", name="reader0@example.org")).to_have_count(0)
            page.screenshot(path=str(ARTIFACTS / "admin-subscribers.png"), full_page=True)

            # The navigation works from the keyboard.
            page.goto(f"{live_server}/admin/?lang=en")
            expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "admin-dashboard.png"), full_page=True)
            page.get_by_role("link", name="Subscribers", exact=True).focus()
            page.keyboard.press("Enter")
            expect(page).to_have_url(f"{live_server}/admin/subscribers")

            phone = browser.new_page(viewport={"width": 375, "height": 740}, locale="en-GB")
            phone.context.add_cookies(page.context.cookies())
            phone.goto(f"{live_server}/admin/subscribers")
            # Nothing wider than the screen except inside the scrolling table container.
            overflow = phone.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 1
            phone.screenshot(path=str(ARTIFACTS / "admin-subscribers-phone.png"), full_page=True)
        finally:
            browser.close()
