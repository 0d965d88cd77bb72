"""The scheduler is visible: its heartbeat and last actions on the dashboard, the warning when it
is gone (or doubled), and the admins' one email per outage and one when it is back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from admin_helpers import logged_in, make_admin
from sqlalchemy import select

from config import TestConfig
from newsletter import create_app, scheduler
from newsletter.extensions import db
from newsletter.models import SchedulerAction, SchedulerHeartbeat
from newsletter.monitoring import alerts, heartbeat


def soon() -> datetime:
    """A moment just after the test's login (a page seen before one's login is a logged-out page)."""
    return datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=1)


def beat(app, at: datetime, instance: str = "host:1:aa", role: str = "active") -> None:
    with app.app_context():
        heartbeat.beat(instance, role, now=at)


@pytest.mark.parametrize("locale, fresh_text, stale_text", [
    ("sv", "Schemaläggaren sågs senast för 30 s sedan.", "verkar ha stannat"),
    ("en", "Scheduler last seen 30 s ago.", "it seems to have stopped"),
])
def test_dashboard_warns_when_the_heartbeat_is_stale_and_not_when_it_is_fresh(app, locale, fresh_text,
                                                                                stale_text):
    client = logged_in(app)
    t0 = soon()
    headers = {"Accept-Language": locale}
    with time_machine.travel(t0, tick=False):
        page = client.get("/admin/", headers=headers).get_data(as_text=True)
        assert 'id="scheduler"' in page and 'role="alert"' in page  # never seen: a warning too
    beat(app, t0)
    with time_machine.travel(t0 + timedelta(seconds=30), tick=False):
        page = client.get("/admin/", headers=headers).get_data(as_text=True)
    section = page[page.index('id="scheduler"'):page.index("</section>", page.index('id="scheduler"'))]
    assert fresh_text in section or fresh_text.replace("30 s", "30\u00a0s") in section, section
    assert 'role="alert"' not in section
    with time_machine.travel(t0 + timedelta(minutes=10), tick=False):
        page = client.get("/admin/", headers=headers).get_data(as_text=True)
    section = page[page.index('id="scheduler"'):page.index("</section>", page.index('id="scheduler"'))]
    assert 'role="alert"' in section and stale_text in section, section
    beat(app, t0 + timedelta(minutes=10))  # back: the warning goes away
    with time_machine.travel(t0 + timedelta(minutes=10, seconds=5), tick=False):
        page = client.get("/admin/", headers=headers).get_data(as_text=True)
    section = page[page.index('id="scheduler"'):page.index("</section>", page.index('id="scheduler"'))]
    assert 'role="alert"' not in section


def test_dashboard_warns_when_two_schedulers_run_the_jobs_and_shows_what_they_did(app):
    client = logged_in(app)
    t0 = soon()
    beat(app, t0, "host-a:1:aa")
    beat(app, t0 + timedelta(seconds=5), "host-b:2:bb")
    beat(app, t0 + timedelta(seconds=5), "host-c:3:cc", role="standby")
    with app.app_context():
        heartbeat.record_action("feeds", "ok", "2|5|0", now=t0)
        heartbeat.record_action("digest", "nothing-new", "2026-W49", now=t0)
    with time_machine.travel(t0 + timedelta(seconds=20), tick=False):
        page = client.get("/admin/", headers={"Accept-Language": "en"}).get_data(as_text=True)
    assert "2 schedulers are running the jobs at the same time" in page
    assert "A standby scheduler is waiting to take over." in page
    assert "2 feeds, 5 new articles, 0 failed" in page and "2026-W49" in page


def test_the_heartbeat_job_and_the_jobs_record_what_the_scheduler_did(app, feed_server):
    app.config["FEED_URLS"] = [feed_server.url("/nyheter.rss")]
    scheduler.heartbeat_job(app, "host:9:zz")
    scheduler.poll_feeds_job(app)
    with app.app_context():
        row = db.session.get(SchedulerHeartbeat, "host:9:zz")
        assert row is not None and row.role == "active"
        actions = db.session.execute(select(SchedulerAction)).scalars().all()
        assert [(a.kind, a.outcome) for a in actions] == [("feeds", "ok")]
        assert actions[0].detail.split("|")[0] == "1" and int(actions[0].detail.split("|")[1]) > 0
        status = heartbeat.scheduler_status(actions=5)
        assert status.ok and status.active == 1 and status.age_seconds is not None
        heartbeat.stopped("host:9:zz")
        status = heartbeat.scheduler_status()
        assert status.active == 0 and not status.never_seen and status.last_seen is not None


def test_the_admins_get_one_email_per_outage_and_one_when_it_is_back(smtp_app, smtp_server, app_config):
    t0 = soon()
    make_admin(smtp_app, "boss@example.org")
    make_admin(smtp_app, "chef@example.org")
    other_process = create_app({**app_config, "MAIL_URL": smtp_server.url}, config_class=TestConfig)
    beat(smtp_app, t0)
    with smtp_app.app_context():
        assert alerts.check_scheduler(t0 + timedelta(minutes=5)) is None  # stale, not yet for an email
        assert alerts.check_scheduler(t0 + timedelta(minutes=16)) == "down"
        assert alerts.check_scheduler(t0 + timedelta(minutes=17)) is None
    with other_process.app_context():  # another web worker noticing the same outage sends nothing
        assert alerts.check_scheduler(t0 + timedelta(minutes=18)) is None
    down = smtp_server.messages()
    assert sorted(m["To"] for m in down) == ["boss@example.org", "chef@example.org"]
    assert all("schemaläggare" in m["Subject"].lower() for m in down), [m["Subject"] for m in down]
    beat(smtp_app, t0 + timedelta(minutes=30))
    with other_process.app_context():
        assert alerts.check_scheduler(t0 + timedelta(minutes=30, seconds=10)) == "back"
    with smtp_app.app_context():
        assert alerts.check_scheduler(t0 + timedelta(minutes=30, seconds=20)) is None
    assert len(smtp_server.messages()) == 4
    # A second outage is a new one: one more email.
    with smtp_app.app_context():
        assert alerts.check_scheduler(t0 + timedelta(minutes=50)) == "down"
    assert len(smtp_server.messages()) == 6
    with other_process.app_context():
        db.session.remove()
        db.engine.dispose()


def test_a_deployment_whose_scheduler_never_ran_sends_no_email(smtp_app, smtp_server):
    t0 = soon()
    make_admin(smtp_app)
    with smtp_app.app_context():
        assert alerts.check_scheduler(t0) is None
    assert smtp_server.messages() == []


def test_requests_notice_the_outage_at_most_once_a_minute(smtp_app, smtp_server):
    t0 = soon()
    make_admin(smtp_app)
    smtp_app.config["SCHEDULER_CHECK_IN_REQUESTS"] = True
    beat(smtp_app, t0)
    client = smtp_app.test_client()
    with time_machine.travel(t0 + timedelta(minutes=20), tick=False):
        for _ in range(3):
            assert client.get("/healthz").status_code == 200
    assert len(smtp_server.messages()) == 1


def _roles(app) -> dict[str, str]:
    with app.app_context():
        try:
            rows = db.session.execute(select(SchedulerHeartbeat.instance, SchedulerHeartbeat.role))
            return dict(rows.all())
        finally:
            db.session.remove()


@pytest.mark.slow
def test_a_running_scheduler_beats_as_active_a_second_one_as_standby_and_a_stopped_one_says_so(app, tmp_path):
    import signal

    from delivery_helpers import wait_for
    from digest_helpers import CliProcess, cli_env

    env = cli_env(app.config["SQLALCHEMY_DATABASE_URI"], FEED_POLL_MINUTES="0")
    first = CliProcess(["scheduler"], env, tmp_path / "one")
    try:
        assert wait_for(lambda: list(_roles(app).values()) == ["active"], 60), first.output
        second = CliProcess(["scheduler"], env, tmp_path / "two")
        try:
            assert wait_for(lambda: sorted(_roles(app).values()) == ["active", "standby"], 60), second.output
            with app.app_context():
                status = heartbeat.scheduler_status()
                assert status.ok and status.active == 1 and status.standby == 1
            first.process.send_signal(signal.SIGTERM)
            assert first.finish(60) == 0
            # The standby takes over (within the lease's poll); the stopped one is seen as stopped.
            assert wait_for(lambda: sorted(_roles(app).values()) == ["active", "stopped"], 90), second.output
        finally:
            second.process.send_signal(signal.SIGTERM)
            second.finish(60)
        assert wait_for(lambda: sorted(_roles(app).values()) == ["stopped", "stopped"], 10)
    finally:
        if first.process.poll() is None:
            first.process.kill()
            first.finish(10)
