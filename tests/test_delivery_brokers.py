"""With BROKER_URL set every send goes to the Celery workers, on both brokers the README names
(Redis and RabbitMQ, real servers on 127.0.0.1): the scheduler's weekly run and `digest send`
hand the send over, and the process that sends is the worker. The processes that hand it over
are given an SMTP server that does not exist: had they sent a single message, it would fail."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from delivery_helpers import ROOT, cli_env, digest_status, ledger, wait_for
from kombu import Connection
from sqlalchemy import insert, select

from newsletter import scheduler
from newsletter.extensions import db
from newsletter.models import Article, Digest, Subscriber, new_uid, utcnow

CELERY = str(Path(sys.executable).with_name("celery"))
FLASK = str(Path(sys.executable).with_name("flask"))
NOWHERE = "smtp://127.0.0.1:9"  # the discard port: nothing listens there
N = 120
SETTINGS = {"SEND_CONNECTIONS": 2, "SEND_BATCH_SIZE": 50, "SEND_POLL_SECONDS": 0.2, "SEND_PROCESSES": 1}
BROKERS = {
    "redis": "redis://127.0.0.1:6379/13",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672//",
}


@pytest.fixture(params=sorted(BROKERS))
def broker(request):
    """A broker with a queue of this test's own; the queue is deleted afterwards."""
    url = BROKERS[request.param]
    queue = f"newsletter-test-{os.getpid()}-{secrets.token_hex(4)}"
    yield url, queue
    if url.startswith("redis"):
        client = redis.Redis.from_url(url)
        for key in client.scan_iter(f"*{queue}*"):
            client.delete(key)
        client.close()
    else:
        with Connection(url) as connection:
            connection.default_channel.queue_delete(queue)


@pytest.fixture
def handing_app(make_app, broker):
    """The app of the process that hands sends over: its own SMTP server does not exist."""
    url, queue = broker
    return make_app(MAIL_URL=NOWHERE, BROKER_URL=url, CELERY_QUEUE=queue, **SETTINGS)


@pytest.fixture
def worker(handing_app, smtp_server, tmp_path):
    """A real `celery worker` whose SMTP server is the test's."""
    log = tmp_path / "worker.log"
    env = cli_env(handing_app, BROKER_URL=handing_app.config["BROKER_URL"],
                  CELERY_QUEUE=handing_app.config["CELERY_QUEUE"], MAIL_URL=smtp_server.url, **SETTINGS)
    env["PYTHONPATH"] = str(ROOT)
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [CELERY, "-A", "newsletter.tasks", "worker", "-Q", handing_app.config["CELERY_QUEUE"],
             "-P", "threads", "-c", "2", "-l", "INFO", "--without-heartbeat", "--without-mingle",
             "--without-gossip", "-n", f"w-{secrets.token_hex(3)}@%h"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    process.log = log  # type: ignore[attr-defined]
    yield process
    process.kill()
    process.wait()


def _subscribers_and_an_article(n: int) -> None:
    """N confirmed subscribers p0@… and a new article: the coming digest goes to all of them."""
    now = utcnow()
    db.session.execute(insert(Subscriber), [
        {"email": f"p{i}@example.se", "status": "confirmed", "language": "sv", "uid": new_uid(), "name": "",
         "generation": 0, "created_at": now, "confirmed_at": now} for i in range(n)])
    key = new_uid()
    db.session.add(Article(source_id=key, title="Nytt bibliotek", url=f"https://example.se/a/{key}",
                           summary="Ett nytt bibliotek.", published_at=now - timedelta(hours=2)))
    db.session.commit()


def _everyone_once(smtp_server) -> None:
    received = [rcpt for message in smtp_server.messages() for rcpt in [message["To"]]]
    assert sorted(received) == sorted(f"p{i}@example.se" for i in range(N))


def test_the_weekly_run_of_the_scheduler_is_sent_by_a_worker(handing_app, smtp_server, worker):
    with handing_app.app_context():
        _subscribers_and_an_article(N)
        now = utcnow()
        digest = scheduler.weekly_job(handing_app, scheduled=now, now=now)
        assert digest is not None  # handed over at once: the scheduler does not wait for the send
        done = wait_for(lambda: digest_status(digest.id) == "done", 90, poll=0.2)
        assert done, worker.log.read_text()[-3000:]
        assert ledger(digest.id) == {"sent": N}
    _everyone_once(smtp_server)


def test_digest_send_hands_the_send_to_a_worker_and_follows_it_to_the_end(handing_app, smtp_server, worker):
    with handing_app.app_context():
        _subscribers_and_an_article(N)
    env = cli_env(handing_app, BROKER_URL=handing_app.config["BROKER_URL"],
                  CELERY_QUEUE=handing_app.config["CELERY_QUEUE"], SEND_PICKUP_SECONDS=60, **SETTINGS)
    result = subprocess.run([FLASK, "--app", "wsgi", "digest", "send"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr + worker.log.read_text()[-3000:]
    assert "(done)" in result.stdout and f"sent {N}" in result.stdout, result.stdout
    assert "waiting for a worker" in result.stderr or "sending" in result.stderr  # the progress it showed
    with handing_app.app_context():
        digest_id = db.session.execute(select(Digest.id)).scalar_one()
        assert ledger(digest_id) == {"sent": N}
    _everyone_once(smtp_server)


def test_digest_send_fails_when_no_worker_picks_the_send_up(handing_app):
    with handing_app.app_context():
        _subscribers_and_an_article(3)
    env = cli_env(handing_app, BROKER_URL=handing_app.config["BROKER_URL"],
                  CELERY_QUEUE=handing_app.config["CELERY_QUEUE"], SEND_PICKUP_SECONDS=1.5, **SETTINGS)
    result = subprocess.run([FLASK, "--app", "wsgi", "digest", "send"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "no worker started the send" in result.stderr and "SEND_PICKUP_SECONDS" in result.stderr
    with handing_app.app_context():
        digest = db.session.execute(select(Digest)).scalar_one()
        assert digest.started_at is None  # not started: it waits in the queue for a worker
        assert ledger(digest.id) == {}
