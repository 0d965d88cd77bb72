"""The migration that adds the scheduler's heartbeat and actions upgrades a database with data."""

from __future__ import annotations

from flask_migrate import downgrade, upgrade
from sqlalchemy import inspect, text

from config import TestConfig
from newsletter import create_app
from newsletter.extensions import db, init_migrations
from newsletter.monitoring import heartbeat

BEFORE = "e4a9c2d7f815"  # the migration before this one
REVISION = "b7c41e2a9d10"


def test_upgrade_keeps_the_data_and_adds_the_heartbeat_tables(app_config):
    app = create_app(app_config, config_class=TestConfig)
    init_migrations(app)
    with app.app_context():
        db.drop_all()
        db.session.execute(text("DROP TABLE IF EXISTS alembic_version"))
        db.session.execute(text("DROP TABLE IF EXISTS scheduler_heartbeat"))
        db.session.execute(text("DROP TABLE IF EXISTS scheduler_action"))
        db.session.commit()
        upgrade(revision=BEFORE)
        db.session.execute(text(
            "INSERT INTO subscriber (uid, email, name, status, language, created_at, generation) "
            "VALUES ('u1', 'anna@example.se', 'Anna', 'confirmed', 'sv', '2026-11-20 10:00:00+00:00', 0)"))
        db.session.execute(text(
            "INSERT INTO scheduler_lock (name, holder, expires_at) "
            "VALUES ('digest-run:2026-W48', 'done', '2027-01-01 00:00:00+00:00')"))
        db.session.commit()
        upgrade(revision=REVISION)
        assert {"scheduler_heartbeat", "scheduler_action"} <= set(inspect(db.engine).get_table_names())
        assert db.session.execute(text("SELECT email, status FROM subscriber")).all() == [
            ("anna@example.se", "confirmed")]
        assert db.session.execute(text("SELECT holder FROM scheduler_lock")).scalar() == "done"
        heartbeat.beat("host:1:aa")
        heartbeat.record_action("feeds", "ok", "1|0|0")
        assert heartbeat.scheduler_status(actions=1).ok
        db.session.commit()
        downgrade(revision=BEFORE)
        assert "scheduler_heartbeat" not in inspect(db.engine).get_table_names()
        db.session.execute(text("DROP TABLE alembic_version"))
        db.drop_all()
        db.session.commit()
        db.engine.dispose()
