"""The editor's digest screens in real headless Chromium: an older article put in, one moved up,
an intro per language, each language's size with the cap; the preview shows what was chosen.
SQLite only: the same views run on both databases in test_digest_editorial.py and friends."""

from __future__ import annotations

import os
import re

import pytest
from admin_helpers import PASSWORD, add_article, make_admin
from browser_helpers import CHROMIUM, serve
from conftest import free_port

from config import TestConfig
from newsletter import create_app
from newsletter.extensions import db

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
        "DIGEST_SECTION_MAX": 2,
    }, config_class=TestConfig)
    with app.app_context():
        db.create_all()
        for title, days in (("Färsk nyhet", 1), ("Äldre nyhet", 2), ("Tredje nyheten", 3),
                            ("Förra månadens nyhet", 30)):
            add_article(title, days_ago=days)
        db.session.remove()
    make_admin(app, EDITOR, role="editor")
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.mark.browser
def test_an_editor_shapes_the_coming_digest_in_a_real_browser(browser_app):
    with serve(browser_app, free_port()) as base, sync_api.sync_playwright() as playwright:
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

            page.goto(f"{base}/admin/articles")
            page.get_by_role("button", name="Put in the coming digest").click()
            page.get_by_text("“Förra månadens nyhet” is in the coming digest.").wait_for()
            coming = page.locator("section[aria-labelledby=coming-heading] .article-title")
            assert coming.all_inner_texts() == ["Färsk nyhet", "Äldre nyhet", "Tredje nyheten",
                                                "Förra månadens nyhet"]
            for _ in range(3):
                page.get_by_role("button", name=re.compile(r"^Move up\W+Förra månadens nyhet$")).click()
                page.wait_for_load_state()
            assert coming.all_inner_texts()[0] == "Förra månadens nyhet"
            _shot(page, "articles-ordered")

            page.goto(f"{base}/admin/digest")
            page.get_by_role("textbox", name="Intro in Swedish").fill("Hej alla!")
            page.get_by_role("textbox", name="Intro in English").fill("Hello everyone!")
            page.get_by_role("button", name="Save intro").click()
            page.get_by_text("The intro was saved on the draft.").wait_for()
            assert re.search(r"sv \d+\.\d KB · en \d+\.\d KB", page.locator("#digest-sizes").inner_text())
            assert "at most 2 articles a section" in page.locator("#digest-sizes").inner_text()
            frame = page.frame_locator("iframe.preview")
            frame.get_by_text("Hello everyone!", exact=True).wait_for()
            assert frame.get_by_text("Hej alla!").count() == 0
            headlines = frame.locator("h3.headline").all_inner_texts()
            assert headlines == ["Förra månadens nyhet", "Färsk nyhet"]
            frame.get_by_text("2 more on the website").wait_for()
            _shot(page, "digest-intro-sizes")
        finally:
            browser.close()
        assert errors == [], errors


def _shot(page, name: str) -> None:
    if SHOTS:
        page.screenshot(path=os.path.join(SHOTS, f"{name}.png"), full_page=True)
