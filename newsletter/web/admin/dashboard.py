"""The dashboard: subscriber counts and trend, the next digest, the last sends."""

from __future__ import annotations

import time

from flask import current_app, render_template

from newsletter import delivery, digests
from newsletter.engine.clock import utcnow
from newsletter.inbound import poll as bounce_mailbox
from newsletter.monitoring import heartbeat
from newsletter.subscriptions import stats
from newsletter.web.admin import bp
from newsletter.web.admin.auth import role_required

LAST_SENDS = 5
LAST_ACTIONS = 6


def next_digest_time(now):
    """When the scheduler fires next (DIGEST_SCHEDULE in TIMEZONE), or None for a bad schedule."""
    try:
        from newsletter import scheduler  # APScheduler: imported by the pages that show the next run only

        trigger = scheduler.digest_trigger(current_app)
    except ValueError:
        return None
    return trigger.get_next_fire_time(None, now)


_FINISHED: dict[tuple, tuple[float, dict]] = {}  # progress of finished sends: (expires, progress)


def _progress(digest) -> dict:
    """A send's progress; a finished one's (a million ledger rows to count) is reused for
    ADMIN_STATS_CACHE_SECONDS, like the dashboard's other figures (a late bounce may change it)."""
    seconds = current_app.config["ADMIN_STATS_CACHE_SECONDS"]
    if seconds <= 0 or digest.status not in ("done", "cancelled"):
        return delivery.send_progress(digest.id)
    key = (current_app.config["SQLALCHEMY_DATABASE_URI"], digest.id, digest.status, digest.finished_at)
    cached = _FINISHED.get(key)
    if cached is None or time.monotonic() >= cached[0]:
        if len(_FINISHED) > 100:
            _FINISHED.clear()
        cached = _FINISHED[key] = (time.monotonic() + seconds, delivery.send_progress(digest.id))
    return cached[1]


@bp.get("/")
@role_required("editor")
def dashboard():
    """Counts by state, their trend, the coming digest and the last sends."""
    now = utcnow()
    counts, points = stats.dashboard_figures(now)
    sends = [(digest, _progress(digest)) for digest in digests.latest_digests(LAST_SENDS)
             if digest.started_at is not None]
    # The coming digest as it would go out now (the draft's intro and articles, hidden ones left out).
    # Not plan_send(): that walks every subscriber, too slow for a page at 100k; the count of
    # confirmed subscribers is what the page says ("about").
    coming = digests.coming_digest(now)
    draft = digests.current_draft()
    return render_template(
        "admin/dashboard.html", counts=counts, points=points,
        chart=stats.trend_chart(points), next_run=next_digest_time(now),
        coming=coming.articles if coming is not None else [],
        intro=coming.intro if coming is not None else "", draft=draft, sends=sends,
        require_approval=current_app.config["DIGEST_REQUIRE_APPROVAL"],
        scheduler=heartbeat.scheduler_status(now, actions=LAST_ACTIONS),
        unreadable=bounce_mailbox.recent_notes() if current_app.config["BOUNCE_MAILBOX_URL"] else 0,
    )
