"""When the weekly digest goes out: DIGEST_SCHEDULE (cron) in TIMEZONE, a fact of the settings
that the emails (the welcome says when the first digest comes) and the pages use."""

from __future__ import annotations

from datetime import datetime

from flask import current_app


def next_digest_time(now: datetime) -> datetime | None:
    """The next time the digest is due after `now` (aware), or None for a schedule that cannot be read."""
    # APScheduler's cron parser: imported by the few places that say when the next digest comes.
    from apscheduler.triggers.cron import CronTrigger

    try:
        trigger = CronTrigger.from_crontab(current_app.config["DIGEST_SCHEDULE"],
                                           timezone=current_app.config["TIMEZONE"])
    except ValueError:
        return None
    return trigger.get_next_fire_time(None, now)
