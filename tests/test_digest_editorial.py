"""Editorial control of the coming digest: an editor adds an article older than
DIGEST_MAX_AGE_DAYS, leaves another out and changes the order within a section; the preview
and the email sent are exactly that."""

from __future__ import annotations

from admin_helpers import add_article, add_subscribers, csrf_token, log_in
from conftest import body_text

from newsletter import delivery, digests
from newsletter.extensions import db
from newsletter.models import Article, AuditEvent


def _titles(text: str, names) -> list[str]:
    """The names in the order they appear in `text`."""
    return sorted((name for name in names if name in text), key=text.index)


def test_an_editor_adds_an_old_article_leaves_one_out_and_reorders(smtp_app, smtp_server):
    app = smtp_app
    client = app.test_client()
    log_in(client, app)
    with app.app_context():
        ids = {title: add_article(title, days_ago=days).id for title, days in (
            ("Färsk nyhet", 1), ("Äldre nyhet", 2), ("Oönskad nyhet", 3), ("Förra månadens nyhet", 30))}
        add_subscribers(2)
    page = client.get("/admin/articles").get_data(as_text=True)
    assert "Förra månadens nyhet" in page.split('id="earlier-heading"')[1]  # too old: not in it
    token = csrf_token(client, "/admin/articles")
    assert client.post(f"/admin/articles/{ids['Förra månadens nyhet']}/include",
                       data={"csrf_token": token}).status_code == 303
    hidden = client.post(f"/admin/articles/{ids['Oönskad nyhet']}/hide", data={"csrf_token": token})
    assert hidden.status_code == 303
    # Newest first by default; the editor moves the old one to the top of its section.
    for _ in range(2):
        assert client.post(f"/admin/articles/{ids['Förra månadens nyhet']}/move/up",
                           data={"csrf_token": token}).status_code == 303
    chosen = ["Förra månadens nyhet", "Färsk nyhet", "Äldre nyhet"]
    preview = client.get("/admin/digest/preview/sv.txt").get_data(as_text=True)
    assert _titles(preview, ids) == chosen
    page = client.get("/admin/articles").get_data(as_text=True)
    coming = page.split('id="coming-heading"')[1].split("</section>")[0]
    assert _titles(coming, ids) == chosen

    with app.app_context():
        digest = delivery.send_now()
        assert [a.title for a in digest.articles] == chosen
        actions = {a for a, in db.session.execute(db.select(AuditEvent.action))}
        assert {"article.include", "article.hide", "article.move"} <= actions
    messages = [m for m in smtp_server.messages() if m["To"].endswith("@example.org")]  # not the summary
    assert len(messages) == 2
    for message in messages:
        assert _titles(body_text(message), ids) == chosen
        assert _titles(body_text(message, "html"), ids) == chosen


def test_moving_stays_within_the_section_and_an_added_article_joins_the_draft(app):
    with app.app_context():
        news = add_article("Nyhet", topic="nyheter", days_ago=1)
        blog = add_article("Blogginlägg", topic="blogg", days_ago=2)
        old = add_article("Gammalt blogginlägg", topic="blogg", days_ago=40)
        draft = digests.set_intro("Hej!")
        assert [a.title for a in draft.articles] == ["Nyhet", "Blogginlägg"]
        assert not digests.move_article(news, -1) and not digests.move_article(news, 1)  # alone in it
        digests.include_article(old)
        db.session.refresh(draft)
        assert [a.title for a in draft.articles] == ["Nyhet", "Blogginlägg", "Gammalt blogginlägg"]
        assert digests.move_article(db.session.get(Article, old.id), -1)
        db.session.refresh(draft)
        assert [a.title for a in draft.articles] == ["Nyhet", "Gammalt blogginlägg", "Blogginlägg"]
        assert not digests.move_article(db.session.get(Article, old.id), -1)  # first of its section
        assert blog.id in {a.id for a in draft.articles}
