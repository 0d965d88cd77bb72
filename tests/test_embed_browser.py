"""The README's embed snippet, as written, works from another site in real Chromium."""

from __future__ import annotations

import re
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

from browser_helpers import ARTIFACTS, CHROMIUM, ROOT, serve
from conftest import free_port
from sqlalchemy import select

from newsletter.extensions import db
from newsletter.models import ConsentEvent, Subscriber


def readme_snippet() -> str:
    readme = (ROOT / "README.md").read_text("utf-8")
    section = readme.split("### Embedding the form on your own site", 1)[1]
    return re.search(r"```html\n(.*?)```", section, re.S).group(1)


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_the_readme_embed_snippet_subscribes_from_another_origin(make_app, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    site_port, app_port = free_port(), free_port()
    site = f"http://127.0.0.1:{site_port}"
    app = make_app(ALLOWED_EMBED_ORIGINS=[site], SIGNUP_MIN_SECONDS=1.0,
                   PUBLIC_URL=f"http://127.0.0.1:{app_port}")
    snippet = readme_snippet().replace("https://nyhetsbrev.example.se", app.config["PUBLIC_URL"])
    (tmp_path / "index.html").write_text(
        f"<!doctype html><html lang=sv><meta charset=utf-8><title>Föreningen</title>{snippet}</html>",
        "utf-8")
    httpd = ThreadingHTTPServer(("127.0.0.1", site_port), partial(_Quiet, directory=str(tmp_path)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with serve(app, app_port), sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
            page = browser.new_page()
            page.goto(site + "/index.html")
            page.get_by_label("E-post").fill("lasare@exempel.se")
            page.get_by_label("Blogg").check()
            page.wait_for_timeout(1200)  # a person takes longer than SIGNUP_MIN_SECONDS
            page.get_by_role("button", name="Prenumerera").click()
            expect(page.locator("#nl-answer")).not_to_be_empty(timeout=10_000)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "embed-snippet.png"))
            answer = page.locator("#nl-answer").inner_text()
            browser.close()
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert "inkorg" in answer  # "check your inbox", in the language the snippet asks for
    with app.app_context():
        person = db.session.execute(select(Subscriber)).scalar_one()
        assert person.email == "lasare@exempel.se" and person.status == "pending"
        assert sorted(t.slug for t in person.topics) == ["blogg", "nyheter"]
        event = db.session.execute(select(ConsentEvent)).scalar_one()
        assert event.source == "embed" and event.kind == "signup"
