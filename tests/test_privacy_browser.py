"""The reader's self-service in real Chromium, in Swedish and English: preferences, asking for a
link, downloading one's data, erasing oneself (and then nothing of theirs works or remains)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from browser_helpers import ARTIFACTS, CHROMIUM, serve
from conftest import free_port
from sqlalchemy import select

from newsletter import subscriptions
from newsletter.extensions import db
from newsletter.models import ConsentEvent, QueuedEmail, Subscriber
from newsletter.subscriptions import suppression, tokens

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="no /usr/bin/chromium (see .ci/run)")

TEXT = {
    "sv": {"save": "Spara", "blog": "Blogg", "english": "English", "send": "Skicka en länk till mig",
           "email": "E-postadress", "download": "Ladda ner mina uppgifter (JSON)",
           "erase": "Radera alla mina uppgifter", "yes": "Ja, radera alla mina uppgifter",
           "erased": "Dina uppgifter är raderade", "privacy": "Integritet"},
    "en": {"save": "Save", "blog": "Blog", "english": "English", "send": "Send me a link",
           "email": "Email address", "download": "Download my data (JSON)", "erase": "Erase all my data",
           "yes": "Yes, erase all my data", "erased": "Your data is erased", "privacy": "Privacy"},
}


def _reader(app, email: str, language: str) -> tuple[str, str]:
    with app.app_context():
        person = subscriptions.add_subscriber(email, language=language, topics=["nyheter"], confirmed=True,
                                              source="cli")
        subscriptions.record_event(person, "signup", source="form", ip="192.0.2.9", user_agent="Firefox/140")
        db.session.commit()
        return person.uid, tokens.preferences_url(person).split("/preferences/", 1)[1]


@pytest.mark.parametrize("locale", ["sv", "en"])
def test_a_reader_manages_downloads_and_erases_their_data(make_app, tmp_path, locale):
    from playwright.sync_api import expect, sync_playwright

    port = free_port()
    app = make_app(PUBLIC_URL=f"http://127.0.0.1:{port}")
    text = TEXT[locale]
    email = f"lasare.{locale}@example.se"
    uid, token = _reader(app, email, "sv")
    with serve(app, port) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(accept_downloads=True)

        # Preferences: follow a topic more, and switch the newsletter's language.
        page.goto(f"{base}/preferences/{token}?lang={locale}")
        page.get_by_label(text["blog"], exact=True).check()
        page.get_by_label(text["english"], exact=True).check()
        page.get_by_role("button", name=text["save"]).click()
        expect(page.get_by_role("status")).to_be_visible()  # saved (the page is now in English)
        expect(page.get_by_label("Blog", exact=True)).to_be_checked()
        with app.app_context():
            person = db.session.execute(select(Subscriber).where(Subscriber.email == email)).scalar_one()
            assert (sorted(t.slug for t in person.topics), person.language) == (["blogg", "nyheter"], "en")
        page.goto(f"{base}/preferences/{token}?lang={locale}")
        expect(page.get_by_role("link", name=text["privacy"]).first).to_be_visible()

        # The data download: a JSON file with the profile, topics and the ledger with its wording.
        with page.expect_download() as info:
            page.get_by_role("button", name=text["download"]).click()
        data = json.loads(Path(info.value.path()).read_text(encoding="utf-8"))
        assert data["email"] == email and data["topics"] == ["blogg", "nyheter"]
        kinds = [e["kind"] for e in data["consent_events"]]
        assert kinds[:2] == ["admin", "signup"] and kinds[-1] == "preferences"
        assert data["consent_events"][1]["wording"]["sv"].startswith("Genom att prenumerera")

        # Asking for a link: the same answer for a known and an unknown address.
        answers = []
        for address in (email, f"okand.{locale}@example.se"):
            page.goto(f"{base}/preferences?lang={locale}")
            page.get_by_label(text["email"]).fill(address)
            page.get_by_role("button", name=text["send"]).click()
            answers.append(page.locator("main").inner_text())
        assert answers[0] == answers[1]
        with app.app_context():
            assert db.session.execute(select(QueuedEmail.to_addr).where(
                QueuedEmail.kind == "preferences_link")).scalars().all() == [email]

        # Erasure: then no link of theirs works, and nothing of theirs can be found.
        page.goto(f"{base}/preferences/{token}?lang={locale}")
        page.get_by_role("link", name=text["erase"]).click()
        page.get_by_role("button", name=text["yes"]).click()
        expect(page.get_by_role("heading", name=text["erased"])).to_be_visible()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"privacy-erased-{locale}.png"))
        response = page.goto(f"{base}/preferences/{token}?lang={locale}")
        assert response.status >= 400
        browser.close()
    with app.app_context():
        assert db.session.execute(select(Subscriber)).first() is None
        assert db.session.execute(select(QueuedEmail)).first() is None
        events = db.session.execute(select(ConsentEvent)).scalars()
        assert [(e.kind, e.subscriber_id, e.ip) for e in events] == [("erase", None, "")]
        assert suppression.suppression_of(email) == "erased"
        # A new signup is a new person: another uid, pending until they confirm.
        subscriptions.request_signup(email, topics=[], language=locale)
        again = db.session.execute(select(Subscriber).where(Subscriber.email == email)).scalar_one()
        assert again.uid != uid and again.status == "pending"
