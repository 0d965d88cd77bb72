"""The feeds screen in real headless Chromium: a 404 refused with its reason, a feed added with
its articles, edited, paused, resumed and removed (its articles stay). SQLite only: the same
views run on both databases in test_feeds_managed.py."""

from __future__ import annotations

import os
import re

import pytest
from admin_helpers import PASSWORD, make_admin
from browser_helpers import CHROMIUM, serve
from conftest import free_port
from sqlalchemy import func, select

from config import TestConfig
from newsletter import create_app
from newsletter.extensions import db
from newsletter.models import Article, Feed

sync_api = pytest.importorskip("playwright.sync_api")

EDITOR = "redaktor@norrsken.example"
SHOTS = os.environ.get("FEED_SHOTS_DIR", "")


@pytest.fixture
def browser_app(tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (as .ci/run does)")
    app = create_app({
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'browser.db'}",
        "INSTANCE_PATH": str(tmp_path / "instance"),
        "RATELIMIT_ENABLED": False,
    }, config_class=TestConfig)
    with app.app_context():
        db.create_all()
    make_admin(app, EDITOR, role="editor")
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def _scalar(app, query):
    with app.app_context():
        try:
            return db.session.execute(query).scalar_one()
        finally:
            db.session.remove()


@pytest.mark.browser
def test_an_editor_manages_feeds_in_a_real_browser(browser_app, feed_server):
    app = browser_app
    with serve(app, free_port()) as base, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 800, "height": 900}, locale="en")
        page.set_default_timeout(15_000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            page.goto(f"{base}/admin/login?lang=en")
            page.get_by_label("Email address").fill(EDITOR)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Log in").click()
            page.wait_for_url(re.compile(r"/admin/?$"))
            page.goto(f"{base}/admin/feeds")
            address = page.get_by_role("textbox", name="Feed address (RSS or Atom)")

            address.fill(feed_server.url("/borta.rss"))
            page.get_by_role("button", name="Add feed").click()
            page.get_by_text(re.compile("Could not add: the server answered 404")).first.wait_for()
            _shot(page, "feeds-refused")

            address.fill(feed_server.url("/nyheter.rss"))
            page.get_by_role("button", name="Add feed").click()
            page.get_by_text("The feed was added with 5 articles.").wait_for()
            row = page.locator("table.feeds tbody tr")
            assert row.count() == 1

            row.get_by_role("link", name=re.compile("Edit")).click()
            page.get_by_label("Section", exact=True).select_option(value="pressmeddelanden")
            page.get_by_role("button", name="Save").click()
            page.get_by_text("The feed was changed.").wait_for()

            page.locator("table.feeds tbody tr").get_by_role("button", name="Pause").click()
            page.get_by_text("The feed is paused").wait_for()
            assert page.locator("table.feeds .status-paused").count() == 1
            _shot(page, "feeds-paused")
            page.locator("table.feeds tbody tr").get_by_role("button", name="Resume").click()
            page.get_by_text("The feed is fetched again.").wait_for()

            page.once("dialog", lambda dialog: dialog.accept())
            page.locator("table.feeds tbody tr").get_by_role("button", name="Remove").click()
            page.get_by_text("The feed was removed; its 5 articles stay.").wait_for()
            assert page.locator("table.feeds").count() == 0
        finally:
            browser.close()
        assert errors == [], errors
    assert _scalar(app, select(func.count()).select_from(Feed)) == 0
    assert _scalar(app, select(func.count()).select_from(Article)) == 5


def _shot(page, name: str) -> None:
    if SHOTS:
        page.screenshot(path=os.path.join(SHOTS, f"{name}.png"), full_page=True)
