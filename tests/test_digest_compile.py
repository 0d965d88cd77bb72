"""Compiling and sending the digest: sections, filtering per subscriber, language, headers."""

from __future__ import annotations

import re
from datetime import timedelta

import time_machine
from conftest import body_text
from digest_helpers import CURRENT_TITLES, NOW, OLD_TITLE, load_fixture_feeds, subscriber

from newsletter import delivery, digests
from newsletter.digests import articles
from newsletter.engine.clock import utcnow
from newsletter.extensions import db
from newsletter.mail import compose as mail
from newsletter.models import Delivery, Digest


def _section_titles(text: str) -> list[str]:
    return re.findall(r"^([A-ZÅÄÖ ]+)\n=+$", text, flags=re.M)


def test_compile_takes_this_weeks_articles_in_topic_order(app, feed_server):
    with app.app_context():
        load_fixture_feeds(feed_server)
        digest = digests.compile_digest(NOW)
        titles = [a.title for a in digest.articles]
        assert set(titles) == CURRENT_TITLES and OLD_TITLE not in titles
        slugs = [a.topic.slug for a in digest.articles]
        assert slugs == ["nyheter"] * 3 + ["pressmeddelanden"] + ["blogg"] * 2
        assert digest.status == "draft" and digest.compiled_for == NOW
        assert digest.subject_sv.startswith("Vecka 48: Krönika: Därför behöver vi fler mötesplatser")
        assert digest.subject_en.endswith("– and 5 more")
        # The saved subject (rendered alone) is the one the emails and the archive show.
        for locale, saved in (("sv", digest.subject_sv), ("en", digest.subject_en)):
            assert digests.DigestRenderer(digest).render_public(locale)[0] == saved
        # The same articles never go into a second digest; nothing new means no digest.
        assert digests.compile_digest(NOW + timedelta(minutes=5)) is None
        assert db.session.execute(db.select(db.func.count()).select_from(Digest)).scalar_one() == 1


def test_nothing_new_means_no_digest(app):
    with app.app_context():
        assert digests.compile_digest(NOW) is None
        articles.add_article(title="Gammal nyhet", url="https://norrsken.example/gammal/",
                             published=NOW - timedelta(days=8))
        assert digests.compile_digest(NOW) is None
        hidden = articles.add_article(title="Dold", url="https://norrsken.example/dold/", published=NOW)
        articles.set_hidden(hidden, True)
        assert digests.compile_digest(NOW) is None
        articles.set_hidden(hidden, False)
        assert [a.title for a in digests.compile_digest(NOW).articles] == ["Dold"]


def test_a_period_is_compiled_once(app):
    with app.app_context():
        articles.add_article(title="Ett", url="https://norrsken.example/1/", published=NOW)
        assert digests.compile_digest(NOW, period="2026-W48") is not None
        articles.add_article(title="Två", url="https://norrsken.example/2/", published=NOW)
        assert digests.compile_digest(NOW, period="2026-W48") is None
        assert digests.compile_digest(NOW, period="2026-W49") is not None


def test_send_per_subscriber_topics_language_and_headers(smtp_app, smtp_server, feed_server):
    with smtp_app.app_context():
        load_fixture_feeds(feed_server)
        subscriber("alla@example.se")  # no topics chosen: everything, in Swedish
        subscriber("blog@example.com", language="en", topics=("blogg",))
        subscriber("press@example.se", topics=("pressmeddelanden", "blogg"))
        subscriber("pending@example.se", status="pending")
        digest = delivery.send_now(NOW)
        assert digest.status == "done"
        counts = delivery.send_progress(digest.id)
        assert counts["sent"] == 3 and counts["total"] == 3

    everything = smtp_server.messages(to="alla@example.se")[0]
    assert everything["Subject"] == "Vecka 48: Krönika: Därför behöver vi fler mötesplatser 🏠 – och 5 till"
    raw = smtp_server.raw[[m["To"] for m in smtp_server.messages()].index("alla@example.se")]
    subject_line = re.search(rb"^Subject: (.*(?:\r\n[ \t].*)*)", raw, flags=re.M).group(1)
    assert subject_line.startswith(b"=?utf-8?") and raw.isascii()  # RFC 2047, no raw 8-bit
    text = body_text(everything)
    assert _section_titles(text) == ["NYHETER", "PRESSMEDDELANDEN", "BLOGG"]
    assert "Välkommen till Folkets hus den 3 december kl 18.30." in text
    assert "Redaktionen · söndag 22 november" in text
    assert OLD_TITLE not in text
    html = body_text(everything, "html")
    assert '<html lang="sv"' in html
    assert 'alt="Skiss över biblioteket"' in html
    assert "<script" not in html.lower() and "javascript:" not in html.lower()
    assert html.count(">Nytt bibliotek i Ålidhem öppnar i vår (uppdaterad)</a>") == 1  # repeated guid: once
    unsubscribe = re.search(r"<(http://newsletter.test/unsubscribe/[^>]+)>", everything["List-Unsubscribe"])
    assert unsubscribe and unsubscribe.group(1) in text and unsubscribe.group(1) in html
    assert everything["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "http://newsletter.test/preferences/" in text

    blog = smtp_server.messages(to="blog@example.com")[0]
    assert blog["Subject"] == "Week 48: Tankar efter en vecka i Stockholm – and 1 more"
    blog_text = body_text(blog)
    assert _section_titles(blog_text) == ["BLOG"]
    assert "Maria Öberg · Saturday 21 November" in blog_text
    assert "Nytt bibliotek" not in blog_text and '<html lang="en"' in body_text(blog, "html")

    press = smtp_server.messages(to="press@example.se")[0]
    assert _section_titles(body_text(press)) == ["PRESSMEDDELANDEN", "BLOGG"]
    assert press["List-Unsubscribe"] != everything["List-Unsubscribe"]  # each their own link
    assert not smtp_server.messages(to="pending@example.se")


def test_someone_whose_topics_have_nothing_new_gets_nothing(smtp_app, smtp_server):
    with smtp_app.app_context():
        articles.add_article(title="Bara blogg", url="https://norrsken.example/b/", topic_slug="blogg",
                             published=NOW)
        subscriber("nyheter@example.se", topics=("nyheter",))
        subscriber("blogg@example.se", topics=("blogg",))
        digest = delivery.send_now(NOW)
        counts = delivery.send_progress(digest.id)
        # Not a recipient at all: not pinned, not skipped, not in the total.
        assert counts["sent"] == 1 and counts["skipped"] == 0 and counts["total"] == 1
        assert digest.recipient_count == 1
    assert [m["To"] for m in smtp_server.messages()] == ["blogg@example.se"]


def test_each_variant_is_rendered_once(app, monkeypatch):
    calls = []
    real = mail.prepare_message
    monkeypatch.setattr(mail, "prepare_message", lambda **kw: calls.append(kw["subject"]) or real(**kw))
    with app.app_context():
        articles.add_article(title="Nyhet", url="https://norrsken.example/n/", published=NOW)
        articles.add_article(title="Blogg", url="https://norrsken.example/b/", topic_slug="blogg",
                             published=NOW)
        people = [subscriber(f"p{i}@example.se", language=("sv", "en")[i % 2],
                             topics=(("blogg",), ())[i % 3 == 0]) for i in range(30)]
        renderer = digests.DigestRenderer(digests.compile_digest(NOW))
        messages = [renderer.message_for(person) for person in people]
        assert len(calls) == 4  # {sv, en} × {blogg only, everything}
        assert len({id(m) for m in messages}) == 4


def test_preview_and_test_send_consume_nothing(smtp_app, smtp_server, feed_server):
    with smtp_app.app_context():
        load_fixture_feeds(feed_server)
        subject, text, html = digests.preview_coming("sv", NOW)
        assert "/unsubscribe/" not in text + html and "Prenumerera här" in html
        assert delivery.send_test("redaktor@example.se", locale="en", now=NOW)
        assert db.session.execute(db.select(db.func.count()).select_from(Digest)).scalar_one() == 0
        assert db.session.execute(db.select(db.func.count()).select_from(Delivery)).scalar_one() == 0
        assert len(digests.coming_articles(NOW)) == 6
    sent = smtp_server.messages()
    assert [m["To"] for m in sent] == ["redaktor@example.se"]
    assert sent[0]["Subject"].startswith("[TEST] Week 48:")


def test_digest_commands(smtp_app, smtp_server, feed_server, tmp_path):
    # The commands read the clock: the fixture feeds' week, whatever the date of the run.
    with time_machine.travel(NOW, tick=True):
        _digest_commands(smtp_app, smtp_server, feed_server, tmp_path)


def _digest_commands(smtp_app, smtp_server, feed_server, tmp_path):
    runner = smtp_app.test_cli_runner()
    with smtp_app.app_context():
        load_fixture_feeds(feed_server, now=utcnow())
        subscriber("alla@example.se")
        subscriber("en@example.com", language="en", topics=("blogg",))
    out = tmp_path / "d.html"
    result = runner.invoke(args=["digest", "preview", "--out", str(out), "--lang", "en"])
    assert result.exit_code == 0, result.output
    assert out.read_text().lower().startswith("<!doctype html>") and 'lang="en"' in out.read_text()
    result = runner.invoke(args=["digest", "preview"])
    assert "Subject: Vecka" in result.output and "NYHETER" in result.output
    assert runner.invoke(args=["digest", "preview", "--lang", "de"]).exit_code != 0

    result = runner.invoke(args=["digest", "send", "--dry-run"])
    assert result.exit_code == 0 and "to 2 subscribers (2 variants)" in result.output
    result = runner.invoke(args=["digest", "send", "--test-to", "redaktor@example.se"])
    assert result.exit_code == 0 and len(smtp_server.messages()) == 1
    result = runner.invoke(args=["digest", "send"])
    assert result.exit_code == 0 and "done" in result.output and "sent 2" in result.output, result.output
    assert len(smtp_server.messages()) == 3
    result = runner.invoke(args=["digest", "send"])
    assert result.exit_code == 0 and "nothing new" in result.output
    result = runner.invoke(args=["digest", "status"])
    assert "done" in result.output and "sent 2" in result.output
    result = runner.invoke(args=["digest", "preview"])
    assert result.exit_code != 0 and "nothing new" in result.output
