"""`flask db upgrade` creates the schema the models describe, on every backend."""

from __future__ import annotations

from flask_migrate import check, upgrade

from config import TestConfig
from newsletter import create_app
from newsletter.extensions import db, init_migrations


def test_upgrade_creates_the_schema_the_models_describe(app_config):
    app = create_app(app_config, config_class=TestConfig)
    init_migrations(app)
    with app.app_context():
        db.drop_all()  # a PostgreSQL database shared with other tests: start empty
        db.session.execute(db.text("DROP TABLE IF EXISTS alembic_version"))
        db.session.commit()
        upgrade()
        check()  # raises if the models and the migrations disagree
        db.session.execute(db.text("DROP TABLE alembic_version"))
        db.session.commit()
        db.engine.dispose()


def test_the_privacy_tables_are_added_to_a_database_with_data(app_config):
    """Upgrading from the initial schema with subscribers, a send and its ledger keeps them all."""
    app = create_app(app_config, config_class=TestConfig)
    init_migrations(app)
    with app.app_context():
        db.drop_all()
        db.session.execute(db.text("DROP TABLE IF EXISTS alembic_version"))
        db.session.commit()
        upgrade(revision="f6fdcb6059ec")
        db.session.execute(db.text(
            "INSERT INTO subscriber (id, uid, email, name, status, language, created_at, generation) "
            "VALUES (1, 'a1', 'anna@example.se', 'Anna', 'confirmed', 'sv', '2026-01-01 00:00:00+00:00', 0)"))
        db.session.execute(db.text(
            "INSERT INTO digest (id, status, subject_sv, subject_en, intro, created_at, compiled_for, "
            "recipient_count, error) VALUES (1, 'done', 'Nytt', 'New', '', '2026-01-02 00:00:00+00:00', "
            "'2026-01-02 00:00:00+00:00', 1, '')"))
        db.session.execute(db.text(
            "INSERT INTO delivery (id, digest_id, subscriber_id, state, attempts, last_reply, updated_at) "
            "VALUES (1, 1, 1, 'sent', 1, '250 OK', '2026-01-02 00:00:00+00:00')"))
        db.session.commit()
        upgrade()
        check()
        assert db.session.execute(db.text("SELECT email, status FROM subscriber")).one() == (
            "anna@example.se", "confirmed")
        assert db.session.execute(db.text("SELECT digest_id, state FROM delivery")).one() == (1, "sent")
        for table in ("suppression", "consent_wording", "send_total", "article_click"):
            assert db.session.execute(db.text(f"SELECT count(*) FROM {table}")).scalar_one() == 0
        db.session.execute(db.text("INSERT INTO send_total (digest_id, sent, failed, bounced, skipped, "
                                   "complaints, unsubscribes) VALUES (1, 5, 0, 0, 0, 1, 2)"))
        db.session.commit()
        db.drop_all()
        db.session.execute(db.text("DROP TABLE alembic_version"))
        db.session.commit()
        db.engine.dispose()


def test_feed_paused_upgrades_a_database_with_feeds(app_config):
    """The schema before `feed.paused`, with feeds and their articles, upgrades: nothing paused."""
    app = create_app(app_config, config_class=TestConfig)
    init_migrations(app)
    with app.app_context():
        db.drop_all()
        db.session.execute(db.text("DROP TABLE IF EXISTS alembic_version"))
        db.session.commit()
        upgrade(revision="0f2fb58524b2")  # the schema before feed.paused
        db.session.execute(db.text(
            "INSERT INTO feed (url, title, last_status, last_error, created_at) VALUES "
            "('https://norrsken.example/feed/', 'Nyheter', 'ok', '', CURRENT_TIMESTAMP), "
            "('https://norrsken.example/blogg/feed/', 'Blogg', 'error', 'HTTPError: 500', "
            "CURRENT_TIMESTAMP)"))
        db.session.execute(db.text(
            "INSERT INTO article (source_id, feed_id, title, url, summary, body_html, image_url, image_alt, "
            "author, published_at, collected_at, updated_at, hidden) VALUES ('g1', 1, 'Rubrik', "
            "'https://norrsken.example/a/', '', '', '', '', '', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, "
            "CURRENT_TIMESTAMP, false)"))
        db.session.commit()
        upgrade(revision="3b7c1e9a5d20")
        rows = db.session.execute(db.text("SELECT url, paused, last_error FROM feed ORDER BY id")).all()
        assert [(url, bool(paused), error) for url, paused, error in rows] == [
            ("https://norrsken.example/feed/", False, ""),
            ("https://norrsken.example/blogg/feed/", False, "HTTPError: 500")]
        assert db.session.execute(db.text("SELECT feed_id FROM article")).scalar_one() == 1
        db.session.commit()
        db.drop_all()
        db.session.execute(db.text("DROP TABLE alembic_version"))
        db.session.commit()
        db.engine.dispose()


def test_digest_intro_en_and_html_sizes_upgrade_a_database_with_digests(app_config):
    """A digest written before intros per language keeps its intro (as the Swedish one), and
    has no measured sizes."""
    app = create_app(app_config, config_class=TestConfig)
    init_migrations(app)
    with app.app_context():
        db.drop_all()
        db.session.execute(db.text("DROP TABLE IF EXISTS alembic_version"))
        db.session.commit()
        upgrade(revision="3b7c1e9a5d20")
        db.session.execute(db.text(
            "INSERT INTO digest (status, subject_sv, subject_en, intro, created_at, compiled_for, "
            "recipient_count, error) VALUES ('done', 'Vecka 48', 'Week 48', 'Hej alla!', "
            "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 3, '')"))
        db.session.commit()
        upgrade(revision="8d2f4a6c1e73")
        row = db.session.execute(db.text("SELECT status, intro, intro_en FROM digest")).one()
        assert tuple(row) == ("done", "Hej alla!", "")
        db.session.commit()
        upgrade(revision="c5e8a1f3b962")  # html_sizes: none for a digest compiled before
        row = db.session.execute(db.text("SELECT intro, intro_en, html_sizes FROM digest")).one()
        assert tuple(row) == ("Hej alla!", "", None)
        db.session.commit()
        db.drop_all()
        db.session.execute(db.text("DROP TABLE alembic_version"))
        db.session.commit()
        db.engine.dispose()


def test_article_pinned_and_rank_upgrade_a_database_with_articles(app_config):
    """Articles stored before editors could pin and order them: none pinned, none ordered."""
    app = create_app(app_config, config_class=TestConfig)
    init_migrations(app)
    with app.app_context():
        db.drop_all()
        db.session.execute(db.text("DROP TABLE IF EXISTS alembic_version"))
        db.session.commit()
        upgrade(revision="c5e8a1f3b962")
        db.session.execute(db.text(
            "INSERT INTO article (source_id, title, url, summary, body_html, image_url, image_alt, "
            "author, published_at, collected_at, updated_at, hidden) VALUES ('g1', 'Rubrik', "
            "'https://norrsken.example/a/', '', '', '', '', '', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, "
            "CURRENT_TIMESTAMP, true)"))
        db.session.commit()
        upgrade(revision="e4a9c2d7f815")
        row = db.session.execute(db.text("SELECT title, hidden, pinned, digest_rank FROM article")).one()
        assert (row[0], bool(row[1]), bool(row[2]), row[3]) == ("Rubrik", True, False, None)
        db.session.commit()
        db.drop_all()
        db.session.execute(db.text("DROP TABLE alembic_version"))
        db.session.commit()
        db.engine.dispose()
