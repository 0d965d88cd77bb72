"""LOG_FORMAT=json on a real Celery worker: its lines are JSON objects (through the app's logging,
not Celery's), the send's lines carry the digest id, and no address is in them."""

from __future__ import annotations

import json

import pytest
from delivery_helpers import digest_status, ledger, seed, wait_for
from test_delivery_celery import broker_url, celery_app, workers  # noqa: F401  (fixtures)

from newsletter import delivery


@pytest.mark.slow
def test_a_celery_worker_logs_json_with_the_digest_id(celery_app, smtp_server, workers,  # noqa: F811
                                                      monkeypatch):
    monkeypatch.setenv("LOG_FORMAT", "json")
    with celery_app.app_context():
        digest_id = seed(40)
        delivery.launch_send(digest_id)
    workers()
    with celery_app.app_context():
        assert wait_for(lambda: digest_status(digest_id) == "done", 120, poll=0.2), \
            workers.log.read_text()[-3000:]
        assert ledger(digest_id) == {"sent": 40}
    text = workers.log.read_text()
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert records, text[-3000:]
    assert any(r.get("digest_id") == digest_id for r in records), text[-3000:]
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert "@example.se" not in text
