"""The scheduler: the cron trigger in TIMEZONE (DST weeks too), the misfire policy, feed polling,
and "nothing new" — with a real BackgroundScheduler under a frozen clock, and the job functions
called with their scheduled times."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import time_machine
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from digest_helpers import NOW, digest_count, run_scheduler_at, subscriber

from newsletter import scheduler
from newsletter.digests import articles, feeds
from newsletter.extensions import db
from newsletter.models import Digest

STOCKHOLM = ZoneInfo("Europe/Stockholm")
FIRE = NOW  # Monday 23 November 2026, 07:00 in Stockholm (06:00 UTC)
GRACE = timedelta(minutes=360)  # the default DIGEST_MISFIRE_GRACE_MINUTES


def _digest_summary() -> tuple[str, int]:
    digest = db.session.execute(db.select(Digest)).scalar_one()
    return digest.status, len(digest.articles)


def _fires(trigger: CronTrigger, start: datetime, count: int) -> list[datetime]:
    fires, fire = [], trigger.get_next_fire_time(None, start)
    while len(fires) < count:
        fires.append(fire)
        fire = trigger.get_next_fire_time(fire, fire + timedelta(seconds=1))
    return fires


def test_cron_fires_monday_0700_stockholm_also_in_dst_weeks(app):
    with app.app_context():
        trigger = scheduler.digest_trigger(app)
    spring = _fires(trigger, datetime(2026, 3, 17, tzinfo=UTC), 3)
    autumn = _fires(trigger, datetime(2026, 10, 13, tzinfo=UTC), 3)
    for fire in spring + autumn:
        local = fire.astimezone(STOCKHOLM)
        assert (local.weekday(), local.hour, local.minute) == (0, 7, 0)
    # Summer time starts on Sunday 29 March and ends on Sunday 25 October 2026.
    assert [f.astimezone(UTC).hour for f in spring] == [6, 5, 5]  # 23 Mar CET, 30 Mar CEST, 6 Apr CEST
    assert [f.astimezone(UTC).hour for f in autumn] == [5, 6, 6]  # 19 Oct CEST, 26 Oct CET, 2 Nov CET
    assert [scheduler.period_for(trigger, f) for f in spring] == ["2026-W13", "2026-W14", "2026-W15"]
    # A schedule that fires more than once a week is keyed by its local fire time instead.
    daily = CronTrigger.from_crontab("30 6 * * *", timezone=STOCKHOLM)
    assert scheduler.period_for(daily, datetime(2026, 3, 29, 4, 30, tzinfo=UTC)) == "2026-03-29T06:30"


def test_the_jobs_of_the_scheduler(make_app, caplog):
    app = make_app(DIGEST_SCHEDULE="15 8 * * fri", FEED_POLL_MINUTES=20, TIMEZONE="Europe/Helsinki")
    with caplog.at_level(logging.INFO, logger="newsletter.scheduler"):
        built = scheduler.build_scheduler(app, BackgroundScheduler(timezone=STOCKHOLM), now=FIRE)
    # A new installation missed nothing: no warning about last Friday's run.
    assert "first start" in caplog.text and not [r for r in caplog.records if r.levelno >= logging.WARNING]
    jobs = {job.id: job for job in built.get_jobs()}
    # Nothing missed: no catch-up run.
    assert set(jobs) == {"weekly-digest", "poll-feeds", "housekeeping", "retention", "heartbeat"}
    weekly = jobs["weekly-digest"]
    assert str(weekly.trigger.timezone) == "Europe/Helsinki"
    fields = {f.name: str(f) for f in weekly.trigger.fields}
    assert (fields["day_of_week"], fields["hour"], fields["minute"], fields["day"]) == ("fri", "8", "15", "*")
    assert weekly.misfire_grace_time == 6 * 3600 and weekly.coalesce and weekly.max_instances == 1
    poll = jobs["poll-feeds"]
    assert isinstance(poll.trigger, IntervalTrigger) and poll.trigger.interval == timedelta(minutes=20)
    # Late rather than never (APScheduler skips a run more than 1 s late by default).
    assert poll.misfire_grace_time is None and jobs["housekeeping"].misfire_grace_time is None
    # FEED_POLL_MINUTES=0: feeds are polled only before each digest.
    quiet = make_app(FEED_POLL_MINUTES=0)
    quiet_jobs = scheduler.build_scheduler(quiet, BackgroundScheduler()).get_jobs()
    assert "poll-feeds" not in {job.id for job in quiet_jobs}


def test_down_at_fire_time_back_within_grace_sends_once_even_after_two_restarts(smtp_app, smtp_server):
    with smtp_app.app_context():
        articles.add_article(title="Veckans nyhet", url="https://norrsken.example/v/",
                             published=FIRE - timedelta(days=1))
        subscriber("a@example.se")
        subscriber("b@example.com", language="en")

    # Down at 07:00, back at 09:00: the catch-up run sends the week's digest.
    assert run_scheduler_at(smtp_app, FIRE + timedelta(hours=2)) is True
    assert sorted(m["To"] for m in smtp_server.messages()) == ["a@example.se", "b@example.com"]
    # Restarted twice more within the grace time: nothing is sent again.
    assert run_scheduler_at(smtp_app, FIRE + timedelta(hours=3)) is False
    assert run_scheduler_at(smtp_app, FIRE + GRACE - timedelta(minutes=1)) is False
    # Nor by the cron job of the same period (a second scheduler started by mistake).
    assert scheduler.weekly_job(smtp_app, scheduled=FIRE, now=FIRE + timedelta(hours=4)) is None
    assert len(smtp_server.messages()) == 2
    with smtp_app.app_context():
        assert digest_count() == 1
        assert db.session.execute(db.text("select period from digest")).scalar_one() == "2026-W48"


def test_back_after_the_grace_time_skips_with_a_log_and_the_next_digest_has_the_articles(
        make_app, smtp_server, caplog):
    # The default DIGEST_MAX_AGE_DAYS (7): the next digest reaches back to the previous one.
    app = make_app(MAIL_URL=smtp_server.url)
    last_week = FIRE - timedelta(days=7)
    with app.app_context():
        articles.add_article(title="Förra veckans nyhet", url="https://norrsken.example/f/",
                             published=last_week - timedelta(days=1))
    assert scheduler.weekly_job(app, scheduled=last_week, now=last_week) is not None  # W47 sent
    with app.app_context():
        articles.add_article(title="Från den missade veckan", url="https://norrsken.example/m/",
                             published=FIRE - timedelta(days=2))
        subscriber("a@example.se")
    caplog.set_level(logging.INFO, logger="newsletter.scheduler")
    assert run_scheduler_at(app, FIRE + GRACE + timedelta(minutes=1)) is False
    skipped = [r for r in caplog.records if "missed by more than" in r.getMessage()]
    assert len(skipped) == 1 and skipped[0].levelno == logging.WARNING
    assert "2026-W48" in skipped[0].getMessage()
    assert run_scheduler_at(app, FIRE + timedelta(hours=9)) is False  # logged once, not at every restart
    assert len([r for r in caplog.records if "missed by more than" in r.getMessage()]) == 1
    assert smtp_server.messages() == []

    with app.app_context():
        articles.add_article(title="Från veckan efter", url="https://norrsken.example/e/",
                             published=FIRE + timedelta(days=3))
    next_week = FIRE + timedelta(days=7)
    assert scheduler.weekly_job(app, scheduled=next_week, now=next_week) is not None
    with app.app_context():
        periods = db.session.execute(db.text("select period from digest order by id")).scalars().all()
        assert periods == ["2026-W47", "2026-W49"]
    text = smtp_server.messages(to="a@example.se")[0].get_body(("plain",)).get_content()
    assert "Från den missade veckan" in text and "Från veckan efter" in text
    assert "Förra veckans nyhet" not in text
    assert len(smtp_server.messages()) == 1


def test_missed_run_in_a_dst_week_uses_local_time(app, caplog):
    fire = datetime(2026, 3, 30, 5, 0, tzinfo=UTC)  # Monday 07:00 CEST, the day after the change
    assert scheduler.missed_run(app, fire - timedelta(minutes=1)) is None  # last week's: long gone
    assert scheduler.missed_run(app, fire + timedelta(hours=5, minutes=59)) == fire
    with caplog.at_level(logging.WARNING, logger="newsletter.scheduler"):
        assert scheduler.missed_run(app, fire + timedelta(hours=6, minutes=1)) is None
    assert "2026-W14" in caplog.text


def test_nothing_new_logs_a_skip_makes_no_digest_and_is_not_run_again(smtp_app, smtp_server, caplog):
    with smtp_app.app_context():
        subscriber("a@example.se")
    caplog.set_level(logging.INFO, logger="newsletter.scheduler")
    assert scheduler.weekly_job(smtp_app, scheduled=FIRE, now=FIRE) is None
    assert "no digest for 2026-W48: nothing new" in caplog.text
    with smtp_app.app_context():
        assert digest_count() == 0
        # An article that arrives after the run is for next week: a restart within the grace time
        # does not send it off-schedule.
        articles.add_article(title="Sen nyhet", url="https://norrsken.example/sen/", published=FIRE)
    assert run_scheduler_at(smtp_app, FIRE + timedelta(hours=1)) is False
    assert scheduler.weekly_job(smtp_app, scheduled=FIRE, now=FIRE + timedelta(hours=1)) is None
    assert smtp_server.messages() == []
    next_week = FIRE + timedelta(days=7)
    assert scheduler.weekly_job(smtp_app, scheduled=next_week, now=next_week) is not None
    assert len(smtp_server.messages()) == 1


def test_feed_polling_job_and_the_weekly_run_poll_the_feeds(smtp_app, smtp_server, feed_server, caplog):
    with smtp_app.app_context():
        feeds.add_feed(feed_server.url("/nyheter.rss"))
        feeds.add_feed(feed_server.url("/blogg.atom"))
        subscriber("a@example.se")
    caplog.set_level(logging.INFO, logger="newsletter.scheduler")
    polled: list = []
    with time_machine.travel(FIRE - timedelta(hours=3), tick=True) as clock:
        background = BackgroundScheduler(timezone=STOCKHOLM)
        background.add_listener(lambda event: event.job_id == "poll-feeds" and polled.append(event),
                                EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
        scheduler.build_scheduler(smtp_app, background)
        background.start()
        try:
            time.sleep(0.3)
            assert polled == []  # not at start: FEED_POLL_MINUTES (60) after it
            clock.shift(timedelta(minutes=61))
            background.wakeup()
            deadline = time.monotonic() + 20
            while not polled and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            background.shutdown(wait=True)
    assert len(polled) == 1 and polled[0].exception is None, polled
    assert "feeds polled: 7 new articles, 0 failed feeds" in caplog.text
    with smtp_app.app_context():
        assert len(articles.recent_articles(days=3650)) == 7

    # The weekly run polls again first (a conditional GET: nothing changed) and sends.
    polled = len(feed_server.requests)
    assert scheduler.weekly_job(smtp_app, scheduled=FIRE, now=FIRE) is not None
    assert len(feed_server.requests) == polled + 2
    with smtp_app.app_context():
        assert _digest_summary() == ("done", 6)
    assert len(smtp_server.messages()) == 1


def test_the_weekly_run_polls_the_feeds_itself(smtp_app, smtp_server, feed_server):
    with smtp_app.app_context():
        subscriber("a@example.se")
        feeds.add_feed(feed_server.url("/nyheter.rss"))  # registered, never polled
        feeds.add_feed(feed_server.url("/blogg.atom"))
    assert scheduler.weekly_job(smtp_app, scheduled=FIRE, now=FIRE) is not None
    with smtp_app.app_context():
        assert _digest_summary() == ("done", 6)
    assert len(smtp_server.messages()) == 1
