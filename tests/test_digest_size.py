"""A digest that fits: sections capped (DIGEST_SECTION_MAX) with "N more on the website", every
variant of a 60-article week under 100 KB of HTML, sizes measured at compile, the admin warns."""

from __future__ import annotations

import re
from itertools import combinations

from admin_helpers import add_subscribers, log_in
from conftest import body_text

from newsletter import delivery, digests
from newsletter.digests import articles
from newsletter.engine.clock import utcnow
from newsletter.extensions import db
from newsletter.models import Digest
from newsletter.subscriptions.topics import ensure_topics

TOPICS = ("nyheter", "pressmeddelanden", "blogg")
SUMMARY = ("Kommunfullmäktige beslutade på måndagskvällen att satsa på upprustning av lekplatser, "
           "nya cykelbanor och längre öppettider på biblioteken i hela kommunen. Beslutet togs efter "
           "en lång debatt där flera partier lyfte fram behovet av mötesplatser för barn och unga, "
           "och där oppositionen ville se en tydligare plan för finansieringen de kommande åren. "
           "Arbetet börjar till våren och ska vara klart före sommaren 2028.")


def _week_of_60(now) -> None:
    """60 articles as a busy news site publishes them: long titles, summaries, images, authors."""
    ensure_topics()
    for n in range(60):
        articles.add_article(
            title=f"Artikel {n}: kommunen satsar på fler mötesplatser och bättre kollektivtrafik i "
                  "ytterområdena",
            url=f"https://norrsken.example/nyheter/2026/11/artikel-{n}-kommunen-satsar-pa-motesplatser/",
            summary=SUMMARY, topic_slug=TOPICS[n % 3], author="Redaktionen för Föreningen Norrsken",
            image_url=f"https://norrsken.example/wp-content/uploads/2026/11/bild-{n}-stor-1200x800.jpg",
            image_alt="Barn som leker på en nyrenoverad lekplats i centrum", published=now)


def test_every_variant_of_a_60_article_week_stays_under_100_kb(app):
    with app.app_context():
        now = utcnow()
        _week_of_60(now)
        digest = digests.compile_digest(now)
        renderer = digests.DigestRenderer(digest)
        topic_ids = sorted(renderer.topic_ids)
        sizes = []
        for language in ("sv", "en"):
            for size in (1, 2, 3):
                for shown in combinations(topic_ids, size):
                    html = renderer.render(language, frozenset(shown), personal=True)[2]
                    sizes.append(len(html.encode()))
        assert max(sizes) < 100 * 1024, sizes
        # Measured at compile: the largest variant of each language.
        assert set(digest.html_sizes) == {"sv", "en"}
        assert max(digest.html_sizes.values()) == max(sizes)
        uncapped = renderer.render("sv", frozenset(topic_ids), personal=True, capped=False)[2]
        assert len(uncapped.encode()) > 100 * 1024  # what the cap saves readers from


def test_a_capped_section_links_to_the_rest_on_the_archive_page(smtp_app, smtp_server):
    smtp_app.config["DIGEST_SECTION_MAX"] = 5
    with smtp_app.app_context():
        now = utcnow()
        _week_of_60(now)
        add_subscribers(1, language="en", topics=("blogg",), prefix="reader")
        digest = delivery.send_now()
        digest_id = digest.id
    [message] = smtp_server.messages()
    html, text = body_text(message, "html"), body_text(message)
    assert html.count('class="headline"') == 5
    more_url = f"http://newsletter.test/archive/{digest_id}?lang=en#blogg"
    assert re.search(rf'<a href="{re.escape(more_url)}"[^>]*>15 more on the website', html)
    assert f"15 more on the website: {more_url}" in text
    assert "In this issue" not in html  # one section: no contents line
    client = smtp_app.test_client()
    archive = client.get(f"/archive/{digest_id}?lang=en").get_data(as_text=True)
    assert archive.count('class="headline"') == 60 and 'id="blogg"' in archive
    assert "more on the website" not in archive


def test_the_admin_shows_each_languages_size_and_warns_above_90_kb(app, client):
    log_in(client, app)
    with app.app_context():
        _week_of_60(utcnow())
    page = client.get("/admin/digest?lang=en").get_data(as_text=True)
    assert 'id="digest-sizes"' in page and "role=\"alert\"" not in page.split('id="digest-sizes"')[1]
    app.config["DIGEST_SECTION_MAX"] = 0  # every article in the email: far too big
    page = client.get("/admin/digest?lang=en").get_data(as_text=True)
    warning = page.split('id="digest-sizes"')[1]
    assert "Gmail" in warning and warning.count('role="alert"') == 2  # both languages


def test_sizes_are_kept_with_the_draft(app):
    with app.app_context():
        _week_of_60(utcnow())
        draft = digests.set_intro("Hej alla!")
        stored = db.session.get(Digest, draft.id).html_sizes
        assert stored and 20_000 < stored["sv"] < 100 * 1024
