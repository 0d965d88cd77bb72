"""Sends that go on after the caller returns: a Celery task with BROKER_URL, else a thread of
this process (one per digest at a time).
"""

from __future__ import annotations

import logging
import threading

from flask import current_app

from newsletter.delivery.control import set_send_status
from newsletter.delivery.send import send_digest
from newsletter.extensions import db
from newsletter.models import Digest

log = logging.getLogger(__name__)


def resume_send(digest_id: int) -> Digest:
    """Back to "sending", and the send is launched again (in the background)."""
    digest = set_send_status(digest_id, "sending")
    launch_send(digest_id)
    return digest


_running: dict[tuple[int, int], threading.Thread] = {}


_running_lock = threading.Lock()


def launch_send(digest_id: int) -> None:
    """Start (or resume) the send in the background and return at once: a Celery task when
    BROKER_URL is set, else a thread of this process (one per digest at a time)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if app.config.get("BROKER_URL"):
        db.session.commit()  # a worker elsewhere reads the digest: what this process wrote first
        app.extensions["newsletter.launch_task"](digest_id)  # Celery, wired by the app factory
        return
    key = (id(app), digest_id)
    with _running_lock:
        thread = _running.get(key)
        if thread is not None and thread.is_alive():
            return  # already sending here: it obeys the status, and picks up what is queued
        thread = threading.Thread(target=_send_in_thread, args=(app, digest_id),
                                  name=f"send-digest-{digest_id}", daemon=True)
        _running[key] = thread
        thread.start()


def _send_in_thread(app, digest_id: int) -> None:
    # No forking from a thread of a (web) process: unless SEND_PROCESSES asks for more
    # explicitly, a background send uses the threads of this process only.
    processes = app.config.get("SEND_PROCESSES", 0)
    with app.app_context():
        try:
            send_digest(digest_id, processes=processes if processes > 1 else 1)
        except Exception:  # noqa: BLE001  (a background send must log, not vanish)
            log.exception("background send of digest %s failed", digest_id)
        finally:
            db.session.remove()


def wait_for_sends(timeout: float | None = None) -> None:
    """Wait for this process's background sends to end (tests, shutdown)."""
    with _running_lock:
        threads = list(_running.values())
    for thread in threads:
        thread.join(timeout)
