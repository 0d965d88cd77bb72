"""`flask --app wsgi digest send` killed and restarted: kill -9 at several points, SIGTERM,
two senders at once. Real processes (the sender starts a send worker), a real SMTP server."""

from __future__ import annotations

import signal
import time

import pytest
from delivery_helpers import (
    cli_env,
    digest_status,
    fault_server,
    kill_hard,
    ledger,
    seed,
    start_cli,
    wait_for,
)

from newsletter import delivery

N = 5000  # the size for the kill -9 test
CONNECTIONS = 4
INFLIGHT = 10
BOUND = CONNECTIONS * INFLIGHT  # the most one kill -9 may duplicate
RECIPIENTS = {  # smaller sends where the size does not matter, to keep the file fast
    "test_sigterm_and_sigint_stop_cleanly_without_duplicates": 2000,
    "test_two_digest_send_processes_at_once_make_one_send": 1500,
}
SETTINGS = {
    "SEND_CONNECTIONS": CONNECTIONS,
    "SEND_INFLIGHT": INFLIGHT,
    "SEND_PROCESSES": 2,
    "SEND_BATCH_SIZE": 200,
    "SEND_RETRY_SECONDS": 0.1,
    "SEND_POLL_SECONDS": 0.2,
}


@pytest.fixture
def sending(smtp_app, smtp_server, tmp_path, request):
    """A digest for N (or RECIPIENTS[test]) subscribers, and the CLI's environment."""
    n = RECIPIENTS.get(request.node.originalname, N)
    handler = fault_server(smtp_server)
    with smtp_app.app_context():
        digest_id = seed(n)
    env = cli_env(smtp_app, **SETTINGS)
    return handler, digest_id, env, tmp_path / "send.log"


def _all_once(handler, allowed_extra: int, n: int = N) -> None:
    counts = handler.counts()
    assert set(counts) == {f"p{i}@example.se" for i in range(n)}  # nobody skipped
    extra = sum(counts.values()) - n
    assert extra <= allowed_extra, f"{extra} duplicates, more than the in-flight bound {allowed_extra}"


def test_kill_9_at_several_points_then_resume(smtp_app, sending):
    handler, digest_id, env, log = sending
    kills = 0
    for point in (0.1, 0.4, 0.7):
        process = start_cli(env, "digest", "send", log_path=log)
        assert wait_for(lambda p=point: handler.received() >= p * N, 60), log.read_text()
        kill_hard(process)
        kills += 1
        time.sleep(0.5)  # the send worker dies with its parent: nothing more arrives
        settled = handler.received()
        time.sleep(0.5)
        assert handler.received() == settled
        with smtp_app.app_context():
            assert digest_status(digest_id) == "sending"
            assert ledger(digest_id).get("sending", 0) <= BOUND
    process = start_cli(env, "digest", "send", log_path=log)
    assert process.wait(120) == 0, log.read_text()
    with smtp_app.app_context():
        assert digest_status(digest_id) == "done"
        assert ledger(digest_id) == {"sent": N}
    _all_once(handler, kills * BOUND)


def test_sigterm_and_sigint_stop_cleanly_without_duplicates(smtp_app, sending):
    handler, digest_id, env, log = sending
    for point, signum in ((0.2, signal.SIGTERM), (0.6, signal.SIGINT)):
        process = start_cli(env, "digest", "send", log_path=log)
        assert wait_for(lambda p=point: handler.received() >= p * 2000, 60), log.read_text()
        process.send_signal(signum)
        assert process.wait(15) != 0  # stopped, not finished
        with smtp_app.app_context():
            state = ledger(digest_id)
            assert state.get("sending", 0) == 0  # the messages in flight were finished and recorded
            assert state["sent"] == handler.received()
            assert digest_status(digest_id) == "sending"  # interrupted, to be resumed
    process = start_cli(env, "digest", "send", log_path=log)
    assert process.wait(120) == 0, log.read_text()
    _all_once(handler, 0, 2000)


def test_two_digest_send_processes_at_once_make_one_send(smtp_app, sending):
    handler, digest_id, env, log = sending
    first = start_cli(env, "digest", "send", log_path=log)
    second = start_cli(env, "digest", "send", log_path=log)
    assert first.wait(120) == 0 and second.wait(120) == 0, log.read_text()
    with smtp_app.app_context():
        assert digest_status(digest_id) == "done"
        assert delivery.send_progress(digest_id)["sent"] == 1500
    _all_once(handler, 0, 1500)
