"""The scheduler (`flask --app wsgi scheduler`): APScheduler 3 jobs in one foreground process.

Jobs:
- weekly digest, on DIGEST_SCHEDULE (cron, in TIMEZONE): poll feeds, compile, send. The digest
  of a run is keyed by its *period* (the ISO week of the fire time, "2026-W48", or the fire
  time itself when the schedule fires more than once a week), and Digest.period is unique:
  a run is never made twice, whatever restarts or second schedulers happen.
- feed polling every FEED_POLL_MINUTES.
- housekeeping every minute: the single-mail queue (mail_queue.flush) and sends that were
  interrupted or approved; and daily at 03:30 the retention purge (retention.purge).

Misfire policy: a run missed because the process was down (or busy) is made once when the
scheduler comes back within DIGEST_MISFIRE_GRACE_MINUTES (default 6 h) of the fire time;
later than that it is skipped (logged once), and the articles go into the next digest while
they are younger than DIGEST_MAX_AGE_DAYS. APScheduler's own misfire_grace_time covers a busy
process; the catch-up at start covers a process that was down (the in-memory job store
forgets past fire times). Every finished run is recorded (a "digest-run:<period>" row in the
lease table, whatever its outcome: sent, nothing new, draft, skipped), so a restart never makes
a period's run twice, not even one that found nothing new at the time.

With DIGEST_REQUIRE_APPROVAL the weekly run only compiles a draft; the housekeeping job sends
it once an admin has set it to "approved".
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from flask import Flask
from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError

from newsletter import delivery, digests, leases, privacy
from newsletter.admins import audit
from newsletter.digests import feeds
from newsletter.engine.clock import utcnow
from newsletter.extensions import db
from newsletter.inbound import poll
from newsletter.inbound.mailbox import MailboxError
from newsletter.mail import outbox
from newsletter.models import Digest, SchedulerLock
from newsletter.monitoring import heartbeat

log = logging.getLogger(__name__)

WEEKLY_JOB = "weekly-digest"
SCHEDULER_LEASE = "scheduler"
HOUSEKEEPING_SECONDS = 60
HEARTBEAT_SECONDS = 30  # its own job: a long send in the housekeeping job does not stop it
RETENTION_JOB = "retention"
RETENTION_HOUR = 3  # local time: the quiet hours, long before a morning digest


def digest_trigger(app: Flask) -> CronTrigger:
    return CronTrigger.from_crontab(app.config["DIGEST_SCHEDULE"], timezone=app.config["TIMEZONE"])


def misfire_grace(app: Flask) -> timedelta:
    return timedelta(minutes=app.config["DIGEST_MISFIRE_GRACE_MINUTES"])


def last_fire_time(trigger: CronTrigger, now: datetime, lookback: timedelta = timedelta(days=8)):
    """The latest time at or before `now` that the trigger fired (or would have), or None."""
    fire = trigger.get_next_fire_time(None, now - lookback)
    last = None
    while fire is not None and fire <= now:
        last = fire
        fire = trigger.get_next_fire_time(fire, fire + timedelta(seconds=1))
    return last


def period_for(trigger: CronTrigger, fire_time: datetime) -> str:
    """The unique key of a run: its ISO week, or its local time if the schedule fires more often."""
    local = fire_time.astimezone(trigger.timezone)
    year, week, _ = local.isocalendar()
    following = trigger.get_next_fire_time(fire_time, fire_time + timedelta(seconds=1))
    previous = last_fire_time(trigger, fire_time - timedelta(seconds=1))
    for other in (following, previous):  # both: the last run of a week must not get the week's key
        if other is not None and other.astimezone(trigger.timezone).isocalendar()[:2] == (year, week):
            return local.strftime("%Y-%m-%dT%H:%M")
    return f"{year}-W{week:02d}"


RUN_PREFIX = "digest-run:"
RUN_RECORD_DAYS = 60  # a run's record is kept this long (a period is never seen again after it)


def run_made(period: str) -> bool:
    """Whether the run of this period was made already (a digest, or a recorded outcome)."""
    if db.session.execute(select(Digest.id).where(Digest.period == period)).first():
        return True
    return db.session.execute(
        select(SchedulerLock.name).where(SchedulerLock.name == RUN_PREFIX + period)).first() is not None


def record_run(period: str, outcome: str, now: datetime | None = None) -> None:
    """Record that the run of `period` is over (outcome: sent, nothing-new, draft, skipped)."""
    now = now or utcnow()
    table = SchedulerLock.__table__
    db.session.commit()
    with db.engine.begin() as conn:
        conn.execute(delete(table).where(table.c.name.startswith(RUN_PREFIX, autoescape=True),
                                         table.c.expires_at < now))
    try:
        with db.engine.begin() as conn:
            conn.execute(insert(table).values(name=RUN_PREFIX + period, holder=outcome[:128],
                                              expires_at=now + timedelta(days=RUN_RECORD_DAYS)))
    except IntegrityError:  # another scheduler recorded it first
        pass


def weekly_job(app: Flask, *, scheduled: datetime | None = None,
               now: datetime | None = None) -> Digest | None:
    """The weekly run for the fire time `scheduled` (default: the latest one): poll, compile, send."""
    with app.app_context():
        now = now or utcnow()
        trigger = digest_trigger(app)
        fire = scheduled or last_fire_time(trigger, now) or now
        if now - fire > misfire_grace(app):
            log.warning("digest run of %s missed by more than the grace time: skipped", fire.isoformat())
            heartbeat.record_action("digest", "skipped", fire.isoformat())
            return None
        period = period_for(trigger, fire)
        if run_made(period):
            log.info("digest run of %s made already: nothing to do", period)
            return None
        feeds.fetch_all_feeds(now)
        if app.config["DIGEST_REQUIRE_APPROVAL"]:
            # compile → draft → wait: an editor's approval (admin) sends it; an editor's
            # earlier draft (with its intro) is adopted for this period instead of a second one.
            digest = digests.prepare_digest(now, period=period)
            if digest is not None and digest.status == "draft":
                log.info("digest %s of %s is a draft waiting for an admin's approval", digest.id, period)
        else:
            digest = delivery.send_now(now, period=period)
        if digest is None:
            log.info("no digest for %s: nothing new (or made by another process)", period)
        elif digest.status != "draft":
            log.info("digest %s of %s: %s, %d recipients", digest.id, period, digest.status,
                     digest.recipient_count)
        outcome = "nothing-new" if digest is None else digest.status
        record_run(period, outcome, now)
        heartbeat.record_action("digest", outcome, period if digest is None else f"{period} #{digest.id}")
        if digest is not None:  # loaded again, so callers may read it after the app context ends
            db.session.refresh(digest)
        return digest


def missed_run(app: Flask, now: datetime | None = None) -> datetime | None:
    """The fire time of a run that was missed and is still within the grace time, if any."""
    with app.app_context():
        now = now or utcnow()
        trigger = digest_trigger(app)
        fire = last_fire_time(trigger, now)
        if fire is None:
            return None
        period = period_for(trigger, fire)
        if run_made(period):
            return None
        if now - fire > misfire_grace(app):
            if _never_ran():  # a new installation: nothing was missed
                log.info("first start: the next digest run is the first one")
            else:
                log.warning("the digest run of %s (%s) was missed by more than DIGEST_MISFIRE_GRACE_MINUTES "
                            "(%s): skipped; its articles go into the next digest",
                            period, fire.isoformat(), misfire_grace(app))
            record_run(period, "skipped", now)
            return None
        return fire


def _never_ran() -> bool:
    """No digest and no recorded run: the scheduler (and `digest send`) never ran here."""
    if db.session.execute(select(Digest.id).limit(1)).first():
        return False
    return db.session.execute(
        select(SchedulerLock.name).where(SchedulerLock.name.startswith(RUN_PREFIX, autoescape=True)).limit(1)
    ).first() is None


def poll_feeds_job(app: Flask) -> None:
    with app.app_context():
        results = feeds.fetch_all_feeds()
        added, failed = sum(r.added for r in results), sum(not r.ok for r in results)
        log.info("feeds polled: %d new articles, %d failed feeds", added, failed)
        heartbeat.record_action("feeds", "error" if failed else "ok",
                                f"{len(results)}|{added}|{failed}")  # feeds|new articles|failed


def bounce_mailbox_job(app: Flask) -> None:
    """Record the bounces, complaints and unsubscribes in BOUNCE_MAILBOX_URL."""
    with app.app_context():
        try:
            poll.poll_mailbox()
        except MailboxError as exc:  # the server is down or refused us: next time
            log.warning("bounce mailbox not read: %s", exc)


def housekeeping_job(app: Flask) -> None:
    """Flush the single-mail queue; finish interrupted sends and send approved digests."""
    with app.app_context():
        outbox.flush()
        if delivery.workers_send():
            return  # the Celery workers own every send: a worker that starts resumes unfinished ones
        with leases.send_lease(wait=False) as held:
            if not held:  # a send is running in another process (or job): it finishes its own
                return
            resumed = delivery.resume_interrupted()
            finished = delivery.finish_interrupted_sends()
            for digest_id in {*resumed, *finished}:
                heartbeat.record_action("send", "resumed", f"#{digest_id}")


def heartbeat_job(app: Flask, instance: str) -> None:
    """Tell the dashboard, /readyz and the other processes that this scheduler is alive."""
    with app.app_context():
        heartbeat.beat(instance, "active")


def retention_job(app: Flask) -> None:
    """The daily housekeeping of personal data: the retention rules, applied in batches."""
    with app.app_context():
        report = privacy.purge()
        if report.pending or report.inactive or report.deliveries:
            audit.record("retention_purged", "retention", actor="scheduler", pending=report.pending,
                         inactive=report.inactive, deliveries=report.deliveries)
        heartbeat.record_action("purge", "ok", f"{report.pending}|{report.inactive}|{report.deliveries}")


def build_scheduler(app: Flask, scheduler: BaseScheduler | None = None,
                    now: datetime | None = None, instance: str | None = None) -> BaseScheduler:
    """The scheduler with its jobs (and a catch-up run if a weekly run was missed)."""
    scheduler = scheduler or BlockingScheduler(timezone=ZoneInfo(app.config["TIMEZONE"]))
    scheduler.add_job(heartbeat_job, IntervalTrigger(seconds=HEARTBEAT_SECONDS), args=[app, instance or
                      heartbeat.new_instance()], id="heartbeat", name="heartbeat", coalesce=True,
                      max_instances=1, misfire_grace_time=None, replace_existing=True,
                      next_run_time=datetime.now(ZoneInfo(app.config["TIMEZONE"])))
    grace = int(misfire_grace(app).total_seconds())
    # The polling and housekeeping jobs run late rather than not at all (APScheduler's default
    # grace is one second: a busy or suspended process would silently skip them).
    scheduler.add_job(weekly_job, digest_trigger(app), args=[app], id=WEEKLY_JOB, name="weekly digest",
                      coalesce=True, max_instances=1, misfire_grace_time=grace, replace_existing=True)
    if app.config["FEED_POLL_MINUTES"] > 0:
        scheduler.add_job(poll_feeds_job, IntervalTrigger(minutes=app.config["FEED_POLL_MINUTES"]),
                          args=[app], id="poll-feeds", name="poll feeds", coalesce=True, max_instances=1,
                          misfire_grace_time=None, replace_existing=True)
    if app.config["BOUNCE_MAILBOX_URL"] and app.config["BOUNCE_MAILBOX_MINUTES"] > 0:
        scheduler.add_job(bounce_mailbox_job, IntervalTrigger(minutes=app.config["BOUNCE_MAILBOX_MINUTES"]),
                          args=[app], id="bounce-mailbox", name="read the bounce mailbox", coalesce=True,
                          max_instances=1, misfire_grace_time=None, replace_existing=True)
    scheduler.add_job(housekeeping_job, IntervalTrigger(seconds=HOUSEKEEPING_SECONDS), args=[app],
                      id="housekeeping", name="housekeeping", coalesce=True, max_instances=1,
                      misfire_grace_time=None, replace_existing=True)
    daily = CronTrigger(hour=RETENTION_HOUR, minute=30, timezone=app.config["TIMEZONE"])
    scheduler.add_job(retention_job, daily, args=[app], id=RETENTION_JOB, name="retention purge",
                      coalesce=True, max_instances=1, misfire_grace_time=None, replace_existing=True)
    missed = missed_run(app, now)
    if missed is not None:
        log.warning("the digest run of %s was missed; making it now", missed.isoformat())
        scheduler.add_job(weekly_job, args=[app], kwargs={"scheduled": missed}, id=f"{WEEKLY_JOB}-catch-up",
                          name="missed weekly digest", max_instances=1, misfire_grace_time=grace,
                          replace_existing=True)
    return scheduler


def run(app: Flask) -> None:
    """Run the scheduler in the foreground until stopped. A second one started by mistake waits
    as a standby until the first stops (or dies and its lease runs out)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    instance = heartbeat.new_instance()
    with app.app_context(), ExitStack() as stack:
        stop_standby = stack.enter_context(_standby_beats(app, instance))
        stack.enter_context(leases.lease(SCHEDULER_LEASE, wait=True, poll=10))
        stop_standby()  # the lease is ours: from now on the heartbeat job says "active"
        scheduler = build_scheduler(app, instance=instance)
        log.info("scheduler started: digest on %r (%s), feeds every %s min, misfire grace %s",
                 app.config["DIGEST_SCHEDULE"], app.config["TIMEZONE"], app.config["FEED_POLL_MINUTES"],
                 misfire_grace(app))
        try:
            scheduler.start()
        except (KeyboardInterrupt, SystemExit):
            log.info("scheduler stopping")
            delivery.stop_all_sends()  # a send in a job finishes its messages in flight, then stops
        finally:
            if scheduler.running:
                scheduler.shutdown(wait=True)
            heartbeat.stopped(instance)


@contextmanager
def _standby_beats(app: Flask, instance: str) -> Iterator[Callable[[], None]]:
    """While this scheduler waits for the lease, it is seen as a standby (every HEARTBEAT_SECONDS);
    yields the function that stops that."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            with app.app_context():
                try:
                    heartbeat.beat(instance, "standby")
                except Exception:  # noqa: BLE001  (a missed beat is retried)
                    log.exception("could not record the standby heartbeat")
            stop.wait(HEARTBEAT_SECONDS)

    thread = threading.Thread(target=beat, name="standby-heartbeat", daemon=True)
    thread.start()

    def stop_beats() -> None:
        stop.set()
        thread.join()

    try:
        yield stop_beats
    finally:
        stop_beats()
