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


def test_feed_last_success_is_filled_in_for_feeds_that_worked(app_config):
    import sqlalchemy as sa

    from newsletter.models import UTCDateTime, utcnow

    app = create_app(app_config, config_class=TestConfig)
    init_migrations(app)
    feed = sa.table("feed", sa.column("url", sa.String), sa.column("title", sa.String),
                    sa.column("last_fetched_at", UTCDateTime()), sa.column("last_status", sa.String),
                    sa.column("last_error", sa.Text), sa.column("created_at", UTCDateTime()))
    fetched = utcnow().replace(microsecond=0)
    with app.app_context():
        db.drop_all()
        db.session.execute(db.text("DROP TABLE IF EXISTS alembic_version"))
        db.session.commit()
        upgrade(revision="f6fdcb6059ec")  # the schema before last_success_at, with feeds in it
        db.session.execute(sa.insert(feed), [
            {"url": f"https://example.org/{status or 'new'}.rss", "title": status, "last_status": status,
             "last_fetched_at": fetched if status else None,
             "last_error": "boom" if status == "error" else "",
             "created_at": fetched}
            for status in ("ok", "not-modified", "error", "")
        ])
        db.session.commit()
        upgrade(revision="8d2f4a6c1b37")
        rows = db.session.execute(db.text("SELECT title, last_success_at, last_error FROM feed ORDER BY id"))
        rows = [(title, success is not None, error) for title, success, error in rows]
        db.session.commit()  # end the transaction: drop_all below uses another connection
        assert rows == [("ok", True, ""), ("not-modified", True, ""), ("error", False, "boom"),
                        ("", False, "")]
        db.drop_all()
        db.session.execute(db.text("DROP TABLE alembic_version"))
        db.session.commit()
        db.engine.dispose()
