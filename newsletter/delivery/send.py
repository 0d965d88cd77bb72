"""The send pipeline: a per-recipient ledger (Delivery rows), then sending from it, fast.

The ledger
    `start_send` pins the recipients (confirmed when the send started) as one queued
    Delivery row each, unique per (digest, subscriber): a big list in chunks, PIN_FIRST
    before the first message and the rest by a thread while the senders send; whoever runs
    dry first finishes an interrupted pinning, and the send is done only once `recipient_count`
    is set after the last chunk. The digest is a status machine:
    draft/approved/scheduled -> sending -> paused <-> sending, -> cancelled, -> done.

Claims (what makes it exactly once)
    Each connection claims its next chunk of SEND_INFLIGHT due queued rows (with SEND_RATE,
    about half a second of the connection's share at most) with one UPDATE
    that marks them "sending" and sets `claimed_by` to a token naming the host, process and
    a random part (PostgreSQL picks the rows with FOR UPDATE SKIP LOCKED, SQLite serialises
    writers), in the same transaction that records the results of the chunk it sent before.
    So a row is written twice (sending, then its result), and at any moment a connection has
    at most SEND_INFLIGHT messages that may have gone out without the ledger knowing: after a
    `kill -9` these are the only possible duplicates, and the bound is
    SEND_INFLIGHT x SEND_CONNECTIONS. A clean stop (pause, cancel, SIGTERM, SIGINT) finishes
    the message being sent, records it and hands every unsent row back: no duplicates.

Recovery
    Rows claimed by a process that is gone (same host: its pid is dead or is another
    process now; another host: no change for SEND_CLAIM_TIMEOUT seconds) are handed back:
    "sending" ones are sent again (the in-flight bound; claimed "queued" rows, from older
    versions, simply become free).
    This runs at every `send_digest` (so `digest send`, the scheduler's housekeeping, a
    Celery worker starting) and while a send waits for rows others hold.

Replies
    4xx, 421 and a dropped connection: the row goes back to the queue with an exponential
    back-off (SEND_RETRY_SECONDS x 2^(attempts-1), at most SEND_RETRY_MAX_SECONDS) and is
    tried again on a new connection, up to SEND_MAX_ATTEMPTS, then "failed". 5xx: the row is
    "bounced", the subscriber too (with a consent event, source "system"): never retried,
    and left out of later sends. More than SEND_MAX_ERROR_RATE errors among the last
    SEND_ERROR_WINDOW replies pauses the send and tells the admins.

Speed
    Each variant is rendered once (DigestRenderer); per recipient only the prepared bytes,
    dot-stuffed once for SMTP, get their slots filled. Recipients are read a batch at a time
    (the claim's RETURNING gives their ids). Each SEND_INFLIGHT chunk goes out as one
    pipelined stream (`SMTPTransport.send_many`: one round trip a message). SEND_CONNECTIONS SMTP
    connections, each reused, are spread over SEND_PROCESSES processes (0 = one per CPU for
    large sends), each sending from its own threads; SEND_RATE is a token bucket shared by
    them (split per process). The loop itself (`sending.Sender`) reads and writes the ledger
    over plain DB-API connections (`ledger.Ledger`); the extra processes are send workers
    (`send_worker`): a Python with its database driver, no Flask and no SQLAlchemy, given
    the variants this process rendered. About 25 MB each instead of a forked app's 80.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable

from flask import Flask, current_app
from sqlalchemy import func, select

from newsletter.delivery.control import finish_send, report_outcome
from newsletter.delivery.pinning import PIN_FIRST, pin_rest, pinning_done, start_send
from newsletter.delivery.progress import send_progress
from newsletter.delivery.recovery import recover_stale
from newsletter.delivery.workers import hand_out_jobs, ledger_database, start_worker, wait_for_worker
from newsletter.engine.ledger import (
    OPEN_STATES,
    Ledger,
)
from newsletter.engine.sending import (
    Hooks,
    MessageFactory,
    Sender,
    SendJob,
    SendSettings,
    process_stop,
)
from newsletter.extensions import db
from newsletter.mail.compose import envelope_sender, verp_signer
from newsletter.mail.personal import personal_links
from newsletter.mail.transports import transport_from_url
from newsletter.models import Delivery, Digest, Subscriber

log = logging.getLogger(__name__)

# At most this long the first message of a send has the machine to itself (see send_digest).
FIRST_MESSAGE_HEAD_START = 2.0


class SendStopped(SystemExit):  # noqa: N818  (an exit, like SystemExit)
    """The process was asked to stop (SIGTERM/SIGINT): the send was left cleanly, resumable."""


def stop_all_sends() -> None:
    """Ask every send running in this process (threads, scheduler jobs) to stop cleanly; for a
    process shutting down that did not get the signal itself in the sending thread."""
    process_stop.set()


# --- sending: blocking ------------------------------------------------------------------------


class AppHooks(Hooks):
    """A sender in a process with the app: it recovers, pins, finishes and reports itself."""

    def __init__(self, app: Flask, digest_id: int):
        self.app = app
        self.digest_id = digest_id

    def _call(self, work: Callable, *args):
        with self.app.app_context():
            try:
                return work(*args)
            finally:
                db.session.remove()

    def recover(self) -> int:
        return self._call(recover_stale, self.digest_id)

    def pinning_done(self) -> bool:
        return self._call(pinning_done, self.digest_id)

    def pin_rest(self) -> None:
        self._call(pin_rest, self.digest_id)

    def finish(self) -> None:
        self._call(finish_send, self.digest_id)

    def paused_for_errors(self) -> None:
        self._call(report_outcome, self.digest_id, "error_storm")


def app_ledger() -> Ledger:
    """The ledger of this process's senders. On PostgreSQL over connections of their own, as
    a send worker's (autocommit: a claim is one round trip; see `Database.connect`); on
    SQLite over the app's engine (its SQLite settings, and a test's in-memory database)."""
    engine = db.engine
    if engine.dialect.name == "postgresql":
        return Ledger("postgresql", ledger_database().connect)
    return Ledger(engine.dialect.name, engine.raw_connection)


def send_job(digest_id: int, settings: SendSettings, connections: int, rate: float,
              id_range: tuple[int, int] | None = None) -> SendJob:
    return SendJob(digest_id=digest_id, settings=settings, connections=connections, sender=envelope_sender(),
                   links=personal_links(), rate=rate, id_range=id_range, verp=verp_signer())


def app_sender(app: Flask, job: SendJob, message_for: MessageFactory) -> Sender:
    """A sender in this process."""
    mail_url = app.config["MAIL_URL"]
    return Sender(app_ledger(), job, message_for, lambda: transport_from_url(mail_url, bulk=True),
                  AppHooks(app, job.digest_id))


def _renderer(digest_id: int):
    from newsletter.digests.compile import DigestRenderer  # the digest module renders each variant once

    return DigestRenderer(db.session.get(Digest, digest_id))


def _renderer_factory(app: Flask, renderer) -> MessageFactory:
    """Each variant rendered on first use (in an app context: templates, translations)."""
    rule = renderer.rule

    def message_for(recipient):
        key = rule.variant_for(recipient.language, recipient.topic_ids)
        if key is None:
            return None
        message = renderer.cached(key)
        if message is None:
            with app.app_context():
                message = renderer.message_for_variant(key)
        return message

    return message_for


def send_digest(digest_id: int, message_for: MessageFactory | None = None,
                processes: int | None = None) -> dict:
    """Send every open delivery of the digest; returns when it is done, paused or cancelled
    (or the process is told to stop: SendStopped). Resumes from the ledger.
    `processes` overrides SEND_PROCESSES (a background send in a web process uses 1)."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    start_send(digest_id, first=PIN_FIRST)  # the rest is pinned while the first ones go out
    recover_stale(digest_id)
    digest = db.session.get(Digest, digest_id)
    db.session.refresh(digest)
    if digest.status != "sending":  # paused, cancelled or done: nothing to do now
        return send_progress(digest_id)
    queued = db.session.execute(select(func.count()).select_from(Delivery).where(
        Delivery.digest_id == digest_id, Delivery.state.in_(OPEN_STATES))).scalar_one()
    pinning = not pinning_done(digest_id)
    if pinning:  # the size of the send, for SEND_PROCESSES=0: what is still to be pinned too
        queued += db.session.execute(select(func.count()).select_from(Subscriber).where(
            Subscriber.status == "confirmed", Subscriber.id > select(func.max(Delivery.subscriber_id))
            .where(Delivery.digest_id == digest_id).scalar_subquery())).scalar_one()
    # Send workers are for SMTP (memory:// and outbox:// are this process's), and cannot take a
    # factory given by the caller.
    workers_possible = message_for is None and app.config["MAIL_URL"].startswith(("smtp://", "smtps://",
                                                                                  "smtp+starttls://"))
    settings = SendSettings.from_config(app.config, queued, single_process=not workers_possible)
    if processes is not None and workers_possible:
        settings.processes = max(1, min(processes, settings.connections))
    shares = _split(settings.connections, settings.processes)
    rate = settings.rate / settings.processes if settings.rate else 0
    renderer = _renderer(digest_id) if message_for is None else None
    sender = app_sender(app, send_job(digest_id, settings, shares[0], rate),
                     message_for or _renderer_factory(app, renderer))
    db.session.commit()
    stop = sender.stop
    with _signals_stop(stop) as workers:
        sending = threading.Thread(target=sender.run, name=f"send-{digest_id}", daemon=True)
        sending.start()
        # The first message goes out before anything else competes for the cores: the rest of
        # the pinning (the database's work), the workers' start and their variants (the GIL).
        deadline = time.monotonic() + FIRST_MESSAGE_HEAD_START
        while not sender.first_reply.wait(0.05) and sending.is_alive() and time.monotonic() < deadline:
            pass
        helpers = []
        if pinning:
            helpers.append(threading.Thread(target=_pin_rest_in_thread, args=(app, digest_id),
                                            name=f"send-{digest_id}-pin", daemon=True))
        if len(shares) > 1 and sending.is_alive():
            # Started from this thread, which outlives them (PR_SET_PDEATHSIG follows the thread).
            try:
                workers.extend(start_worker() for _ in shares[1:])
            except OSError:  # no process to be had: this one sends on alone (and its workers, if any)
                log.exception("could not start the send workers of digest %s", digest_id)
            if workers:
                helpers.append(threading.Thread(
                    target=hand_out_jobs, args=(app, sender, renderer, workers, [send_job(
                        digest_id, settings, share, rate) for share in shares[1:]]),
                    name=f"send-{digest_id}-workers", daemon=True))
        for helper in helpers:
            helper.start()
        while sending.is_alive():
            sending.join(0.5)
        for helper in helpers:
            helper.join()
        for worker in workers:
            wait_for_worker(app, digest_id, worker)
    db.session.expire_all()
    if stop.is_set() or process_stop.is_set():
        raise SendStopped(143)
    finish_send(digest_id)  # e.g. every row was already final
    return send_progress(digest_id)


def _pin_rest_in_thread(app: Flask, digest_id: int) -> None:
    with app.app_context():
        try:
            pin_rest(digest_id)
        except Exception:  # noqa: BLE001  (the senders finish the pinning when they run dry)
            log.exception("pinning the rest of digest %s failed; the senders will finish it", digest_id)
        finally:
            db.session.remove()


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if n < total % parts else 0) for n in range(parts)]


# --- send workers ------------------------------------------------------------------------------


class _signals_stop:  # noqa: N801  (used as a context manager, like a function)
    """SIGTERM/SIGINT set `stop` (and reach the child processes) while sending in the main thread."""

    def __init__(self, stop: threading.Event):
        self.stop = stop
        self.children: list = []
        self.previous: dict = {}

    def __enter__(self) -> list:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self.previous[signum] = signal.signal(signum, self._handle)
        return self.children

    def _handle(self, signum, frame) -> None:
        log.warning("signal %s: finishing the messages in flight, then stopping", signum)
        self.stop.set()
        for child in self.children:
            if child.poll() is None:
                try:
                    os.kill(child.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def send_batch(digest_id: int, first_id: int, last_id: int) -> dict:
    """Send the open deliveries of the digest with ids in [first_id, last_id] over one
    connection (a Celery task's work). Returns {"retry_after": seconds or None, ...stats}."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    recover_stale(digest_id)
    digest = db.session.get(Digest, digest_id)
    if digest is None or digest.status != "sending":
        return {"retry_after": None, "status": digest.status if digest else "missing"}
    settings = SendSettings.from_config(app.config)
    per_task = settings.rate / settings.connections if settings.rate else 0
    sender = app_sender(app, send_job(digest_id, settings, 1, per_task, id_range=(first_id, last_id)),
                     _renderer_factory(app, _renderer(digest_id)))
    db.session.commit()
    sender.run()
    return {"retry_after": sender.retry_after, "status": "sending", **sender.stats}


def open_ranges(digest_id: int, size: int) -> list[tuple[int, int]]:
    """The open deliveries of a digest as id ranges of at most `size` rows (Celery batches)."""
    ranges: list[tuple[int, int]] = []
    first = last = None
    count = 0
    with db.engine.connect() as conn:
        result = conn.execution_options(yield_per=5000).execute(
            select(Delivery.id).where(Delivery.digest_id == digest_id, Delivery.state.in_(OPEN_STATES))
            .order_by(Delivery.id))
        for (delivery_id,) in result:
            if first is None:
                first = delivery_id
            last = delivery_id
            count += 1
            if count == size:
                ranges.append((first, last))
                first, count = None, 0
    if first is not None and last is not None:
        ranges.append((first, last))
    return ranges
