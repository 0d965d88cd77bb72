"""The dashboard: subscriber counts and trend, the next digest, the last sends."""

from __future__ import annotations

from flask import current_app, render_template

from newsletter import delivery, digests
from newsletter.engine.clock import utcnow
from newsletter.subscriptions import stats
from newsletter.web.admin import bp
from newsletter.web.admin.auth import role_required

LAST_SENDS = 5


def next_digest_time(now):
    """When the scheduler fires next (DIGEST_SCHEDULE in TIMEZONE), or None for a bad schedule."""
    try:
        from newsletter import scheduler  # APScheduler: imported by the pages that show the next run only

        trigger = scheduler.digest_trigger(current_app)
    except ValueError:
        return None
    return trigger.get_next_fire_time(None, now)


@bp.get("/")
@role_required("editor")
def dashboard():
    """Counts by state, their trend, the coming digest and the last sends."""
    now = utcnow()
    points = stats.weekly_trend(now)
    sends = [(digest, delivery.send_progress(digest.id)) for digest in digests.latest_digests(LAST_SENDS)
             if digest.started_at is not None]
    # The coming digest as it would go out now (the draft's intro and articles, hidden ones left out).
    # Not plan_send(): that walks every subscriber, too slow for a page at 100k; the count of
    # confirmed subscribers is what the page says ("about").
    coming = digests.coming_digest(now)
    draft = digests.current_draft()
    return render_template(
        "admin/dashboard.html", counts=stats.subscriber_counts(), points=points,
        chart=stats.trend_chart(points), next_run=next_digest_time(now),
        coming=coming.articles if coming is not None else [],
        intro=coming.intro if coming is not None else "", draft=draft, sends=sends,
        require_approval=current_app.config["DIGEST_REQUIRE_APPROVAL"],
    )
