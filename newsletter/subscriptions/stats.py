"""Figures for the admin dashboard: subscriber counts by state and their weekly trend."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from flask import current_app
from sqlalchemy import and_, case, func, or_, select

from newsletter.engine.clock import utcnow
from newsletter.extensions import db
from newsletter.models import SUBSCRIBER_STATES, Subscriber


def subscriber_counts() -> dict[str, int]:
    """How many subscribers are in each state (every state present, zero if none), plus total."""
    rows = db.session.execute(select(Subscriber.status, func.count()).group_by(Subscriber.status)).all()
    counts = {state: 0 for state in SUBSCRIBER_STATES}
    counts.update({state: n for state, n in rows})
    counts["total"] = sum(n for _, n in rows)
    return counts


@dataclass(frozen=True)
class WeekPoint:
    end: datetime  # the end of the week (UTC), or now for the running week
    label: str  # ISO week number
    confirmed: int  # confirmed subscribers at `end`
    joined: int  # confirmations during the week
    left: int  # unsubscriptions during the week


def week_ends(now: datetime, weeks: int, tz: ZoneInfo) -> list[datetime]:
    """The ends (Monday 00:00 local) of the `weeks - 1` whole weeks before now, then now."""
    local = now.astimezone(tz)
    monday = (local - timedelta(days=local.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
    ends = [(monday - timedelta(weeks=k)).astimezone(UTC) for k in range(weeks - 2, -1, -1)]
    return [*ends, now.astimezone(UTC)]


def weekly_trend(now: datetime | None = None, weeks: int = 12) -> list[WeekPoint]:
    """Confirmed subscribers at the end of each of the last `weeks` weeks, and the week's changes.

    One scan of the subscriber table (conditional counts), from confirmed_at and
    unsubscribed_at. Bounced and complained addresses have no end time: they are
    left out of the history altogether. Erased people leave no trace here.
    """
    now = now or utcnow()
    tz = ZoneInfo(current_app.config["TIMEZONE"])
    ends = week_ends(now, weeks, tz)
    starts = [ends[0] - timedelta(weeks=1), *ends[:-1]]
    # Someone confirmed without a confirmation time (old data) counts from when they were added.
    confirmed_at = case((and_(Subscriber.confirmed_at.is_(None), Subscriber.status == "confirmed"),
                         Subscriber.created_at), else_=Subscriber.confirmed_at)
    left_at = Subscriber.unsubscribed_at
    columns = []
    for start, end in zip(starts, ends, strict=True):
        columns.append(func.sum(case((and_(confirmed_at <= end, or_(left_at.is_(None), left_at > end)), 1),
                                     else_=0)))
        columns.append(func.sum(case((and_(confirmed_at > start, confirmed_at <= end), 1), else_=0)))
        columns.append(func.sum(case((and_(left_at > start, left_at <= end), 1), else_=0)))
    row = db.session.execute(
        select(*columns).where(Subscriber.status.notin_(("bounced", "complained")))).one()
    values = [int(v or 0) for v in row]
    points = []
    for i, end in enumerate(ends):
        # A week is labelled by the ISO week that ends at `end` (the running week for the last point).
        week = (end - timedelta(seconds=1)).astimezone(tz).isocalendar()[1]
        points.append(WeekPoint(end=end, label=str(week), confirmed=values[3 * i], joined=values[3 * i + 1],
                                left=values[3 * i + 2]))
    return points


_CACHE = "newsletter.dashboard_figures"


def dashboard_figures(now: datetime | None = None) -> tuple[dict[str, int], list[WeekPoint]]:
    """`subscriber_counts()` and `weekly_trend()`, computed at most once per
    ADMIN_STATS_CACHE_SECONDS in a process: both scan the whole list (about half a second at a
    million subscribers), and the figures of a week-long trend do not need to be fresher."""
    seconds = current_app.config["ADMIN_STATS_CACHE_SECONDS"]
    cached = current_app.extensions.get(_CACHE)
    if seconds > 0 and cached is not None and time.monotonic() < cached[0]:
        return cached[1]
    figures = (subscriber_counts(), weekly_trend(now))
    current_app.extensions[_CACHE] = (time.monotonic() + seconds, figures)
    return figures


def trend_chart(points: list[WeekPoint], width: int = 600, height: int = 200) -> dict:
    """Coordinates for an inline SVG line chart of `points` (no JavaScript, no library)."""
    left, right, top, bottom = 40, 10, 10, 24
    top_value = max([p.confirmed for p in points] + [1])
    step = (width - left - right) / max(len(points) - 1, 1)

    def y(value: int) -> float:
        return round(top + (height - top - bottom) * (1 - value / top_value), 1)

    coords = [(round(left + i * step, 1), y(p.confirmed)) for i, p in enumerate(points)]
    return {
        "width": width, "height": height, "left": left, "bottom": height - bottom, "right": width - right,
        "top": top, "max": top_value, "mid": top_value // 2, "mid_y": y(top_value // 2),
        "line": " ".join(f"{x},{y_}" for x, y_ in coords),
        "dots": [(x, y_, p) for (x, y_), p in zip(coords, points, strict=True)],
    }
