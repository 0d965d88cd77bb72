"""Prometheus metrics (`/metrics`, off until METRICS_TOKEN is set). The counters: engine/counters.py.

Two kinds of series:
- counters of what happens in a process (HTTP requests and their latency, subscriber events,
  feed polls), aggregated over Gunicorn's workers (and the scheduler, on the same machine) by
  prometheus_client's multiprocess mode when PROMETHEUS_MULTIPROC_DIR is set;
- gauges read from the database when scraped (sends from their ledger, the mail queue, the
  scheduler's heartbeat), so they are exact whichever process or machine did the work.
"""

from __future__ import annotations

import os
from datetime import timedelta

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector
from sqlalchemy import func, or_, select

from newsletter.delivery import send_progress
from newsletter.engine.clock import utcnow
from newsletter.extensions import db
from newsletter.models import Delivery, Digest, QueuedEmail, SchedulerHeartbeat
from newsletter.monitoring.heartbeat import aware as _aware

RECENT_SENDS = 3  # the sends shown: those running or paused, and the latest finished ones
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class DatabaseCollector(Collector):
    """Gauges read from the database at each scrape (needs an app context)."""

    def collect(self):
        now = utcnow()
        messages = GaugeMetricFamily("newsletter_send_messages", "A send's messages by ledger state",
                                     labels=["digest", "state"])
        retried = GaugeMetricFamily("newsletter_send_retried_messages",
                                    "A send's messages that needed more than one attempt", labels=["digest"])
        progress = GaugeMetricFamily("newsletter_send_progress_ratio", "Share of a send's messages done",
                                     labels=["digest", "status"])
        rate = GaugeMetricFamily("newsletter_send_rate", "Messages a second of a send (recent)",
                                 labels=["digest"])
        for digest_id in _recent_sends():
            state = send_progress(digest_id)
            label = str(digest_id)
            for name in ("sent", "failed", "bounced", "skipped", "queued", "sending"):
                messages.add_metric([label, name], state.get(name, 0))
            done = sum(state.get(name, 0) for name in ("sent", "failed", "bounced", "skipped"))
            progress.add_metric([label, state["status"]], done / state["total"] if state["total"] else 0)
            rate.add_metric([label], state["rate"])
            retried.add_metric([label], db.session.execute(select(func.count()).select_from(Delivery).where(
                Delivery.digest_id == digest_id, Delivery.attempts > 1)).scalar_one())
        yield from (messages, retried, progress, rate)

        waiting = (QueuedEmail.sent_at.is_(None), QueuedEmail.failed_at.is_(None))
        depth, oldest = db.session.execute(
            select(func.count(), func.min(QueuedEmail.created_at)).where(*waiting)).one()
        yield GaugeMetricFamily("newsletter_mail_queue_depth", "Single emails waiting to go out", value=depth)
        yield GaugeMetricFamily("newsletter_mail_queue_oldest_seconds", "Age of the oldest waiting email",
                                value=0 if oldest is None else (now - _aware(oldest)).total_seconds())

        beat = SchedulerHeartbeat.__table__
        last = db.session.execute(select(func.max(beat.c.seen_at)).where(beat.c.role != "standby")).scalar()
        yield GaugeMetricFamily("newsletter_scheduler_heartbeat_age_seconds",
                                "Seconds since the scheduler was last seen (-1: never)",
                                value=-1 if last is None else (now - _aware(last)).total_seconds())
        running = GaugeMetricFamily("newsletter_schedulers", "Scheduler processes seen in the last 5 minutes",
                                    labels=["role"])
        counts = dict(db.session.execute(select(beat.c.role, func.count()).where(
            beat.c.seen_at >= now - timedelta(minutes=5)).group_by(beat.c.role)).all())
        for role in ("active", "standby"):
            running.add_metric([role], counts.get(role, 0))
        yield running
        db.session.rollback()


def _recent_sends() -> list[int]:
    return list(db.session.execute(
        select(Digest.id).where(
            Digest.started_at.is_not(None),
            or_(Digest.status.in_(("sending", "paused")), Digest.finished_at.is_not(None)))
        .order_by(Digest.started_at.desc()).limit(RECENT_SENDS)).scalars())


def exposition() -> bytes:
    """The text the scraper gets: this process's (or every worker's) counters and the database gauges."""
    database = CollectorRegistry(auto_describe=False)
    database.register(DatabaseCollector())
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        counters = CollectorRegistry()
        multiprocess.MultiProcessCollector(counters)
    else:
        counters = REGISTRY
    return generate_latest(counters) + generate_latest(database)
