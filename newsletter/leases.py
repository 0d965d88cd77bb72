"""Named leases (a SchedulerLock row each), so that one process at a time sends a digest or runs
the scheduler's jobs, across processes and machines; a holder that died loses it.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from newsletter.engine.clock import utcnow
from newsletter.extensions import db
from newsletter.models import SchedulerLock

log = logging.getLogger(__name__)

SEND_LEASE = "digest-send"


LEASE_SECONDS = 300  # a crashed sender's lease runs out after this; a live one renews it


def _try_lease(engine, name: str, holder: str) -> bool:
    table = SchedulerLock.__table__
    now = utcnow()
    expires = now + timedelta(seconds=LEASE_SECONDS)
    with engine.begin() as conn:
        current = conn.execute(select(table.c.holder).where(table.c.name == name)).scalar()
        if current and current != holder and _holder_is_dead(current):
            now = expires  # held by a process of this host that is gone (kill -9): take it over now
        taken = conn.execute(
            update(table)
            .where(table.c.name == name, or_(table.c.expires_at < now, table.c.holder == holder))
            .values(holder=holder, expires_at=expires)
        ).rowcount
    if taken:
        return True
    try:
        with engine.begin() as conn:
            conn.execute(insert(table).values(name=name, holder=holder, expires_at=expires))
    except IntegrityError:  # held by someone else, and not expired
        return False
    return True


@contextmanager
def lease(name: str, *, wait: bool = True, poll: float = 1.0) -> Iterator[bool]:
    """Hold a named lease (a SchedulerLock row); renewed in the background, released at the end.

    With `wait`, blocks until the lease is free (its holder finishes, or died and the
    lease ran out after LEASE_SECONDS); without, yields False at once when it is taken.
    """
    engine = db.engine
    holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
    db.session.commit()  # SQLite: never wait for the lease while this session holds a write lock
    announced = False
    while not _try_lease(engine, name, holder):
        if not wait:
            yield False
            return
        if not announced:
            log.info("waiting for another process that holds the lease %r", name)
            announced = True
        time.sleep(poll)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(LEASE_SECONDS / 5):
            try:
                _try_lease(engine, name, holder)
            except Exception:  # noqa: BLE001  (a failed renewal is retried; the lease has slack)
                log.exception("could not renew lease %s", name)

    thread = threading.Thread(target=renew, name=f"lease-{name}", daemon=True)
    thread.start()
    try:
        yield True
    finally:
        stop.set()
        thread.join()
        table = SchedulerLock.__table__
        with engine.begin() as conn:
            conn.execute(delete(table).where(table.c.name == name, table.c.holder == holder))


def send_lease(*, wait: bool = True):
    """The lease every digest send runs under, so two processes never send at once."""
    return lease(SEND_LEASE, wait=wait)


def _holder_is_dead(holder: str) -> bool:
    """A lease holder ("host:pid:random") that is a process of this host that no longer runs.
    (Added by the delivery issue: a `digest send` killed with -9 must not block the next for
    LEASE_SECONDS.)"""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
