"""/readyz: can this deployment do its work? Each check answers ok or not, with a reason.

No secrets and no counts of people: only states, ages and durations.
"""

from __future__ import annotations

import time
from datetime import datetime
from functools import cache

from flask import current_app
from sqlalchemy import func, select, text

from newsletter.engine.clock import utcnow
from newsletter.extensions import MIGRATIONS, db
from newsletter.models import QueuedEmail
from newsletter.monitoring.heartbeat import aware, scheduler_status


def readiness(now: datetime | None = None) -> tuple[bool, dict[str, dict]]:
    """Every check: (all ok, {name: {"ok": bool, …}}). A check that cannot run is not ok."""
    now = now or utcnow()
    checks: dict[str, dict] = {"database": check_database()}
    for name, check in (("migrations", check_migrations), ("mail_queue", check_mail_queue),
                        ("scheduler", check_scheduler)):
        if not checks["database"]["ok"]:
            checks[name] = {"ok": False, "error": "database unavailable"}
            continue
        try:
            checks[name] = check(now) if name != "migrations" else check()
        except Exception as exc:  # noqa: BLE001  (a failing check is a not-ready answer, not a 500)
            db.session.rollback()
            checks[name] = {"ok": False, "error": exc.__class__.__name__}
    return all(check["ok"] for check in checks.values()), checks


def check_database() -> dict:
    """The database answers a query within READY_DB_DEADLINE_SECONDS."""
    deadline = float(current_app.config["READY_DB_DEADLINE_SECONDS"])
    started = time.monotonic()
    try:
        if db.engine.dialect.name == "postgresql":
            db.session.execute(text(f"SET LOCAL statement_timeout = {int(deadline * 1000)}"))
        db.session.execute(text("SELECT 1"))
        db.session.rollback()
    except Exception as exc:  # noqa: BLE001
        db.session.rollback()
        return {"ok": False, "error": exc.__class__.__name__}
    elapsed = time.monotonic() - started
    result = {"ok": elapsed <= deadline, "ms": round(elapsed * 1000, 1)}
    if not result["ok"]:
        result["error"] = "slower than the deadline"
    return result


@cache
def migration_heads() -> frozenset[str]:
    """The head revisions of the migrations shipped with this code (read once per process)."""
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    return frozenset(ScriptDirectory.from_config(config).get_heads())


def check_migrations() -> dict:
    """The database is at the migrations' head (`flask db upgrade` was run after the upgrade)."""
    try:
        current = set(db.session.execute(text("SELECT version_num FROM alembic_version")).scalars())
    except Exception:  # noqa: BLE001  (no alembic_version table: never migrated)
        db.session.rollback()
        current = set()
    ok = current == set(migration_heads())
    result = {"ok": ok}
    if not ok:
        result["error"] = "run flask db upgrade"
    return result


def check_mail_queue(now: datetime) -> dict:
    """The oldest single email waiting to go out is younger than READY_MAIL_QUEUE_MAX_AGE seconds."""
    oldest = db.session.execute(select(func.min(QueuedEmail.created_at)).where(
        QueuedEmail.sent_at.is_(None), QueuedEmail.failed_at.is_(None))).scalar()
    age = 0 if oldest is None else max(0, int((now - aware(oldest)).total_seconds()))
    limit = int(current_app.config["READY_MAIL_QUEUE_MAX_AGE"])
    result = {"ok": age <= limit, "oldest_seconds": age}
    if not result["ok"]:
        result["error"] = "mail is waiting too long (is the mail server refusing it?)"
    return result


def check_scheduler(now: datetime) -> dict:
    """The scheduler's heartbeat is fresh, and one scheduler runs the jobs."""
    status = scheduler_status(now)
    result = {"ok": status.ok, "last_seen_seconds": status.age_seconds}
    if status.never_seen:
        result["error"] = "never seen: start flask --app wsgi scheduler"
    elif status.stale:
        result["error"] = "not seen lately"
    elif status.several:
        result["error"] = "more than one scheduler runs the jobs"
    return result
