"""The scheduler's heartbeat and what it did last, and how fresh they are.

Every scheduler process writes its own row in `scheduler_heartbeat` (the one that runs the
jobs as "active", a second one waiting for the lease as "standby") on every heartbeat tick;
each poll, digest run and purge adds a `scheduler_action` row. The dashboard, /readyz and the
outage emails all read them through `scheduler_status`.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from flask import current_app
from sqlalchemy import delete, func, select, update

from newsletter.engine.clock import utcnow
from newsletter.extensions import db
from newsletter.models import SchedulerAction, SchedulerHeartbeat

ACTIONS_KEPT = 200  # rows of scheduler_action kept (the dashboard shows the last few)
HEARTBEATS_KEPT = timedelta(days=1)  # rows of processes not seen for this long are removed


def aware(value: datetime | str) -> datetime:
    """A UTC datetime from an aggregate (SQLite's MIN/MAX give back naive times or text)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def new_instance() -> str:
    """The name of this scheduler process in the heartbeat table: "host:pid:random"."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"[:128]


def beat(instance: str, role: str = "active", now: datetime | None = None) -> None:
    """Record that this scheduler process is alive (in its own transaction)."""
    now = now or utcnow()
    table = SchedulerHeartbeat.__table__
    db.session.commit()  # never mix the beat into a caller's unfinished work
    with db.engine.begin() as conn:
        seen = conn.execute(update(table).where(table.c.instance == instance)
                            .values(role=role, seen_at=now)).rowcount
        if not seen:
            conn.execute(table.insert().values(instance=instance, role=role, started_at=now, seen_at=now))
        conn.execute(delete(table).where(table.c.seen_at < now - HEARTBEATS_KEPT))


def stopped(instance: str, now: datetime | None = None) -> None:
    """A scheduler that stops cleanly says so: it is gone all the same (the dashboard warns and the
    admins are told if none comes back), but it no longer counts as one of those running."""
    table = SchedulerHeartbeat.__table__
    with db.engine.begin() as conn:
        conn.execute(update(table).where(table.c.instance == instance, table.c.role == "active")
                     .values(role="stopped", seen_at=now or utcnow()))
        conn.execute(delete(table).where(table.c.instance == instance, table.c.role == "standby"))


def record_action(kind: str, outcome: str, detail: str = "", now: datetime | None = None) -> None:
    """Record one thing the scheduler did (kind: feeds, digest, purge, sends) and its outcome."""
    now = now or utcnow()
    table = SchedulerAction.__table__
    db.session.commit()
    with db.engine.begin() as conn:
        conn.execute(table.insert().values(at=now, kind=kind[:32], outcome=outcome[:64], detail=detail[:300]))
        newest = conn.execute(select(table.c.id).order_by(table.c.id.desc())
                              .offset(ACTIONS_KEPT).limit(1)).scalar()
        if newest is not None:
            conn.execute(delete(table).where(table.c.id <= newest))


@dataclass
class SchedulerStatus:
    """How the scheduler looks from outside: fresh, stale or never seen; one or more running."""

    last_seen: datetime | None
    age_seconds: int | None
    stale_after: int
    active: int = 0  # processes running the jobs, seen within stale_after
    standby: int = 0
    actions: list[SchedulerAction] = field(default_factory=list)

    @property
    def never_seen(self) -> bool:
        return self.last_seen is None

    @property
    def stale(self) -> bool:
        return self.age_seconds is None or self.age_seconds > self.stale_after

    @property
    def several(self) -> bool:
        return self.active > 1

    @property
    def ok(self) -> bool:
        return not self.stale and not self.several


def scheduler_status(now: datetime | None = None, *, actions: int = 0) -> SchedulerStatus:
    """The newest heartbeat of an active scheduler, how many are running, and the last actions."""
    now = now or utcnow()
    stale_after = int(current_app.config["SCHEDULER_STALE_SECONDS"])
    table = SchedulerHeartbeat.__table__
    last_seen = db.session.execute(
        select(func.max(table.c.seen_at)).where(table.c.role != "standby")).scalar()
    last_seen = None if last_seen is None else aware(last_seen)
    fresh = now - timedelta(seconds=stale_after)
    counts = dict(db.session.execute(
        select(table.c.role, func.count()).where(table.c.seen_at >= fresh).group_by(table.c.role)).all())
    status = SchedulerStatus(
        last_seen=last_seen,
        age_seconds=None if last_seen is None else max(0, int((now - last_seen).total_seconds())),
        stale_after=stale_after, active=counts.get("active", 0), standby=counts.get("standby", 0))
    if actions:
        status.actions = list(db.session.execute(
            select(SchedulerAction).order_by(SchedulerAction.id.desc()).limit(actions)).scalars())
    return status
