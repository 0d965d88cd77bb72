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
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from flask import Flask, current_app
from sqlalchemy import String, cast, func, insert, or_, select, text, update

from .extensions import db
from .ledger import (  # noqa: F401  (HOST, process_owner: the claim owners, for callers and tests)
    HOST,
    OPEN_STATES,
    Database,
    Ledger,
    owner_alive,
    process_owner,
)
from .links import PersonalLinks
from .mail import envelope_sender, transport_from_url, verp_signer
from .models import Delivery, Digest, Subscriber, subscriber_topics, utcnow
from .sending import (  # noqa: F401  (the send's settings, kept where callers look)
    Hooks,
    MessageFactory,
    Sender,
    SendJob,
    SendSettings,
    parse_window,
    process_stop,
    seconds_until_window,
)
from .sqlite_tuning import install as _tune_sqlite

log = logging.getLogger(__name__)
_tune_sqlite()

PROGRESS_STATES = ("queued", "sending", "sent", "failed", "bounced", "skipped")
RATE_WINDOW_SECONDS = 10
# At most this long the first message of a send has the machine to itself (see send_digest).
FIRST_MESSAGE_HEAD_START = 2.0


class SendStopped(SystemExit):  # noqa: N818  (an exit, like SystemExit)
    """The process was asked to stop (SIGTERM/SIGINT): the send was left cleanly, resumable."""


def stop_all_sends() -> None:
    """Ask every send running in this process (threads, scheduler jobs) to stop cleanly; for a
    process shutting down that did not get the signal itself in the sending thread."""
    process_stop.set()


def personal_links() -> PersonalLinks:
    """The app's personal links (one per public URL and secret key: the signers derive keys)."""
    config = current_app.config
    key = (config["PUBLIC_URL"], config["SECRET_KEY"])
    links = _links.get(key)
    if links is None:
        links = _links[key] = PersonalLinks(*key)
    return links


_links: dict[tuple[str, str], PersonalLinks] = {}


def personal_values(subscriber) -> dict[str, str]:
    """The per-recipient slot values of a bulk message."""
    return personal_links().values(subscriber)


# --- the ledger -------------------------------------------------------------------------


# A big list is pinned in chunks, each its own transaction, in subscriber order: the first
# PIN_FIRST before anything goes out, the rest by a thread while the senders send (on
# PostgreSQL the foreign-key checks alone cost about 10 µs a row: 1 s per 100,000).
PIN_FIRST = 2000
PIN_CHUNK = 10000


def start_send(digest_id: int, first: int | None = None) -> int:
    """Pin the recipients as queued Delivery rows; idempotent. Returns the count pinned so far.

    The recipients are the subscribers confirmed when the send started (`started_at`), so
    pinning can be finished later, by anyone, with the same result. `first`: pin only that
    many now and leave the rest to `pin_rest`; None pins them all (and finishes a pinning
    that was cut short, e.g. by a crash).
    """
    digest = db.session.get(Digest, digest_id)
    if digest is None:
        raise LookupError(f"no digest {digest_id}")
    if digest.started_at is None:
        if digest.status in ("cancelled", "done"):
            raise ValueError(f"digest {digest_id} is {digest.status}")
        # Lock the digest row first, so two processes starting together pin once.
        started = utcnow()
        taken = db.session.execute(
            update(Digest).where(Digest.id == digest_id, Digest.started_at.is_(None))
            .values(started_at=started, status="sending")
            .execution_options(synchronize_session=False)
        ).rowcount
        if taken:
            if _pin(digest_id, started, after=0, limit=first) is None:
                _pinned(digest_id)
        db.session.commit()
        db.session.refresh(digest)
    if first is None:
        pin_rest(digest_id)
    return db.session.execute(select(func.count()).select_from(Delivery)
                              .where(Delivery.digest_id == digest_id)).scalar_one()


def pin_rest(digest_id: int, chunk: int = PIN_CHUNK) -> None:
    """Pin the recipients not pinned yet, a chunk per transaction; nothing if all are."""
    digest = db.session.get(Digest, digest_id)
    db.session.refresh(digest)
    if digest.started_at is None or pinning_done(digest_id):
        return
    after = db.session.execute(select(func.max(Delivery.subscriber_id))
                               .where(Delivery.digest_id == digest_id)).scalar() or 0
    while after is not None:
        after = _pin(digest_id, digest.started_at, after=after, limit=chunk)
        db.session.commit()
    _pinned(digest_id)
    db.session.commit()


def pinning_done(digest_id: int) -> bool:
    """All recipients are pinned: `recipient_count` is set when the last chunk is (erasure
    may delete rows later, never add them)."""
    rows = db.session.execute(select(func.count()).select_from(Delivery)
                              .where(Delivery.digest_id == digest_id)).scalar_one()
    count = db.session.execute(select(Digest.recipient_count).where(Digest.id == digest_id)).scalar_one()
    return count >= rows


def _pin(digest_id: int, started: datetime, *, after: int, limit: int | None) -> int | None:
    """Pin the recipients whose subscriber id is above `after`, at most `limit` of them (in the
    session's transaction). Returns the last subscriber id pinned, or None when none are left."""
    who = [Subscriber.status == "confirmed", Subscriber.id > after,
           or_(Subscriber.confirmed_at.is_(None), Subscriber.confirmed_at <= started)]
    last = None
    if limit is not None:
        last = db.session.execute(select(Subscriber.id).where(*who).order_by(Subscriber.id)
                                  .offset(limit - 1).limit(1)).scalar()
        if last is not None:
            who.append(Subscriber.id <= last)
    if db.engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as upsert

        pin = upsert(Delivery).on_conflict_do_nothing(index_elements=["digest_id", "subscriber_id"])
    else:  # SQLite
        pin = insert(Delivery).prefix_with("OR IGNORE")
    db.session.execute(pin.from_select(
        ["digest_id", "subscriber_id", "state", "attempts", "last_reply"],
        select(db.literal(digest_id), Subscriber.id, db.literal("queued"), db.literal(0), db.literal(""))
        .where(*who).order_by(Subscriber.id),
    ))
    return last


def _pinned(digest_id: int) -> None:
    """The last chunk is in: the recipient count, and fresh statistics for the claim queries."""
    if db.engine.dialect.name == "postgresql":
        db.session.execute(text("ANALYZE delivery"))
    db.session.execute(
        update(Digest).where(Digest.id == digest_id).values(recipient_count=select(
            func.count()).select_from(Delivery).where(Delivery.digest_id == digest_id)
            .scalar_subquery())
    )


# --- stale claims ---------------------------------------------------------------------------


def recover_stale(digest_id: int | None = None) -> int:
    """Hand back the claims of processes that are gone; returns how many rows were freed.

    "sending" rows of a dead claim may have been sent (they were in flight): they are
    sent again. Reserved ("queued") rows were not: they are just freed.
    """
    timeout = timedelta(seconds=current_app.config["SEND_CLAIM_TIMEOUT"])
    open_rows = [Delivery.claimed_by.is_not(None), Delivery.state.in_(OPEN_STATES)]
    if digest_id is not None:
        open_rows.append(Delivery.digest_id == digest_id)
    with db.engine.connect() as conn:
        owners = conn.execute(
            select(Delivery.claimed_by, func.max(Delivery.updated_at)).where(*open_rows)
            .group_by(Delivery.claimed_by)
        ).all()
    dead = []
    now = utcnow()
    for token, last_change in owners:
        alive = owner_alive(token)
        if alive is False or (alive is None and last_change is not None
                              and _aware(last_change) < now - timeout):
            dead.append(token)
    freed = 0
    for start in range(0, len(dead), 200):
        with db.engine.begin() as conn:
            freed += conn.execute(
                update(Delivery).where(Delivery.claimed_by.in_(dead[start:start + 200]), *open_rows)
                .values(state="queued", claimed_by=None, updated_at=now)
            ).rowcount
    if freed:
        log.warning("took back %d deliveries claimed by %d stopped senders", freed, len(dead))
    return freed


def _aware(value: datetime) -> datetime:
    from datetime import UTC

    return value if value.tzinfo else value.replace(tzinfo=UTC)


def resume_interrupted() -> list[int]:
    """Recover stale claims of every unfinished send; returns the ids of sends still "sending"."""
    recover_stale()
    return list(db.session.execute(
        select(Digest.id).where(Digest.status == "sending").order_by(Digest.id)).scalars())


# --- the status machine -------------------------------------------------------------------


def finish_send(digest_id: int) -> bool:
    """Mark the send done if nothing is left; True for the one caller that did it (it reports)."""
    with db.engine.begin() as conn:
        left = conn.execute(select(func.count()).select_from(Delivery).where(
            Delivery.digest_id == digest_id, Delivery.state.in_(OPEN_STATES))).scalar()
        if left:
            return False
        rows = conn.execute(select(func.count()).select_from(Delivery)
                            .where(Delivery.digest_id == digest_id)).scalar()
        done = conn.execute(update(Digest).where(  # and every recipient is pinned (pinning_done)
            Digest.id == digest_id, Digest.status == "sending", Digest.recipient_count >= rows)
            .values(status="done", finished_at=utcnow())).rowcount
    if done:
        log.info("digest %s sent", digest_id)
        _report(digest_id, "done")
    return bool(done)


def pause_for_errors(digest_id: int, reason: str) -> bool:
    with db.engine.begin() as conn:
        paused = conn.execute(update(Digest).where(Digest.id == digest_id, Digest.status == "sending")
                              .values(status="paused", error=reason)).rowcount
    if paused:
        log.error("digest %s %s", digest_id, reason)
        _report(digest_id, "error_storm")
    return bool(paused)


def _report(digest_id: int, reason: str) -> None:
    try:
        from .send_summary import send_summary
    except ImportError:  # pragma: no cover  (the summary module is optional in early builds)
        return
    try:
        send_summary(digest_id, reason)
    except Exception:  # noqa: BLE001  (a failed report must not fail the send)
        log.exception("could not send the summary of digest %s", digest_id)


def set_send_status(digest_id: int, status: str) -> Digest:
    """Pause, resume or cancel: a status change that the sending workers obey."""
    allowed = {"paused": {"sending"}, "sending": {"paused"}, "cancelled": {"sending", "paused"}}
    digest = db.session.get(Digest, digest_id)
    if digest is None:
        raise LookupError(f"no digest {digest_id}")
    db.session.refresh(digest)
    if digest.status not in allowed[status]:
        raise ValueError(f"cannot go from {digest.status} to {status}")
    digest.status = status
    if status == "cancelled":
        digest.finished_at = utcnow()
    if status == "sending":
        digest.error = ""
    db.session.commit()
    return digest


def pause_send(digest_id: int) -> Digest:
    return set_send_status(digest_id, "paused")


def resume_send(digest_id: int) -> Digest:
    """Back to "sending", and the send is launched again (in the background)."""
    digest = set_send_status(digest_id, "sending")
    launch_send(digest_id)
    return digest


def cancel_send(digest_id: int) -> Digest:
    digest = set_send_status(digest_id, "cancelled")
    _report(digest_id, "cancelled")
    return digest


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
        self._call(_report, self.digest_id, "error_storm")


def app_ledger() -> Ledger:
    """The ledger of this process's senders. On PostgreSQL over connections of their own, as
    a send worker's (autocommit: a claim is one round trip; see `Database.connect`); on
    SQLite over the app's engine (its SQLite settings, and a test's in-memory database)."""
    engine = db.engine
    if engine.dialect.name == "postgresql":
        return Ledger("postgresql", ledger_database().connect)
    return Ledger(engine.dialect.name, engine.raw_connection)


def _send_job(digest_id: int, settings: SendSettings, connections: int, rate: float,
              id_range: tuple[int, int] | None = None) -> SendJob:
    return SendJob(digest_id=digest_id, settings=settings, connections=connections, sender=envelope_sender(),
                   links=personal_links(), rate=rate, id_range=id_range, verp=verp_signer())


def _sender(app: Flask, job: SendJob, message_for: MessageFactory) -> Sender:
    """A sender in this process."""
    mail_url = app.config["MAIL_URL"]
    return Sender(app_ledger(), job, message_for, lambda: transport_from_url(mail_url),
                  AppHooks(app, job.digest_id))


def _renderer(digest_id: int):
    from .digests import DigestRenderer  # the digest module renders each variant once

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
    sender = _sender(app, _send_job(digest_id, settings, shares[0], rate),
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
                workers.extend(_start_worker() for _ in shares[1:])
            except OSError:  # no process to be had: this one sends on alone (and its workers, if any)
                log.exception("could not start the send workers of digest %s", digest_id)
            if workers:
                helpers.append(threading.Thread(
                    target=_hand_out_jobs, args=(app, sender, renderer, workers, [_send_job(
                        digest_id, settings, share, rate) for share in shares[1:]]),
                    name=f"send-{digest_id}-workers", daemon=True))
        for helper in helpers:
            helper.start()
        while sending.is_alive():
            sending.join(0.5)
        for helper in helpers:
            helper.join()
        for worker in workers:
            _wait_for_worker(app, digest_id, worker)
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


def _start_worker() -> subprocess.Popen:
    """A send worker process, waiting for its job on stdin (see `send_worker`)."""
    return subprocess.Popen(
        [sys.executable, "-m", "newsletter.send_worker", str(os.getpid())],
        stdin=subprocess.PIPE, cwd=Path(__file__).resolve().parent.parent, close_fds=True,
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
    from .send_worker import WorkerJob

    variants = {key: renderer.message_for_variant(key) for key in _variants_in_use(renderer.rule)}
    common = dict(database=ledger_database(), mail_url=current_app.config["MAIL_URL"], rule=renderer.rule,
                  variants=variants, log_level=current_app.config.get("LOG_LEVEL", "INFO"))
    return [WorkerJob(send=job, **common) for job in jobs]


def _hand_out_jobs(app: Flask, sender: Sender, renderer, workers: list[subprocess.Popen],
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
    """The variants (language, topics shown) of the confirmed subscribers, from one query:
    each person's followed topics aggregated, then the distinct combinations."""
    if db.engine.dialect.name == "postgresql":
        followed = func.string_agg(cast(subscriber_topics.c.topic_id, String), ",")
    else:
        followed = func.group_concat(subscriber_topics.c.topic_id)
    person = (select(Subscriber.language.label("language"), followed.label("topics"))
              .select_from(Subscriber).outerjoin(subscriber_topics, subscriber_topics.c.subscriber_id
                                                 == Subscriber.id)
              .where(Subscriber.status == "confirmed").group_by(Subscriber.id, Subscriber.language)
              .subquery())
    combos = db.session.execute(select(person.c.language, person.c.topics).distinct()).all()
    keys = {rule.variant_for(language, [int(t) for t in (topics or "").split(",") if t])
            for language, topics in combos}
    return keys - {None}


def _wait_for_worker(app: Flask, digest_id: int, worker: subprocess.Popen) -> None:
    from . import send_worker

    status = worker.wait()
    if status == send_worker.PAUSED:
        with app.app_context():
            _report(digest_id, "error_storm")
            db.session.remove()
    elif status not in (0, -signal.SIGTERM, -signal.SIGINT, send_worker.STOPPED):
        log.warning("send worker %s of digest %s ended with status %s", worker.pid, digest_id, status)


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
    sender = _sender(app, _send_job(digest_id, settings, 1, per_task, id_range=(first_id, last_id)),
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


# --- progress ------------------------------------------------------------------------------------


def send_progress(digest_id: int) -> dict:
    """Counts of the digest's deliveries by state, `total`, and the send's status, rate
    (messages a second: over the last RATE_WINDOW_SECONDS while sending, else on average),
    eta_seconds (None when unknown), started_at and finished_at (ISO 8601 or None)."""
    rows = db.session.execute(
        select(Delivery.state, func.count()).where(Delivery.digest_id == digest_id).group_by(Delivery.state)
    ).all()
    progress: dict = {state: 0 for state in PROGRESS_STATES}
    progress.update({state: n for state, n in rows})
    progress["total"] = sum(n for _, n in rows)
    digest = db.session.get(Digest, digest_id)
    if digest is not None:
        db.session.refresh(digest)
    status = digest.status if digest is not None else "missing"
    started = digest.started_at if digest is not None else None
    finished = digest.finished_at if digest is not None else None
    rate = 0.0
    now = utcnow()
    if started is not None and status == "sending":
        since = now - timedelta(seconds=RATE_WINDOW_SECONDS)
        recent = db.session.execute(
            select(func.count()).select_from(Delivery)
            .where(Delivery.digest_id == digest_id, Delivery.state == "sent", Delivery.sent_at >= since)
        ).scalar_one()
        window = min(RATE_WINDOW_SECONDS, max((now - started).total_seconds(), 0.001))
        rate = recent / window
    elif started is not None and progress["sent"]:
        last = db.session.execute(select(func.min(Delivery.sent_at), func.max(Delivery.sent_at)).where(
            Delivery.digest_id == digest_id, Delivery.state == "sent")).one()
        if last[0] is not None and last[1] is not None:
            elapsed = (_aware(last[1]) - _aware(started)).total_seconds()
            rate = progress["sent"] / elapsed if elapsed > 0 else float(progress["sent"])
    remaining = progress["queued"] + progress["sending"]
    eta = None
    if status == "done" or (remaining == 0 and started is not None and status != "cancelled"):
        eta = 0
    elif status == "sending" and rate > 0:
        eta = int(round(remaining / rate))
    db.session.commit()
    progress.update(
        status=status,
        rate=round(rate, 1),
        eta_seconds=eta,
        started_at=started.isoformat() if started else None,
        finished_at=finished.isoformat() if finished else None,
    )
    return progress


# --- launching in the background -------------------------------------------------------

_running: dict[tuple[int, int], threading.Thread] = {}
_running_lock = threading.Lock()


def launch_send(digest_id: int) -> None:
    """Start (or resume) the send in the background and return at once: a Celery task when
    BROKER_URL is set, else a thread of this process (one per digest at a time)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if app.config.get("BROKER_URL"):
        from . import tasks

        tasks.launch(digest_id)
        return
    key = (id(app), digest_id)
    with _running_lock:
        thread = _running.get(key)
        if thread is not None and thread.is_alive():
            return  # already sending here: it obeys the status, and picks up what is queued
        thread = threading.Thread(target=_send_in_thread, args=(app, digest_id),
                                  name=f"send-digest-{digest_id}", daemon=True)
        _running[key] = thread
        thread.start()


def _send_in_thread(app, digest_id: int) -> None:
    # No forking from a thread of a (web) process: unless SEND_PROCESSES asks for more
    # explicitly, a background send uses the threads of this process only.
    processes = app.config.get("SEND_PROCESSES", 0)
    with app.app_context():
        try:
            send_digest(digest_id, processes=processes if processes > 1 else 1)
        except Exception:  # noqa: BLE001  (a background send must log, not vanish)
            log.exception("background send of digest %s failed", digest_id)
        finally:
            db.session.remove()


def wait_for_sends(timeout: float | None = None) -> None:
    """Wait for this process's background sends to end (tests, shutdown)."""
    with _running_lock:
        threads = list(_running.values())
    for thread in threads:
        thread.join(timeout)

