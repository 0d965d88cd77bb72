"""The admins' email when the scheduler is gone, and when it is back: once each per outage.

Whichever process notices first (a web worker answering a request or /readyz, the dashboard, a
Celery worker) sends it. "Noticing" is an atomic claim on a row of the lease table: the outage
is opened by inserting the row `alert:scheduler` (a unique key: only one process succeeds) and
closed by deleting it (only the process whose DELETE removed it sends "back").
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from flask import current_app
from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError

from newsletter.admins.notify import email_admins
from newsletter.engine.clock import utcnow
from newsletter.extensions import db
from newsletter.models import SchedulerLock
from newsletter.monitoring.heartbeat import scheduler_status

log = logging.getLogger(__name__)

OUTAGE_ROW = "alert:scheduler"
NEVER = datetime(9999, 1, 1, tzinfo=UTC)


def check_scheduler(now: datetime | None = None) -> str | None:
    """Open or close the scheduler's outage and email the admins: "down", "back" or None."""
    now = now or utcnow()
    status = scheduler_status(now)
    alert_after = int(current_app.config["SCHEDULER_ALERT_MINUTES"]) * 60
    if status.never_seen:  # a deployment without a scheduler yet: the dashboard says so, no email
        return None
    table = SchedulerLock.__table__
    db.session.commit()
    if status.age_seconds is not None and status.age_seconds > alert_after:
        try:
            with db.engine.begin() as conn:
                conn.execute(insert(table).values(name=OUTAGE_ROW, holder=status.last_seen.isoformat(),
                                                  expires_at=NEVER))
        except IntegrityError:  # already open: someone told the admins
            return None
        log.warning("the scheduler was last seen %s s ago: telling the admins", status.age_seconds)
        try:
            email_admins("scheduler_down", last_seen=status.last_seen, minutes=status.age_seconds // 60)
        except Exception:  # not told: the outage is opened again by the next check, here or elsewhere
            db.session.rollback()
            with db.engine.begin() as conn:
                conn.execute(delete(table).where(table.c.name == OUTAGE_ROW))
            raise
        return "down"
    if not status.stale:
        if not db.session.execute(select(table.c.name).where(table.c.name == OUTAGE_ROW)).first():
            return None
        with db.engine.begin() as conn:
            closed = conn.execute(delete(table).where(table.c.name == OUTAGE_ROW)).rowcount
        if closed:
            log.warning("the scheduler is back: telling the admins")
            email_admins("scheduler_back", last_seen=status.last_seen, minutes=0)
            return "back"
    return None


def check_now_and_then(now: datetime | None = None, *, every: timedelta = timedelta(seconds=60)) -> None:
    """`check_scheduler` at most once per `every` in this process; never raises (called by hooks)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    now = now or utcnow()
    last = app.extensions.get("scheduler_checked_at")
    if last is not None and now - last < every:
        return
    app.extensions["scheduler_checked_at"] = now
    try:
        check_scheduler(now)
    except Exception:  # noqa: BLE001  (an alert that fails must not fail the request)
        db.session.rollback()
        log.exception("could not check the scheduler's heartbeat")
