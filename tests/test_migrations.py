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
