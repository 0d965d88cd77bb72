"""Celery app and tasks, used only when BROKER_URL is set.

Run workers with (any number, on any machines that reach the database and the broker):

    celery -A newsletter.tasks worker --concurrency 4 -l INFO

A send is one `dispatch_send` task that pins the recipients and queues one `send_batch`
task per SEND_BATCH_SIZE open rows of the ledger (an id range). Tasks are acknowledged
late, so the batch of a worker that dies is delivered again; the ledger's claims keep a
redelivered (or duplicated) batch from sending anything twice. A worker that starts
takes back the claims of dead senders and dispatches every send left in "sending", so
a send whose worker was killed finishes as soon as any worker (re)starts. A batch whose
rows wait for a retry (4xx back-off) queues itself again with a countdown.

SEND_RATE is split evenly over SEND_CONNECTIONS: each batch task sends over one
connection at SEND_RATE / SEND_CONNECTIONS, so run at most SEND_CONNECTIONS worker
slots in total to stay within SEND_RATE.
"""

from __future__ import annotations

import logging
import threading

from celery import Celery, Task, signals
from flask import Flask, current_app, has_app_context

from config import Config
from newsletter import delivery
from newsletter.engine import logformat
from newsletter.extensions import db

log = logging.getLogger(__name__)


class FlaskTask(Task):
    """Each task runs in the app's context and leaves no session behind (Flask's
    `celery_init_app` pattern): the tasks themselves are plain functions of the domain."""

    def __call__(self, *args, **kwargs):
        with flask_app().app_context():
            try:
                return self.run(*args, **kwargs)
            finally:
                db.session.remove()


celery = Celery("newsletter", set_as_current=False, task_cls=FlaskTask)
_flask_app: Flask | None = None
_configured_for: str | None = None
_lock = threading.Lock()


def _settings(broker_url: str, visibility_timeout: int, queue: str) -> dict:
    return dict(
        broker_url=broker_url,
        result_backend=None,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_acks_late=True,  # a batch is acknowledged when it is done, not when taken
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": visibility_timeout},
        task_default_queue=queue,
    )


# A worker (`celery -A newsletter.tasks worker`) reads its broker from the environment, when
# Celery first needs its configuration (not when this module is imported).
celery.add_defaults(lambda: _settings(Config.BROKER_URL, Config.CELERY_VISIBILITY_TIMEOUT,
                                      Config.CELERY_QUEUE) if Config.BROKER_URL else {})


def configure(broker_url: str, visibility_timeout: int = 3600, queue: str = "newsletter") -> Celery:
    """Point the Celery app at the broker and queue (once per process, broker and queue)."""
    global _configured_for
    with _lock:
        if _configured_for != f"{broker_url} {queue}":
            if _configured_for is not None:
                _forget_connections()
            celery.conf.update(_settings(broker_url, visibility_timeout, queue))
            _configured_for = f"{broker_url} {queue}"
    return celery


def celery_init_app(app: Flask) -> Celery:
    """Wire Celery into the app (BROKER_URL set): sends are launched as tasks."""
    app.extensions["celery"] = celery
    app.extensions["newsletter.launch_task"] = launch
    return celery


def _forget_connections() -> None:
    """Forget the pooled broker connections and producers: they still go to the broker configured
    before (Celery's own reset after a fork does the same). Not closed: kombu keeps producer pools
    per broker URL, and a later switch back to that broker finds them again."""
    celery._pool = None
    amqp = celery.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None


def flask_app() -> Flask:
    """The Flask app tasks run in: the caller's own in-process, else one made from the environment."""
    global _flask_app
    if has_app_context():
        return current_app._get_current_object()  # type: ignore[attr-defined]
    with _lock:
        if _flask_app is None:
            from newsletter import create_app

            _flask_app = create_app()
    return _flask_app


def launch(digest_id: int) -> None:
    """Queue the send of a digest (called by delivery.launch_send when BROKER_URL is set)."""
    config = current_app.config
    configure(config["BROKER_URL"], config["CELERY_VISIBILITY_TIMEOUT"], config["CELERY_QUEUE"])
    dispatch_send.apply_async((digest_id,), queue=config["CELERY_QUEUE"])


@signals.setup_logging.connect
def _setup_logging(**_kwargs) -> None:
    """A worker logs like every other process (LOG_LEVEL, LOG_FORMAT), not in Celery's own format."""
    logformat.configure(Config.LOG_LEVEL, Config.LOG_FORMAT)


def _check_scheduler() -> None:
    """A worker notices a scheduler that is gone too (the admins get one email, whoever sends it)."""
    from newsletter.extensions import db
    from newsletter.monitoring import alerts

    with flask_app().app_context():
        try:
            alerts.check_scheduler()
        except Exception:  # noqa: BLE001  (the check is retried at the next tick)
            log.exception("could not check the scheduler's heartbeat")
        finally:
            db.session.remove()


def _tick() -> None:
    """Nothing: wakes the worker's event loop (see _resume_on_worker_start)."""


@celery.task(name="newsletter.dispatch_send", acks_late=True)
def dispatch_send(digest_id: int) -> int:
    """Pin the recipients, then queue a batch task per SEND_BATCH_SIZE open rows."""
    with logformat.digest_context(digest_id):  # the send's log lines carry its id
        config = current_app.config
        delivery.start_send(digest_id)
        delivery.recover_stale(digest_id)
        if delivery.send_progress(digest_id)["status"] != "sending":
            return 0
        ranges = delivery.open_ranges(digest_id, config["SEND_BATCH_SIZE"])
        if not ranges:
            delivery.finish_send(digest_id)
        for first, last in ranges:
            send_batch.apply_async((digest_id, first, last), queue=config["CELERY_QUEUE"])
        log.info("digest %s: %d batches queued", digest_id, len(ranges))
        return len(ranges)


@celery.task(name="newsletter.send_batch", acks_late=True)
def send_batch(digest_id: int, first_id: int, last_id: int) -> dict:
    """Send the open rows of the digest with ids in [first_id, last_id] (one connection)."""
    with logformat.digest_context(digest_id):
        result = delivery.send_batch(digest_id, first_id, last_id)
    if result.get("retry_after") is not None:  # rows waiting for a retry: come back for them
        send_batch.apply_async((digest_id, first_id, last_id), countdown=max(result["retry_after"], 0.1),
                               queue=current_app.config["CELERY_QUEUE"])
    return result


@signals.worker_ready.connect
def _resume_on_worker_start(sender=None, **_kwargs) -> None:
    """A worker starting finishes what dead senders left: stale claims back, sends dispatched."""
    # The threads pool acknowledges a finished task only when the worker's event loop wakes
    # up (celery#6941); with late acks and nothing else arriving it would never take the
    # next batch. A timer that ticks keeps the loop awake (harmless for the other pools).
    timer = getattr(sender, "timer", None)
    if timer is not None:
        timer.call_repeatedly(0.2, _tick)
        timer.call_repeatedly(60, _check_scheduler)

    app = flask_app()
    with app.app_context():
        try:
            for digest_id in delivery.resume_interrupted():
                log.info("worker start: resuming the send of digest %s", digest_id)
                dispatch_send.apply_async((digest_id,), queue=app.config["CELERY_QUEUE"])
        except Exception:  # noqa: BLE001  (the worker must start even if the database is away)
            log.exception("could not resume interrupted sends")
        finally:
            db.session.remove()
