"""Polls that an editor starts from the admin ("fetch now"): run in the background, so no web
request waits for a slow or hanging feed; each feed's outcome is recorded on it and shown on
the feeds page."""

from __future__ import annotations

import logging
import threading

from flask import Flask, current_app

from newsletter.digests import drafts, feeds
from newsletter.extensions import db
from newsletter.models import Feed

log = logging.getLogger(__name__)

_lock = threading.Lock()
_running: dict[int, threading.Thread] = {}  # feed id -> the thread polling it (this process)


def polling(feed_id: int) -> bool:
    """Whether a background poll of this feed is running in this process."""
    with _lock:
        thread = _running.get(feed_id)
        return thread is not None and thread.is_alive()


def poll_in_background(feed_ids: list[int]) -> list[int]:
    """Start polling these feeds in a thread; the ids that were started (a feed being polled
    already is left to that poll)."""
    app = current_app._get_current_object()
    with _lock:
        started = [i for i in feed_ids if not (i in _running and _running[i].is_alive())]
        if not started:
            return []
        thread = threading.Thread(target=_poll, args=(app, started), name="feed-poll", daemon=True)
        for feed_id in started:
            _running[feed_id] = thread
    thread.start()
    return started


def wait(timeout: float = 60) -> None:
    """Wait for the background polls of this process to end (tests, shutdown)."""
    with _lock:
        threads = set(_running.values())
    for thread in threads:
        thread.join(timeout)


def _poll(app: Flask, feed_ids: list[int]) -> None:
    with app.app_context():
        try:
            for feed_id in feed_ids:
                feed = db.session.get(Feed, feed_id)
                if feed is not None:
                    feeds.fetch_feed(feed)
            draft = drafts.current_draft()
            if draft is not None:
                drafts.refresh_draft(draft)
        except Exception:  # a thread's error would be lost: log it
            log.exception("background feed poll failed")
        finally:
            db.session.remove()
            with _lock:
                for feed_id in feed_ids:
                    if _running.get(feed_id) is threading.current_thread():
                        del _running[feed_id]
