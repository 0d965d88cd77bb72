"""/healthz (liveness) and /readyz (readiness): each check, 200 or 503, nothing personal."""

from __future__ import annotations

from datetime import timedelta

import pytest
from flask_migrate import stamp

from config import TestConfig
from newsletter import create_app
from newsletter.engine.clock import utcnow
from newsletter.extensions import db, init_migrations
from newsletter.models import QueuedEmail
from newsletter.monitoring import heartbeat


def ready_app(app):
    """The database at the migrations' head and a fresh scheduler heartbeat: everything ready."""
    init_migrations(app)
    with app.app_context():
        stamp()
        heartbeat.beat("host:1:aa")
    return app


def test_healthz_is_200_with_the_database_status(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json()["database"] == "ok"


def test_readyz_is_200_when_every_check_passes(app):
    response = ready_app(app).test_client().get("/readyz")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "migrations", "mail_queue", "scheduler"}
    assert all(check["ok"] for check in body["checks"].values())


def _break_migrations(app):
    with app.app_context():
        db.session.execute(db.text("UPDATE alembic_version SET version_num = 'f6fdcb6059ec'"))
        db.session.commit()


def _break_mail_queue(app):
    with app.app_context():
        db.session.add(QueuedEmail(kind="confirm", to_addr="anna@example.se", message=b"x",
                                   created_at=utcnow() - timedelta(hours=2)))
        db.session.commit()


def _break_scheduler(app):
    with app.app_context():
        db.session.execute(db.text("DELETE FROM scheduler_heartbeat"))
        db.session.commit()
        heartbeat.beat("host:1:aa", now=utcnow() - timedelta(minutes=10))


def _two_schedulers(app):
    with app.app_context():
        heartbeat.beat("host:2:bb")


@pytest.mark.parametrize("breaks, failing", [
    (_break_migrations, "migrations"),
    (_break_mail_queue, "mail_queue"),
    (_break_scheduler, "scheduler"),
    (_two_schedulers, "scheduler"),
])
def test_readyz_is_503_when_one_check_fails(app, breaks, failing):
    ready_app(app)
    breaks(app)
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    checks = response.get_json()["checks"]
    assert [name for name, check in checks.items() if not check["ok"]] == [failing]
    assert "anna@example.se" not in response.get_data(as_text=True)


def test_readyz_is_503_when_the_database_is_unreachable(tmp_path):
    url = "postgresql+psycopg://nobody:secret@127.0.0.1:9/nowhere"  # a port nobody listens on
    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "INSTANCE_PATH": str(tmp_path / "instance")},
                     config_class=TestConfig)
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert all(not check["ok"] for check in body["checks"].values())
    assert "secret" not in response.get_data(as_text=True) and "nobody" not in response.get_data(as_text=True)
    assert app.test_client().get("/healthz").status_code == 503  # liveness says why, too


def test_readyz_is_503_when_the_database_is_slower_than_the_deadline(app):
    ready_app(app)
    app.config["READY_DB_DEADLINE_SECONDS"] = 0.0
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert not response.get_json()["checks"]["database"]["ok"]
