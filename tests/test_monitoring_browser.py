"""The dashboard's scheduler warning in a real browser (Chromium), in Swedish and English."""

from __future__ import annotations

import os
import re
from datetime import timedelta

import pytest
from admin_helpers import PASSWORD, make_admin
from browser_helpers import ARTIFACTS, CHROMIUM, serve
from conftest import free_port

from config import TestConfig
from newsletter import create_app
from newsletter.engine.clock import utcnow
from newsletter.extensions import db
from newsletter.monitoring import heartbeat
from newsletter.subscriptions import add_subscriber

sync_api = pytest.importorskip("playwright.sync_api")

ADMIN_EMAIL = "drift@norrsken.example"


@pytest.mark.browser
def test_the_dashboard_shows_the_scheduler_warning_and_clears_it(tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (as .ci/run does)")
    port = free_port()
    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'browser.db'}",
                      "INSTANCE_PATH": str(tmp_path / "instance"), "PUBLIC_URL": f"http://127.0.0.1:{port}",
                      "RATELIMIT_ENABLED": False}, config_class=TestConfig)
    with app.app_context():
        db.create_all()
        for n in range(12):
            add_subscriber(f"lasare{n}@example.se", confirmed=n % 3 != 0, source="cli")
        db.session.commit()
        now = utcnow()
        heartbeat.record_action("feeds", "ok", "2|4|0", now=now - timedelta(minutes=70))
        heartbeat.record_action("digest", "done", "2026-W49 #3", now=now - timedelta(minutes=69))
        heartbeat.record_action("feeds", "error", "2|0|1", now=now - timedelta(minutes=12))
        heartbeat.beat("server:4242:ab", now=now - timedelta(minutes=11))
    make_admin(app, ADMIN_EMAIL, role="admin")
    ARTIFACTS.mkdir(exist_ok=True)
    with serve(app, port) as base, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.set_default_timeout(15_000)
        try:
            page.goto(f"{base}/admin/login?lang=sv")
            page.locator("input[name=email]").fill(ADMIN_EMAIL)
            page.locator("input[name=password]").fill(PASSWORD)
            page.locator("form button[type=submit]").first.click()
            page.wait_for_url(re.compile(r"/admin/?$"))
            card = page.locator("#scheduler")
            alert = card.get_by_role("alert")
            assert "sågs senast för 11 min sedan" in alert.inner_text()
            assert "Flöden hämtade" in card.inner_text() and "med fel" in card.inner_text()
            card.screenshot(path=str(ARTIFACTS / "monitoring-scheduler-card-sv.png"))
            page.screenshot(path=str(ARTIFACTS / "monitoring-scheduler-warning-sv.png"), full_page=True)
            page.goto(f"{base}/admin/?lang=en")
            assert "it seems to have stopped" in page.locator("#scheduler").get_by_role("alert").inner_text()
            page.screenshot(path=str(ARTIFACTS / "monitoring-scheduler-warning-en.png"), full_page=True)
            with app.app_context():
                heartbeat.beat("server:4242:ab")
            page.goto(f"{base}/admin/?lang=sv")
            assert page.locator("#scheduler").get_by_role("alert").count() == 0
            assert "Schemaläggaren sågs senast för" in page.locator("#scheduler").inner_text()
            page.locator("#scheduler").screenshot(path=str(ARTIFACTS / "monitoring-scheduler-fresh-sv.png"))
        finally:
            browser.close()
    with app.app_context():
        db.session.remove()
        db.engine.dispose()
