"""Send workers: extra processes (no Flask, no SQLAlchemy) that take a share of a large send's
SMTP connections, given the variants this process rendered (see `newsletter.engine.worker`).
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

from flask import Flask, current_app

from newsletter.delivery.audience import variant_counts
from newsletter.delivery.control import report_outcome
from newsletter.engine.ledger import (
    Database,
)
from newsletter.engine.sending import (
    Sender,
    SendJob,
)
from newsletter.extensions import db

log = logging.getLogger(__name__)


def start_worker() -> subprocess.Popen:
    """A send worker process, waiting for its job on stdin (see `send_worker`)."""
    return subprocess.Popen(
        [sys.executable, "-m", "newsletter.engine.worker", str(os.getpid())],
        stdin=subprocess.PIPE, cwd=Path(__file__).resolve().parents[2], close_fds=True,
    )


def ledger_database() -> Database:
    """How a sender connects to the app's database without the app's engine: a send worker,
    and on PostgreSQL every sender (`app_ledger`)."""
    url = db.engine.url
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:":
            raise ValueError("send workers need a database file, not an in-memory SQLite")
        return Database("sqlite", os.path.abspath(url.database))
    return Database("postgresql", url.set(drivername="postgresql").render_as_string(hide_password=False))


def worker_jobs(renderer, jobs: list[SendJob]) -> list:
    """The send workers' jobs (in an app context): every variant the recipients need,
    rendered here, and how to reach the database and the SMTP server."""
    from newsletter.engine.worker import WorkerJob

    variants = {key: renderer.message_for_variant(key) for key in _variants_in_use(renderer.rule)}
    common = dict(database=ledger_database(), mail_url=current_app.config["MAIL_URL"], rule=renderer.rule,
                  variants=variants, log_level=current_app.config.get("LOG_LEVEL", "INFO"))
    return [WorkerJob(send=job, **common) for job in jobs]


def hand_out_jobs(app: Flask, sender: Sender, renderer, workers: list[subprocess.Popen],
                   jobs: list[SendJob]) -> None:
    """Give each worker its job once the variants are rendered, by the renderer this process
    sends with (or, should that fail, nothing: they exit and this process sends on alone)."""
    payload = None
    try:
        with app.app_context():
            payload = [pickle.dumps(job) for job in worker_jobs(renderer, jobs)]
            db.session.remove()
    except Exception:  # noqa: BLE001  (the send goes on in this process)
        log.exception("could not prepare the send workers of digest %s", sender.digest_id)
    for number, worker in enumerate(workers):
        try:
            if payload is not None and not sender.should_stop():
                worker.stdin.write(payload[number])
            worker.stdin.close()
        except OSError:  # it is gone already: its claims, if any, are recovered
            log.warning("send worker %s did not take its job", worker.pid)


def _variants_in_use(rule) -> set:
    """The variants (language, topics shown) the confirmed subscribers get, counted in SQL."""
    return set(variant_counts(rule)) - {None}


def wait_for_worker(app: Flask, digest_id: int, worker: subprocess.Popen) -> None:
    from newsletter.engine import worker as send_worker

    status = worker.wait()
    if status == send_worker.PAUSED:
        with app.app_context():
            report_outcome(digest_id, "error_storm")
            db.session.remove()
    elif status not in (0, -signal.SIGTERM, -signal.SIGINT, send_worker.STOPPED):
        log.warning("send worker %s of digest %s ended with status %s", worker.pid, digest_id, status)
