"""Every public and admin page in real Chromium, at 375 px and 1280 px, in Swedish and English.

A page fails on: sideways scrolling, a user-facing string of the other language (compared with
the catalogue), a page without our stylesheet (an unstyled error page), and what axe-core finds
about images without alt text, form controls without a label and text under 4.5:1 contrast
(axe-core ships inside the axe-playwright-python package: nothing is fetched at run time).
The pages are found by following the links from the front page, the admin's dashboard and a few
pages reached only from emails; screenshots go to test-artifacts/walk/.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
import time_machine
from admin_helpers import PASSWORD, make_admin
from babel.messages.pofile import read_po
from browser_helpers import ARTIFACTS, CHROMIUM, serve
from conftest import free_port
from digest_helpers import NOW, load_fixture_feeds, subscriber

from config import TestConfig
from newsletter import create_app, delivery, subscriptions
from newsletter.extensions import db
from newsletter.subscriptions import tokens

sync_api = pytest.importorskip("playwright.sync_api")
axe_module = pytest.importorskip("axe_playwright_python.sync_playwright")

ROOT = Path(__file__).resolve().parent.parent
WIDTHS = (375, 1280)
LANGUAGES = {"sv": "sv-SE", "en": "en-GB"}
AXE_RULES = ["image-alt", "input-image-alt", "label", "select-name", "button-name", "color-contrast",
             "html-has-lang", "document-title"]
# Links that are not pages to look at: downloads, JSON, feeds, and what changes state.
SKIPPED = re.compile(r"/(logout|static/|healthz|api/)|\.(json|txt|xml|csv)$|/export|/preview/|/progress")
MAX_PAGES = 80


def _catalogue() -> list[tuple[str, str]]:
    """(English, Swedish) of every translated message, as the phrases a page would show."""
    with (ROOT / "newsletter/translations/sv/LC_MESSAGES/messages.po").open("rb") as handle:
        catalog = read_po(handle, locale="sv")
    pairs = []
    for message in catalog:
        if not message.id or isinstance(message.id, tuple) or not message.string:
            continue
        pairs.append((message.id, message.string))
    return pairs


def _phrases(message: str) -> list[str]:
    """The literal parts of a message long enough to be recognised in a page (placeholders,
    markup and short words removed)."""
    parts = re.split(r"%\(\w+\)[sd]|%[sd]|<[^>]+>|\{[^}]*\}", message)
    return [p.strip(" .,:;–-()") for p in parts if len(p.strip(" .,:;–-()")) >= 14 and " " in p.strip()]


def _foreign_phrases(language: str) -> list[str]:
    """Phrases of the other language that differ from this language's wording."""
    found = []
    for english, swedish in _catalogue():
        if english.strip() == swedish.strip():
            continue
        foreign, own = (english, swedish) if language == "sv" else (swedish, english)
        own_phrases = set(_phrases(own))
        found += [p for p in _phrases(foreign) if p not in own_phrases]
    return sorted(set(found))


@pytest.fixture
def walk_app(tmp_path, smtp_server, feed_server):
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (as .ci/run does)")
    port = free_port()
    app = create_app({
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'walk.db'}",
        "INSTANCE_PATH": str(tmp_path / "instance"),
        "MAIL_URL": smtp_server.url,
        "PUBLIC_URL": f"http://127.0.0.1:{port}",
        "DIGEST_MAX_AGE_DAYS": 36500,
        "RATELIMIT_ENABLED": False,
    }, config_class=TestConfig)
    with app.app_context():
        db.create_all()
        with time_machine.travel(NOW, tick=True):
            load_fixture_feeds(feed_server)
            people = [subscriber("anna.lindqvist@example.se", topics=("nyheter", "blogg")),
                      subscriber("erik@example.com", language="en"),
                      subscriber("vantar@example.se", status="pending")]
            digest = delivery.send_now(NOW)
        pending = people[2]
        links = {
            "confirm": f"/confirm/{tokens.confirm_token(pending)}",
            "unsubscribe": f"/unsubscribe/{tokens.unsubscribe_token(people[0])}",
            "preferences": f"/preferences/{tokens.preferences_token(people[0])}",
            "erase": f"/preferences/{tokens.preferences_token(people[0])}/erase",
            "bad link": "/confirm/not-a-real-token",
            "test link": tokens.test_link_url("unsubscribe").removeprefix(app.config["PUBLIC_URL"]),
            "archive": f"/archive/{digest.id}",
            "missing page": "/nope",
            "missing archive": "/archive/999",
            "missing admin page": "/admin/nope",
            "subscriber": f"/admin/subscribers/{people[0].id}",
            "send": f"/admin/sends/{digest.id}",
        }
        subscriptions.record_event(people[0], "preferences", source="form", detail={"language": "sv"})
        db.session.commit()
    make_admin(app, "redaktor@norrsken.example", role="admin")
    app.config["WALK_PORT"], app.config["WALK_LINKS"] = port, links
    yield app
    with app.app_context():
        delivery.wait_for_sends(30)
        db.session.remove()
        db.engine.dispose()


def _log_in(page, base: str) -> None:
    page.goto(base + "/admin/login")
    page.locator("input[name=email]").fill("redaktor@norrsken.example")
    page.locator("input[name=password]").fill(PASSWORD)
    page.locator("form button[type=submit]").first.click()
    page.wait_for_url(re.compile(r"/admin/?$"))


def _links(page, base: str) -> list[str]:
    hrefs = page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))")
    found = []
    for href in hrefs:
        url = urljoin(page.url, href)
        parts = urlsplit(url)
        if url.startswith(base) and not SKIPPED.search(parts.path) and "lang=" not in parts.query:
            found.append(parts.path + (f"?{parts.query}" if parts.query else ""))
    return found


def _shape(path: str) -> str:
    """One page per shape: /admin/subscribers/12 and /admin/subscribers/13 are the same page."""
    return re.sub(r"\d+", "N", path.split("?")[0]) + ("?" if "?" in path else "")


def _problems(page, language: str, foreign: list[str], axe) -> list[str]:
    problems = []
    widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    if widths[0] > widths[1] + 1:
        problems.append(f"scrolls sideways: {widths[0]} px wide in a {widths[1]} px window")
    if not page.evaluate("[...document.styleSheets].some(s => { try { return s.cssRules.length > 0 }"
                         " catch (e) { return false } })"):
        problems.append("no stylesheet: an unstyled page")
    text = page.evaluate("document.body.innerText")
    problems += [f"other language: {phrase!r}" for phrase in foreign if phrase in text]
    problems += [f"image without alt: {src}" for src in page.eval_on_selector_all(
        "img:not([alt])", "els => els.map(e => e.src)")]
    results = axe.run(page, options={"runOnly": {"type": "rule", "values": AXE_RULES},
                                     "resultTypes": ["violations"]})
    for violation in results.response["violations"]:
        for node in violation["nodes"][:3]:
            where = " ".join(node["target"][:1])
            problems.append(f"{violation['id']}: {where} – {node['failureSummary'][:160]}")
    return problems


def test_every_page_in_both_languages_on_a_phone_and_a_desktop(walk_app):
    app = walk_app
    links = app.config["WALK_LINKS"]
    shots = ARTIFACTS / "walk"
    shots.mkdir(parents=True, exist_ok=True)
    axe = axe_module.Axe()
    labels = {path: re.sub(r"\W+", "-", key) for key, path in links.items()}
    problems: dict[str, list[str]] = {}
    seen_pages: set[str] = set()
    with serve(app, app.config["WALK_PORT"]) as base, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            for language, locale in LANGUAGES.items():
                foreign = _foreign_phrases(language)
                for width in WIDTHS:
                    context = browser.new_context(viewport={"width": width, "height": 900}, locale=locale,
                                                  bypass_csp=True)
                    # The reader's own choice (the language switch), which pages reached from an
                    # email follow rather than the subscriber's language.
                    context.add_cookies([{"name": "lang", "value": language, "url": base}])
                    page = context.new_page()
                    page.set_default_timeout(15_000)
                    # Public pages first (logged out), then the admin's, logged in.
                    queue = ["/", "/subscribe", "/preferences", "/archive", "/privacy", "/admin/login",
                             *[u for u in links.values() if not u.startswith("/admin")]]
                    visited: set[str] = set()
                    while queue and len(visited) < MAX_PAGES:
                        path = queue.pop(0)
                        if _shape(path) in visited:
                            continue
                        if path == "/admin/":
                            _log_in(page, base)
                        visited.add(_shape(path))
                        response = page.goto(base + path)
                        if response is None:
                            continue
                        label = labels.get(path) or re.sub(r"[^a-zA-Z0-9]+", "_", _shape(path)).strip("_")
                        name = f"{language}-{width}-{label or 'front'}"
                        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
                        found = _problems(page, language, foreign, axe)
                        if found:
                            problems[f"{language} {width}px {path}"] = found
                        seen_pages.add(_shape(path))
                        if path == "/admin/login":
                            queue.append("/admin/")
                            continue
                        if path.startswith("/admin"):
                            queue += [u for u in _links(page, base) if u.startswith("/admin")]
                            if path == "/admin/":
                                queue += [u for u in links.values() if u.startswith("/admin")]
                    context.close()
        finally:
            browser.close()
    assert len(seen_pages) >= 25, sorted(seen_pages)
    report = "\n".join(f"{page}:\n  " + "\n  ".join(found) for page, found in problems.items())
    (shots / "problems.txt").write_text(report or "none\n", encoding="utf-8")
    assert not problems, "\n".join(f"{page}:\n  " + "\n  ".join(found) for page, found in problems.items())


def test_on_a_phone_the_admins_page_and_the_first_run_page_fit(walk_app, tmp_path):
    """The admins list (a visually hidden header cell) and the set-up command fit in 375 px."""
    empty = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'empty.db'}",
                        "INSTANCE_PATH": str(tmp_path / "empty"), "RATELIMIT_ENABLED": False},
                       config_class=TestConfig)
    with empty.app_context():
        db.create_all()
    widths = {}
    with serve(walk_app, walk_app.config["WALK_PORT"]) as base, serve(empty, free_port()) as empty_base, \
            sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 375, "height": 800}, locale="sv-SE")
            _log_in(page, base)
            for label, url in (("admins", base + "/admin/admins"), ("privacy", base + "/admin/privacy"),
                               ("first run", empty_base + "/admin/")):
                page.goto(url)
                widths[label] = page.evaluate("document.documentElement.scrollWidth")
                if label == "first run":
                    command = page.locator("pre.command")
                    box = command.bounding_box()
                    widths["command"] = box["x"] + box["width"]
                    widths["command text"] = page.evaluate(
                        "el => el.scrollWidth - el.clientWidth", command.element_handle())
                    assert "Logga in för att se sidan" not in page.content()
        finally:
            browser.close()
    with empty.app_context():
        db.session.remove()
        db.engine.dispose()
    assert widths["admins"] <= 375 and widths["privacy"] <= 375, widths
    assert widths["first run"] <= 375 and widths["command"] <= 375, widths
    assert widths["command text"] <= 0, widths  # nothing of the command is hidden behind a scroll
