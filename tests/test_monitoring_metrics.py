"""/metrics: off by default, a bearer token, the named series, values that move; and the same
under Gunicorn with two workers (prometheus_client's multiprocess mode)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from delivery_helpers import seed
from prometheus_client.parser import text_string_to_metric_families

from newsletter import delivery
from newsletter.digests import feeds as articles
from newsletter.extensions import db

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "metrics-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def samples(text: str) -> dict[tuple, float]:
    """{(name, sorted labels): value} of an exposition."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text: str, name: str, **labels) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


def scrape(client) -> str:
    response = client.get("/metrics", headers=AUTH)
    assert response.status_code == 200
    return response.get_data(as_text=True)


def test_metrics_are_off_by_default_and_need_the_token(app):
    client = app.test_client()
    assert client.get("/metrics").status_code == 404
    app.config["METRICS_TOKEN"] = TOKEN
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics", headers=AUTH).status_code == 200


def test_the_series_move_with_a_signup_a_feed_poll_and_a_send(smtp_app, feed_server):
    from subs_helpers import signup

    smtp_app.config["METRICS_TOKEN"] = TOKEN
    client = smtp_app.test_client()
    before = scrape(client)
    for name in ("newsletter_http_requests_total", "newsletter_http_request_duration_seconds_bucket",
                 "newsletter_mail_queue_depth", "newsletter_mail_queue_oldest_seconds",
                 "newsletter_scheduler_heartbeat_age_seconds", "newsletter_schedulers"):
        assert any(key[0] == name for key in samples(before)), name
    assert signup(client, "anna@example.se").status_code in (200, 302, 303)
    with smtp_app.app_context():
        feed = articles.add_feed(feed_server.url("/nyheter.rss"))
        articles.fetch_feed(feed)
        digest_id = seed(7)
        delivery.send_digest(digest_id)
        db.session.remove()
    after = scrape(client)
    assert value(after, "newsletter_subscriber_events_total", event="signup") == \
        value(before, "newsletter_subscriber_events_total", event="signup") + 1
    assert value(after, "newsletter_feed_polls_total", outcome="ok") >= \
        value(before, "newsletter_feed_polls_total", outcome="ok") + 1
    assert value(after, "newsletter_send_messages", digest=str(digest_id), state="sent") == 7
    assert value(after, "newsletter_send_progress_ratio", digest=str(digest_id), status="done") == 1
    assert value(after, "newsletter_mail_queue_depth") == 1  # anna's confirmation, waiting
    posts = [value(text, "newsletter_http_requests_total", method="POST", route="/subscribe", status="200")
             for text in (before, after)]
    assert posts[1] == posts[0] + 1
    assert "anna@example.se" not in after


def _wait_for(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=10)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer")


@pytest.mark.slow
def test_gunicorn_with_two_workers_adds_up_their_counters(app, tmp_path):
    from conftest import free_port

    port = free_port()
    metrics_dir = tmp_path / "metrics"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("PROMETHEUS", "LOG_"))},
           "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"], "SECRET_KEY": "k" * 40,
           "INSTANCE_PATH": app.instance_path, "MAIL_URL": f"outbox://{tmp_path / 'outbox'}",
           "MAIL_QUEUE_THREAD": "0", "SIGNUP_MIN_SECONDS": "0", "METRICS_TOKEN": TOKEN,
           "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "LOG_FORMAT": "json", "BROKER_URL": "",
           "SIGNUP_RATE_PER_IP": "1000 per minute", "FEED_URLS": ""}
    log_path = tmp_path / "gunicorn.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py", "-w", "2",
             "-b", f"127.0.0.1:{port}", "wsgi:app"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(base + "/healthz")
        healthz = 1  # _wait_for's
        while healthz < 40 or (len(list(metrics_dir.glob("counter_*.db"))) < 2 and healthz < 1000):
            # A new connection each time: the two workers take turns accepting, until both counted.
            response = requests.get(base + "/healthz", headers={"Connection": "close"}, timeout=30)
            assert response.status_code == 200
            healthz += 1
        for i in range(3):
            started = requests.get(base + "/subscribe/start", timeout=30).json()["started"]
            body = {"email": f"p{i}@example.se", "started": started, "topics": ["nyheter"]}
            response = requests.post(base + "/subscribe", json=body,
                                     headers={"Accept": "application/json", "X-Request-ID": f"gunicorn-{i}"},
                                     timeout=30)
            assert response.status_code == 200, response.text
            assert response.headers["X-Request-ID"] == f"gunicorn-{i}"
        scrapes = [requests.get(base + "/metrics", headers={**AUTH, "Connection": "close"}, timeout=30).text
                   for _ in range(6)]
        files = {p.name.rsplit("_", 1)[-1] for p in metrics_dir.glob("counter_*.db")}
        assert len(files) == 2, files  # both workers counted something
        for text in scrapes:  # whichever worker answers, it reports both workers' counts
            assert value(text, "newsletter_http_requests_total", method="GET", route="/healthz",
                         status="200") == healthz
            assert value(text, "newsletter_subscriber_events_total", event="signup") == 3
            assert value(text, "newsletter_http_requests_total", method="POST", route="/subscribe",
                         status="200") == 3
    finally:
        server.terminate()
        server.wait(timeout=30)
    records = [json.loads(line) for line in log_path.read_text().splitlines()]  # Gunicorn's own too
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert not re.search(r"p\d@example\.se", log_path.read_text())
