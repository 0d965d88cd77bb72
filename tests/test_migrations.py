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
