"""Sending through Celery: a real Redis broker on 127.0.0.1:6379 and real `celery worker`
processes; one is killed with SIGKILL in the middle of a send and another finishes it."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from delivery_helpers import (
    ROOT,
    cli_env,
    digest_status,
    fault_server,
    first_try_fault,
    kill_hard,
    ledger,
    number,
    seed,
    wait_for,
)

from newsletter import delivery

CELERY = str(Path(sys.executable).with_name("celery"))
REDIS_DB = 13  # the delivery tests' own database on the shared Redis
N = 800
INFLIGHT = 10
CONCURRENCY = 2
SETTINGS = {
    "SEND_CONNECTIONS": CONCURRENCY,
    "SEND_INFLIGHT": INFLIGHT,
    "SEND_BATCH_SIZE": 250,
    "SEND_RETRY_SECONDS": 0.2,
    "SEND_POLL_SECONDS": 0.2,
    "SEND_PROCESSES": 1,
}


@pytest.fixture
def broker_url():
    """The shared Redis, with a queue of this test's own (other test runs may use the same
    Redis database at the same time); its keys are deleted afterwards."""
    url = f"redis://127.0.0.1:6379/{REDIS_DB}"
    queue = f"newsletter-test-{os.getpid()}-{secrets.token_hex(4)}"
    yield url, queue
    client = redis.Redis.from_url(url)
    for key in client.scan_iter(f"*{queue}*"):
        client.delete(key)
    client.close()


@pytest.fixture
def celery_app(make_app, smtp_server, broker_url):
    url, queue = broker_url
    return make_app(MAIL_URL=smtp_server.url, BROKER_URL=url, CELERY_QUEUE=queue, **SETTINGS)


@pytest.fixture
def workers(celery_app, tmp_path):
    started: list[subprocess.Popen] = []
    log = tmp_path / "worker.log"

    def start() -> subprocess.Popen:
        env = cli_env(celery_app, BROKER_URL=celery_app.config["BROKER_URL"],
                      CELERY_QUEUE=celery_app.config["CELERY_QUEUE"], **SETTINGS)
        env["PYTHONPATH"] = str(ROOT)
        with open(log, "ab") as out:
            process = subprocess.Popen(
                [CELERY, "-A", "newsletter.tasks", "worker", "-Q", celery_app.config["CELERY_QUEUE"],
                 "-P", "threads", "-c", str(CONCURRENCY),
                 "-l", "INFO", "--without-heartbeat", "--without-mingle", "--without-gossip",
                 "-n", f"w{len(started)}@%h"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        started.append(process)
        return process

    start.log = log  # type: ignore[attr-defined]
    yield start
    for process in started:
        if process.poll() is None:
            process.kill()  # the test is over: no need for a warm shutdown
            process.wait()


def test_celery_worker_killed_mid_send_another_finishes_exactly_once(celery_app, smtp_server, workers):
    handler = fault_server(smtp_server)
    handler.faults = first_try_fault("451 4.7.1 try again", lambda r: number(r) % 20 == 5)
    with celery_app.app_context():
        digest_id = seed(N)
        delivery.launch_send(digest_id)  # BROKER_URL is set: a Celery task, returns at once
        assert digest_status(digest_id) in ("approved", "sending")
    first = workers()
    assert wait_for(lambda: handler.received() >= N * 0.3, 90), workers.log.read_text()[-3000:]
    kill_hard(first)  # SIGKILL: its batch stays unacknowledged, its claims stay in the ledger
    time.sleep(0.5)
    settled = handler.received()
    assert settled < N
    workers()  # a new worker takes back the dead one's claims and dispatches the rest
    with celery_app.app_context():
        assert wait_for(lambda: digest_status(digest_id) == "done", 120, poll=0.2), \
            workers.log.read_text()[-3000:]
        assert ledger(digest_id) == {"sent": N}
    counts = handler.counts()
    assert set(counts) == {f"p{i}@example.se" for i in range(N)}
    extra = sum(counts.values()) - N
    assert extra <= INFLIGHT * CONCURRENCY, f"{extra} duplicates"


def test_celery_pause_and_resume(celery_app, smtp_server, workers):
    handler = fault_server(smtp_server)
    handler.delay = 0.002
    workers()
    with celery_app.app_context():
        digest_id = seed(N)
        delivery.launch_send(digest_id)
        assert wait_for(lambda: handler.received() >= N * 0.2, 90), workers.log.read_text()[-3000:]
        delivery.pause_send(digest_id)
        time.sleep(1.5)  # every batch task obeys within a second or two
        settled = handler.received()
        time.sleep(1)
        assert handler.received() == settled < N
        assert ledger(digest_id).get("sending", 0) == 0
        delivery.resume_send(digest_id)  # relaunches: a new dispatch through the broker
        assert wait_for(lambda: digest_status(digest_id) == "done", 120, poll=0.2), \
            workers.log.read_text()[-3000:]
    counts = handler.counts()
    assert len(counts) == N and max(counts.values()) == 1


def test_without_broker_url_a_send_runs_in_a_thread_of_this_process(app):
    assert not app.config["BROKER_URL"]
    with app.app_context():
        digest_id = seed(3)
        delivery.launch_send(digest_id)  # MAIL_URL is memory:// here
        delivery.wait_for_sends(timeout=30)
        assert digest_status(digest_id) == "done"
