"""deploy/: the systemd units and the nginx site are valid; the backup script round-trips a
database (subscribers, digests, the send and consent ledgers) on SQLite and PostgreSQL; and
`copy-database` moves a SQLite installation into another database."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from delivery_helpers import seed
from flask_migrate import stamp
from sqlalchemy import func, select, text

from config import TestConfig
from newsletter import create_app
from newsletter.extensions import db, init_migrations
from newsletter.models import Article, ConsentEvent, Delivery, Digest, Subscriber
from newsletter.subscriptions import add_subscriber, record_event

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNITS = ["newsletter-web.service", "newsletter-scheduler.service", "newsletter-worker.service"]


@pytest.mark.parametrize("unit", UNITS)
def test_the_systemd_units_pass_systemd_analyze_verify(tmp_path, unit):
    assert shutil.which("systemd-analyze"), "systemd-analyze is missing (.ci/run installs systemd)"
    # The units name /opt/newsletter: here, this checkout (whose .venv has gunicorn, flask, celery).
    text_ = (DEPLOY / "systemd" / unit).read_text().replace("/opt/newsletter", str(ROOT))
    (tmp_path / unit).write_text(text_)
    result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / unit)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert unit not in result.stderr, result.stderr  # no warning about our file (unknown keys, bad values)
    for option in ("Restart=on-failure", "User=newsletter", "NoNewPrivileges=yes", "ProtectSystem=strict"):
        assert option in text_


def test_the_nginx_site_passes_nginx_t_with_a_test_certificate(tmp_path):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    assert os.path.exists(nginx), "nginx is missing (.ci/run installs it)"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=nyhetsbrev.example.se", "-keyout", str(tmp_path / "key.pem"), "-out",
                    str(tmp_path / "cert.pem")], check=True, capture_output=True)
    site = (DEPLOY / "nginx" / "newsletter.conf").read_text()
    live = "/etc/letsencrypt/live/nyhetsbrev.example.se/"
    site = site.replace(live + "fullchain.pem", str(tmp_path / "cert.pem"))
    site = site.replace(live + "privkey.pem", str(tmp_path / "key.pem"))
    site = site.replace("/var/log/nginx/", f"{tmp_path}/")
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n  access_log off;\n  include {tmp_path}/site.conf;\n}}\n")
    result = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    assert "limit_req zone=newsletter_subscribe" in site and "X-Forwarded-Proto" in site


def _fill(app) -> None:
    """Subscribers (with consent events), an article, a digest and its send ledger."""
    with app.app_context():
        digest_id = seed(5)
        for i, address in enumerate(("anna@example.se", "örjan@exempel.se")):
            subscriber = add_subscriber(address, name=f"Namn {i}", confirmed=True, source="cli")
            record_event(subscriber, "preferences", source="form", detail={"topics": ["nyheter"]})
        db.session.add(Delivery(digest_id=digest_id, subscriber_id=1, state="sent", last_reply="250 OK"))
        db.session.commit()


def _snapshot(app) -> dict:
    with app.app_context():
        db.session.expire_all()
        snapshot = {
            "subscribers": db.session.execute(select(Subscriber.email, Subscriber.status, Subscriber.name)
                                              .order_by(Subscriber.id)).all(),
            "consent": db.session.execute(select(ConsentEvent.kind, ConsentEvent.source, ConsentEvent.detail)
                                          .order_by(ConsentEvent.id)).all(),
            "digests": db.session.execute(select(Digest.subject_sv, Digest.status)).all(),
            "articles": db.session.execute(select(func.count()).select_from(Article)).scalar(),
            "deliveries": db.session.execute(select(Delivery.state, Delivery.last_reply)).all(),
        }
        db.session.commit()
        return snapshot


def _run_backup(app, action: str, file: Path) -> subprocess.CompletedProcess:
    with app.app_context():
        db.session.remove()
        db.engine.dispose()  # a restore drops the tables: no connection of ours may hold them
    env = {**os.environ, "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"], "PYTHON": sys.executable,
           "ENV_FILE": "/nonexistent"}
    return subprocess.run([str(DEPLOY / "backup.sh"), action, str(file)], env=env, capture_output=True,
                          text=True, timeout=120)


def test_backup_and_restore_round_trip_the_database(app, tmp_path):
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        assert shutil.which("pg_dump") and shutil.which("pg_restore"), "postgresql-client is missing"
    _fill(app)
    before = _snapshot(app)
    assert len(before["subscribers"]) == 7 and len(before["consent"]) >= 4 and before["deliveries"]
    backup = tmp_path / "newsletter.backup"
    result = _run_backup(app, "backup", backup)
    assert result.returncode == 0, result.stderr
    assert backup.stat().st_size > 0
    with app.app_context():  # what happens after the backup is lost by the restore
        db.session.execute(text("DELETE FROM consent_event"))
        db.session.execute(text("DELETE FROM delivery"))
        db.session.execute(text("UPDATE subscriber SET status = 'unsubscribed'"))
        db.session.commit()
    assert _snapshot(app) != before
    result = _run_backup(app, "restore", backup)
    assert result.returncode == 0, result.stderr
    assert _snapshot(app) == before
    with app.app_context():  # the restored database takes new rows (PostgreSQL: its sequences came back)
        add_subscriber("ny@example.se", confirmed=True, source="cli")
        db.session.commit()


def test_copy_database_moves_a_sqlite_installation_into_this_database(app, tmp_path):
    source = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'first.db'}",
                         "INSTANCE_PATH": str(tmp_path / "first")}, config_class=TestConfig)
    with source.app_context():
        db.create_all()
    _fill(source)
    before = _snapshot(source)
    for each in (source, app):
        init_migrations(each)
        with each.app_context():
            stamp()
    result = app.test_cli_runner().invoke(args=["copy-database", f"sqlite:///{tmp_path / 'first.db'}"])
    assert result.exit_code == 0, result.output
    assert "subscriber: 7" in result.output and "@" not in result.output
    assert _snapshot(app) == before
    with app.app_context():  # new rows get new ids after the copied ones
        subscriber = add_subscriber("ny@example.se", confirmed=True, source="cli")
        db.session.commit()
        assert subscriber.id == 8
    again = app.test_cli_runner().invoke(args=["copy-database", f"sqlite:///{tmp_path / 'first.db'}"])
    assert again.exit_code != 0 and "not empty" in again.output
    with source.app_context():
        db.session.remove()
        db.engine.dispose()


def test_copy_database_refuses_databases_at_different_migrations(app, tmp_path):
    other = tmp_path / "other.db"
    result = app.test_cli_runner().invoke(args=["copy-database", f"sqlite:///{other}"])
    assert result.exit_code != 0 and "different migrations" in result.output
