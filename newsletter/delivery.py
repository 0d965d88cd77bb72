"""The send pipeline: a per-recipient ledger (Delivery rows), then sending from it, fast.

The ledger
    `start_send` pins the recipients (confirmed when the send started) as one queued
    Delivery row each, unique per (digest, subscriber): a big list in chunks, PIN_FIRST
    before the first message and the rest by a thread while the senders send; whoever runs
    dry first finishes an interrupted pinning, and the send is done only once `recipient_count`
    is set after the last chunk. The digest is a status machine:
    draft/approved/scheduled -> sending -> paused <-> sending, -> cancelled, -> done.

Claims (what makes it exactly once)
    A worker *reserves* a batch of due queued rows with one UPDATE that sets
    `claimed_by` to a token naming the host, process and a random part (PostgreSQL picks
    the rows with FOR UPDATE SKIP LOCKED, SQLite serialises writers). Reserved rows are
    still "queued": nothing of them has been sent. Just before a connection sends the next
    SEND_INFLIGHT of them, one UPDATE marks those "sending"; after them, one UPDATE (in the
    same transaction as the next "sending" mark) records the results. So at any moment a
    connection has at most SEND_INFLIGHT messages that may have gone out without the ledger
    knowing: after a `kill -9` these are the only possible duplicates, and the bound is
    SEND_INFLIGHT x SEND_CONNECTIONS. A clean stop (pause, cancel, SIGTERM, SIGINT) finishes
    the message being sent, records it and hands every unsent row back: no duplicates.

Recovery
    Rows claimed by a process that is gone (same host: its pid is dead or is another
    process now; another host: no change for SEND_CLAIM_TIMEOUT seconds) are handed back:
    "sending" ones are sent again (the in-flight bound), reserved ones simply become free.
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
    connections, each reused, are spread over SEND_PROCESSES processes (forked; 0 = one per
    CPU for large sends), each sending from its own threads; SEND_RATE is a token bucket
    shared by them (split per process).
"""

from __future__ import annotations

import ctypes
import hmac
import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from flask import Flask, current_app
from sqlalchemy import Connection, func, insert, or_, select, text, update
from sqlalchemy.orm import Session

from . import tokens
from .extensions import db
from .mail import MailError, Outgoing, PreparedMessage, envelope_sender, smtp_address, transport_from_url
from .models import ConsentEvent, Delivery, Digest, Subscriber, utcnow
from .ratelimit import TokenBucket
from .sqlite_tuning import install as _tune_sqlite

log = logging.getLogger(__name__)
_tune_sqlite()

# Given a subscriber, the prepared message they get, or None when nothing in it is for them.
MessageFactory = Callable[[Subscriber], "PreparedMessage | None"]

PROGRESS_STATES = ("queued", "sending", "sent", "failed", "bounced", "skipped")
OPEN_STATES = ("queued", "sending")  # not finished yet
RATE_WINDOW_SECONDS = 10
AUTO_PROCESSES_MIN = 4000  # SEND_PROCESSES=0 forks extra processes only for sends this large


class SendStopped(SystemExit):  # noqa: N818  (an exit, like SystemExit)
    """The process was asked to stop (SIGTERM/SIGINT): the send was left cleanly, resumable."""


# Set by stop_all_sends(): every send of this process finishes its messages in flight and stops.
_process_stop = threading.Event()


def stop_all_sends() -> None:
    """Ask every send running in this process (threads, scheduler jobs) to stop cleanly; for a
    process shutting down that did not get the signal itself in the sending thread."""
    _process_stop.set()


def personal_values(subscriber: Subscriber) -> dict[str, str]:
    """The per-recipient slot values of a bulk message."""
    return PersonalLinks.for_app().values(subscriber)


class PersonalLinks:
    """The personal values of the app's messages: To and the two signed links.

    Holds what every message needs (the public URL, the two signers), so the hot path
    of a bulk send does not look them up in the app's config for each recipient.
    """

    def __init__(self, public_url: str, secret_key: str):
        self.public_url = public_url
        self.secret_key = secret_key
        self.unsubscribe = LinkSigner("unsubscribe")
        self.preferences = LinkSigner("preferences")

    @classmethod
    def for_app(cls) -> PersonalLinks:
        config = current_app.config
        key = (config["PUBLIC_URL"], config["SECRET_KEY"])
        links = _links.get(key)
        if links is None:
            links = _links[key] = cls(*key)
        return links

    def values(self, subscriber: Subscriber) -> dict[str, str]:
        uid = subscriber.uid
        return {
            "to": smtp_address(subscriber.email)[0],
            "unsubscribe_url": f"{self.public_url}/unsubscribe/{self.unsubscribe.token(uid)}",
            "preferences_url": f"{self.public_url}/preferences/{self.preferences.token(uid)}",
        }


_links: dict[tuple[str, str], PersonalLinks] = {}


class LinkSigner:
    """Makes the very tokens `tokens.make_token(purpose, uid)` makes, several times cheaper.

    itsdangerous sets up a serializer and a signer, derives the key, tries zlib and
    dumps JSON on every call: tens of microseconds, twice per message. Here the key is
    derived once, the payload of a plain uid is `"uid"` base64-encoded, the timestamp
    part changes once a second, and the HMAC is one C call. `tokens.read_token` reads
    them (the tests check both ways).
    """

    def __init__(self, purpose: str):
        from itsdangerous.encoding import base64_encode, int_to_bytes
        from itsdangerous.signer import HMACAlgorithm
        from itsdangerous.timed import TimestampSigner

        serializer = tokens._serializer(purpose)
        signer = serializer.make_signer()
        self._encode = base64_encode
        self._int_to_bytes = int_to_bytes
        self.usable = isinstance(signer, TimestampSigner) and type(signer.algorithm) is HMACAlgorithm
        self.key = signer.derive_key()
        self.digest_name = signer.algorithm.digest_method().name  # e.g. "sha1", for hmac.digest
        self.sep = signer.sep.encode() if isinstance(signer.sep, str) else signer.sep
        self.purpose = purpose
        self._second = -1
        self._stamp = b""

    def token(self, uid: str) -> str:
        if not (self.usable and uid.isascii() and uid.isalnum()):
            return tokens.make_token(self.purpose, uid)
        now = int(time.time())
        if now != self._second:
            self._stamp, self._second = self._encode(self._int_to_bytes(now)), now
        value = self._encode(b'"' + uid.encode() + b'"') + self.sep + self._stamp
        signature = self._encode(hmac.digest(self.key, value, self.digest_name))
        return (value + self.sep + signature).decode("ascii")


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


def _default_factory(digest: Digest) -> MessageFactory:
    from .digests import DigestRenderer  # the digest module renders each variant once

    return DigestRenderer(digest).message_for


# --- claim owners and stale claims --------------------------------------------------------

_HOST = socket.gethostname()[:24]


def _process_stat(pid: int) -> list[bytes]:
    """The fields of /proc/<pid>/stat after the command name (state first); [] if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _process_start(pid: int) -> str:
    """The start time of a process (clock ticks since boot), to tell a reused pid apart."""
    fields = _process_stat(pid)
    return fields[19].decode() if len(fields) > 19 else "0"


def process_owner() -> str:
    """host:pid:start of this process; a claim token adds a random part."""
    pid = os.getpid()
    return f"{_HOST}:{pid}:{_process_start(pid)}"


def _claim_token() -> str:
    return f"{process_owner()}:{secrets.token_hex(4)}"


def _owner_alive(token: str) -> bool | None:
    """True/False for a claim of a process on this host; None when it is another host's."""
    host, _, rest = token.partition(":")
    pid_text, _, rest = rest.partition(":")
    start = rest.partition(":")[0]
    if host != _HOST or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _process_stat(pid)
    if fields and fields[0] in (b"Z", b"X"):  # killed, not yet reaped (an orphan's zombie)
        return False
    return start == "0" or (len(fields) > 19 and fields[19].decode() == start) or not fields


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
        alive = _owner_alive(token)
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


# --- settings of one send -------------------------------------------------------------------


@dataclass
class SendSettings:
    connections: int
    processes: int
    rate: float
    batch_size: int
    inflight: int
    max_attempts: int
    retry_seconds: float
    retry_max_seconds: float
    error_rate: float
    error_window: int
    poll_seconds: float
    window: tuple[int, int] | None
    timezone: ZoneInfo

    @classmethod
    def from_config(cls, config, queued: int = 0, custom_factory: bool = False) -> SendSettings:
        connections = max(1, int(config["SEND_CONNECTIONS"]))
        processes = int(config.get("SEND_PROCESSES", 1))
        if processes <= 0:  # auto: one per CPU, for large sends only
            processes = (os.cpu_count() or 1) if queued >= AUTO_PROCESSES_MIN else 1
        if custom_factory or not hasattr(os, "fork"):
            processes = 1  # a factory given by the caller cannot cross into a child process
        processes = max(1, min(processes, connections))
        return cls(
            connections=connections,
            processes=processes,
            rate=float(config["SEND_RATE"] or 0),
            batch_size=max(1, int(config["SEND_BATCH_SIZE"])),
            inflight=max(1, int(config["SEND_INFLIGHT"])),
            max_attempts=max(1, int(config["SEND_MAX_ATTEMPTS"])),
            retry_seconds=float(config["SEND_RETRY_SECONDS"]),
            retry_max_seconds=float(config["SEND_RETRY_MAX_SECONDS"]),
            error_rate=float(config["SEND_MAX_ERROR_RATE"]),
            error_window=max(1, int(config["SEND_ERROR_WINDOW"])),
            poll_seconds=float(config["SEND_POLL_SECONDS"]),
            window=parse_window(config.get("SEND_WINDOW", "")),
            timezone=ZoneInfo(config["TIMEZONE"]),
        )

    def backoff(self, attempts: int) -> timedelta:
        return timedelta(seconds=min(self.retry_seconds * 2 ** max(attempts - 1, 0), self.retry_max_seconds))


def parse_window(text: str) -> tuple[int, int] | None:
    """"07:00-21:00" -> (420, 1260) minutes of the day; empty -> None. May wrap midnight."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        start, end = (part.strip() for part in text.split("-"))
        minutes = [int(h) * 60 + int(m) for h, m in (start.split(":"), end.split(":"))]
    except ValueError as exc:
        raise ValueError(f"SEND_WINDOW must look like 07:00-21:00, not {text!r}") from exc
    return minutes[0], minutes[1]


def seconds_until_window(window: tuple[int, int] | None, now: datetime, zone: ZoneInfo) -> float:
    """0 inside the sending window (or without one), else the seconds until it opens."""
    if window is None:
        return 0.0
    local = now.astimezone(zone)
    minute = local.hour * 60 + local.minute
    start, end = window
    inside = start <= minute < end if start <= end else (minute >= start or minute < end)
    if inside:
        return 0.0
    wait = (start - minute) % (24 * 60)
    return max(wait * 60 - local.second, 1.0)


# --- one process's sending ------------------------------------------------------------------


@dataclass
class _Item:
    delivery_id: int
    attempts: int
    subscriber: Subscriber


@dataclass
class _Results:
    """What a connection has sent since the ledger last heard of it."""

    sent: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    retry: list[tuple[int, int, str]] = field(default_factory=list)  # (id, attempts, reply)
    failed: list[tuple[int, int, str]] = field(default_factory=list)
    bounced: list[tuple[int, int, str, Subscriber]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.sent or self.skipped or self.retry or self.failed or self.bounced)


class ProcessSender:
    """Sends one digest from this process over `connections` SMTP connections (threads)."""

    def __init__(self, app: Flask, digest_id: int, settings: SendSettings, connections: int,
                 message_for: MessageFactory | None = None, stop: threading.Event | None = None,
                 id_range: tuple[int, int] | None = None, rate: float | None = None):
        self.app = app
        self.digest_id = digest_id
        self.settings = settings
        self.connections = max(1, connections)
        self.message_for = message_for
        self.stop = stop or threading.Event()  # SIGTERM/SIGINT: leave cleanly
        self.halt = threading.Event()  # the digest is no longer "sending" (pause, cancel, done)
        self.id_range = id_range
        self.bucket = TokenBucket(settings.rate if rate is None else rate)
        self.errors: deque[bool] = deque(maxlen=settings.error_window)
        self.errors_lock = threading.Lock()
        self.sender = ""
        self.links: PersonalLinks | None = None
        self._cursor = 0  # the highest id claimed so far (a hint shared by the threads)
        self._local = threading.local()  # each sending thread's database connection
        self.retry_after: float | None = None  # set in range mode: rows of the range wait for a retry
        self._factory_lock = threading.Lock()
        self.stats = {"sent": 0, "failed": 0, "bounced": 0, "retry": 0, "skipped": 0}

    # the loop of a process

    def run(self) -> None:
        with self.app.app_context():
            self.sender = envelope_sender()
            self.links = PersonalLinks.for_app()
            if self.message_for is None:
                digest = db.session.get(Digest, self.digest_id)
                self.message_for = _default_factory(digest)
            db.session.remove()
        watcher = threading.Thread(target=self._watch, name=f"send-{self.digest_id}-watch", daemon=True)
        watcher.start()
        threads = [threading.Thread(target=self._connection, args=(n,), name=f"send-{self.digest_id}-{n}",
                                    daemon=True) for n in range(self.connections)]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.5)
        finally:
            self.halt.set()
            watcher.join(5)

    def _should_stop(self) -> bool:
        return self.stop.is_set() or self.halt.is_set() or _process_stop.is_set()

    def _watch(self) -> None:
        """Every SEND_POLL_SECONDS: is the digest still "sending"? Workers obey the answer."""
        with self.app.app_context():
            self._watch_loop()

    def _watch_loop(self) -> None:
        while not self._should_stop():
            try:
                with db.engine.connect() as conn:
                    status = conn.execute(select(Digest.status).where(Digest.id == self.digest_id)).scalar()
                if status != "sending":
                    log.info("digest %s is %s: senders stop", self.digest_id, status)
                    self.halt.set()
                    return
            except Exception:  # noqa: BLE001  (a database hiccup must not stop the watcher)
                log.exception("could not read the status of digest %s", self.digest_id)
            self.halt.wait(self.settings.poll_seconds)

    def _connection(self, number: int) -> None:
        with self.app.app_context():
            transport = transport_from_url()
            failures = 0
            try:
                while not self._should_stop():
                    token = _claim_token()
                    try:
                        if not self._wait_for_window():
                            break
                        items = self._reserve(token)
                        if items:
                            self._send_batch(transport, items)
                        elif not self._nothing_due():
                            break
                        failures = 0
                    except Exception:  # noqa: BLE001  (the database went away, most likely)
                        failures += 1
                        log.exception("sender %s of digest %s failed (%d in a row)", number,
                                      self.digest_id, failures)
                        db.session.rollback()
                        self._close_db()
                        self._release_token(token)
                        if failures >= 5:  # give up, like a crash: the next run resumes
                            log.error("digest %s: too many errors, this sender stops", self.digest_id)
                            self.halt.set()
                            break
                        self.halt.wait(self.settings.poll_seconds * 2 ** failures)
            finally:
                transport.close()
                self._close_db()
                db.session.remove()

    def _db(self) -> Connection:
        """This thread's database connection, kept for the whole send: taking one from the
        pool for every chunk costs a round trip (pool_pre_ping) and the pool's own work."""
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.invalidated:
            conn = self._local.conn = db.engine.connect()
        return conn

    def _close_db(self) -> None:
        conn, self._local.conn = getattr(self._local, "conn", None), None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001  (a broken connection: the pool discards it)
                log.debug("closing a broken connection", exc_info=True)

    def _release_token(self, token: str) -> None:
        """After an error: hand back this claim's rows, like a crash would (the ones in flight
        may have gone out: the in-flight bound)."""
        try:
            with db.engine.begin() as conn:
                conn.execute(update(Delivery).where(
                    Delivery.digest_id == self.digest_id, Delivery.state.in_(OPEN_STATES),
                    Delivery.claimed_by == token,
                ).values(state="queued", claimed_by=None, updated_at=utcnow()))
        except Exception:  # noqa: BLE001  (still no database: recover_stale does it later)
            log.exception("could not hand back the claim %s", token)

    def _wait_for_window(self) -> bool:
        while not self._should_stop():
            wait = seconds_until_window(self.settings.window, utcnow(), self.settings.timezone)
            if wait <= 0:
                return True
            log.info("outside SEND_WINDOW: digest %s waits %.0f s", self.digest_id, wait)
            self.halt.wait(min(wait, self.settings.poll_seconds * 5))
        return False

    def _due(self, now: datetime) -> list:
        where = [
            Delivery.digest_id == self.digest_id,
            Delivery.state == "queued",
            Delivery.claimed_by.is_(None),
            or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
        ]
        if self.id_range is not None:
            where += [Delivery.id >= self.id_range[0], Delivery.id <= self.id_range[1]]
        return where

    def _reserve(self, token: str) -> list[_Item]:
        """Claim a batch of due rows (still "queued": reserved, not in flight) and load them.

        The search starts after the last id this process claimed: on PostgreSQL the index
        keeps the dead versions of every row updated since the last vacuum, and a search
        from the start would step over all of them each time (quadratic in the list).
        Only when nothing is left ahead does it look from the start again, for the rows
        handed back or waiting for a retry.
        """
        after = self._cursor
        items = self._claim(token, after)
        if not items and after:
            self._cursor = 0
            items = self._claim(token, 0)
        if items:
            self._cursor = max(self._cursor, items[-1].delivery_id)
        return items

    def _claim(self, token: str, after: int) -> list[_Item]:
        now = utcnow()
        size = max(self.settings.inflight, self.settings.batch_size // self.connections)
        candidates = (select(Delivery.id).where(*self._due(now), Delivery.id > after)
                      .order_by(Delivery.id).limit(size))
        if db.engine.dialect.name == "postgresql":
            # A CTE with FOR UPDATE runs once (materialised); as a plain IN (subquery) PostgreSQL
            # may plan a nested loop that runs the locking subquery again for every row.
            # UPDATE … FROM chosen joins the few chosen ids to the primary key. The rows are
            # locked by the CTE (re-checked against its WHERE after a wait), so no one else
            # can take them in between.
            chosen = candidates.with_for_update(skip_locked=True).cte("chosen")
            claim = update(Delivery).where(Delivery.id == chosen.c.id)
        else:
            # SQLite evaluates the subquery once and serialises writers; the WHERE is repeated
            # all the same, so a row someone else took meanwhile is left alone.
            claim = update(Delivery).where(Delivery.id.in_(candidates.scalar_subquery()), *self._due(now))
        conn = self._db()
        with conn.begin():
            # RETURNING (SQLite 3.35+, PostgreSQL): the claimed ids, to read them back by key.
            claimed = claim.values(claimed_by=token, updated_at=now).returning(Delivery.id)
            taken = conn.execute(claimed).scalars().all()
        if not taken:
            return []
        # Closing the session keeps the loaded subscribers (and their topics) as they are and
        # ends the read transaction: nothing stays open while the messages go out.
        with Session(bind=conn) as session:
            rows = session.execute(
                select(Delivery.id, Delivery.attempts, Subscriber)
                .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
                .where(Delivery.id.in_(taken), Delivery.claimed_by == token, Delivery.state == "queued")
                .order_by(Delivery.id)
            ).all()
        return [_Item(row[0], row[1], row[2]) for row in rows]

    def _nothing_due(self) -> bool:
        """Nothing to reserve now. Finish the digest, wait for retries or for other senders;
        False when this sender should end."""
        recovered = recover_stale(self.digest_id)
        if recovered:
            return True
        where = [Delivery.digest_id == self.digest_id, Delivery.state.in_(OPEN_STATES)]
        if self.id_range is not None:
            where += [Delivery.id >= self.id_range[0], Delivery.id <= self.id_range[1]]
        with db.engine.connect() as conn:
            left, next_at, claimed = conn.execute(
                select(func.count(), func.min(Delivery.next_attempt_at), func.count(Delivery.claimed_by))
                .where(*where)
            ).one()
        if left == 0:
            if self.id_range is None and not pinning_done(self.digest_id):
                # Ahead of the pinning (or its process died): pin the rest here, then go on.
                pin_rest(self.digest_id)
                db.session.remove()
                return True
            if self.id_range is None or not self._digest_open():
                finish_send(self.digest_id)
            return False
        wait = self.settings.poll_seconds
        if next_at is not None and claimed < left:  # some wait for a retry
            wait = max(0.0, (_aware(next_at) - utcnow()).total_seconds())
            if self.id_range is not None and claimed == 0:
                self.retry_after = wait  # a Celery batch: come back later instead of sleeping
                return False
        elif self.id_range is not None:
            return False  # the rest of the range is another worker's, who is alive
        self.halt.wait(min(max(wait, 0.05), self.settings.poll_seconds))
        return True

    def _digest_open(self) -> bool:
        with db.engine.connect() as conn:
            return bool(conn.execute(
                select(func.count()).select_from(Delivery)
                .where(Delivery.digest_id == self.digest_id, Delivery.state.in_(OPEN_STATES))
            ).scalar())

    def _send_batch(self, transport, items: list[_Item]) -> None:
        inflight = self.settings.inflight
        results = _Results()
        done = 0
        try:
            while done < len(items) and not self._should_stop():
                chunk = items[done:done + inflight]
                self._record(results, sending=[item.delivery_id for item in chunk])
                results = _Results()
                done += self._send_chunk(transport, chunk, results)
        finally:
            # Record what was sent, and hand back every row not tried (never sent: no duplicate).
            self._record(results, release=[item.delivery_id for item in items[done:]])

    def _send_chunk(self, transport, chunk: list[_Item], results: _Results) -> int:
        """Send the chunk as one stream over the connection; returns how many rows were
        tried (the rest were not touched: a stop, a pause, or the rate limit's wait)."""
        tried = 0
        unanswered: dict[int, _Item] = {}  # handed to the transport, no outcome yet

        def outgoing() -> Iterator[Outgoing]:
            nonlocal tried
            for item in chunk:
                if self._should_stop() or not self.bucket.take(self._should_stop):
                    return
                tried += 1
                data = self._encode(transport, item, results)
                if data is not None:
                    unanswered[item.delivery_id] = item
                    yield Outgoing(item, item.subscriber.email, data)
                if self.halt.is_set():
                    return

        try:
            # With SEND_RATE the next message may have to wait for a token: no lookahead then.
            stream = transport.send_many(self.sender, outgoing(), lookahead=not self.bucket.rate)
            for message, error in stream:
                item = message.key
                del unanswered[item.delivery_id]
                self._outcome(item, error, results)
        except Exception as exc:  # noqa: BLE001  (a transport bug: retry later on a new connection)
            log.exception("digest %s: unexpected error while sending", self.digest_id)
            transport.close()
            for item in unanswered.values():
                self._outcome(item, MailError(f"error: {exc}"), results)  # no code: retried
        return tried

    def _encode(self, transport, item: _Item, results: _Results) -> bytes | None:
        """The recipient's message as the transport sends it, or None (skipped or failed)."""
        subscriber = item.subscriber
        if subscriber.status != "confirmed":  # unsubscribed or bounced since the send started
            results.skipped.append(item.delivery_id)
            return None
        try:
            with self._factory_lock:
                prepared = self.message_for(subscriber)
            if prepared is None:
                results.skipped.append(item.delivery_id)
                return None
            return transport.encode(prepared, self.links.values(subscriber))
        except Exception as exc:  # noqa: BLE001  (one broken message must not stop the send)
            log.exception("could not render delivery %s", item.delivery_id)
            results.failed.append((item.delivery_id, item.attempts + 1, f"render error: {exc}"[:500]))
            self._note(error=True)
            return None

    def _outcome(self, item: _Item, error: MailError | None, results: _Results) -> None:
        if error is None:
            results.sent.append(item.delivery_id)
            self._note(error=False)
            return
        attempts = item.attempts + 1
        reply = str(error)[:500]
        if error.permanent:
            results.bounced.append((item.delivery_id, attempts, reply, item.subscriber))
        elif attempts >= self.settings.max_attempts:
            results.failed.append((item.delivery_id, attempts, reply))
        else:
            results.retry.append((item.delivery_id, attempts, reply))
        log.info("delivery %s to subscriber %s: %s", item.delivery_id, item.subscriber.id, reply)
        self._note(error=True)

    def _note(self, *, error: bool) -> None:
        """The error-storm check over the last SEND_ERROR_WINDOW replies."""
        with self.errors_lock:
            self.errors.append(error)
            full = len(self.errors) == self.errors.maxlen
            errors = sum(self.errors) if full and error else 0
        if full and errors / self.settings.error_window > self.settings.error_rate:
            with self.errors_lock:
                self.errors.clear()
            reason = (f"paused: {errors} errors in the last {self.settings.error_window} replies "
                      f"(more than SEND_MAX_ERROR_RATE {self.settings.error_rate:.0%})")
            pause_for_errors(self.digest_id, reason)
            self.halt.set()

    def _record(self, results: _Results, *, sending: Iterable[int] = (), release: Iterable[int] = ()) -> None:
        """One transaction: the results so far, then the next rows in flight (or the release)."""
        sending, release = list(sending), list(release)
        if not (results or sending or release):
            return
        now = utcnow()
        conn = self._db()
        with conn.begin():
            if conn.dialect.name == "postgresql":
                # Like SQLite's WAL + synchronous=NORMAL: the commit does not wait for the disk.
                # A crash of the sender loses nothing; only a crash of the database server
                # could forget the last moments (then those messages would be sent again).
                conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
            if results.sent:
                conn.execute(update(Delivery).where(Delivery.id.in_(results.sent)).values(
                    state="sent", sent_at=now, attempts=Delivery.attempts + 1, claimed_by=None,
                    last_reply="250", updated_at=now))
            if results.skipped:
                conn.execute(update(Delivery).where(Delivery.id.in_(results.skipped)).values(
                    state="skipped", claimed_by=None, updated_at=now))
            for delivery_id, attempts, reply in results.retry:
                conn.execute(update(Delivery).where(Delivery.id == delivery_id).values(
                    state="queued", claimed_by=None, attempts=attempts, last_reply=reply,
                    next_attempt_at=now + self.settings.backoff(attempts), updated_at=now))
            for delivery_id, attempts, reply in results.failed:
                conn.execute(update(Delivery).where(Delivery.id == delivery_id).values(
                    state="failed", claimed_by=None, attempts=attempts, last_reply=reply, updated_at=now))
            for delivery_id, attempts, reply, subscriber in results.bounced:
                conn.execute(update(Delivery).where(Delivery.id == delivery_id).values(
                    state="bounced", claimed_by=None, attempts=attempts, last_reply=reply, updated_at=now))
                _mark_bounced(conn, subscriber, reply, self.digest_id)
            if sending:
                conn.execute(update(Delivery).where(Delivery.id.in_(sending)).values(
                    state="sending", updated_at=now))
            if release:
                conn.execute(update(Delivery).where(Delivery.id.in_(release)).values(
                    state="queued", claimed_by=None, updated_at=now))
        self.stats["sent"] += len(results.sent)
        self.stats["skipped"] += len(results.skipped)
        self.stats["retry"] += len(results.retry)
        self.stats["failed"] += len(results.failed)
        self.stats["bounced"] += len(results.bounced)


def _mark_bounced(conn, subscriber: Subscriber, reply: str, digest_id: int) -> None:
    """A 5xx: the address is bounced for good, with a consent-ledger event."""
    from .subscriptions import email_hash

    changed = conn.execute(update(Subscriber).where(
        Subscriber.id == subscriber.id, Subscriber.status.in_(("confirmed", "pending")))
        .values(status="bounced")).rowcount
    if changed:
        conn.execute(insert(ConsentEvent).values(
            subscriber_id=subscriber.id, email_hash=email_hash(subscriber.email), kind="bounce",
            source="system", wording_version="", ip="", user_agent="",
            detail={"reply": reply, "digest_id": digest_id}, created_at=utcnow()))


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


def send_digest(digest_id: int, message_for: MessageFactory | None = None,
                batch_size: int | None = None, processes: int | None = None) -> dict:
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
    settings = SendSettings.from_config(app.config, queued, custom_factory=message_for is not None)
    if batch_size:
        settings.batch_size = batch_size
    if processes is not None:
        settings.processes = max(1, min(processes, settings.connections))
    db.session.commit()
    stop = threading.Event()
    with _signals_stop(stop) as children:
        shares = _split(settings.connections, settings.processes)
        rate = settings.rate / settings.processes if settings.rate else 0
        for share in shares[1:]:
            children.append(_fork_sender(app, digest_id, settings, share, rate))
        pinner = None
        if pinning:  # after the forks: a thread does not survive one
            pinner = threading.Thread(target=_pin_rest_in_thread, args=(app, digest_id),
                                      name=f"send-{digest_id}-pin", daemon=True)
            pinner.start()
        ProcessSender(app, digest_id, settings, shares[0], message_for, stop, rate=rate).run()
        for child in children:
            while child.is_alive():
                child.join(0.5)
        if pinner is not None:
            pinner.join()
    db.session.expire_all()
    if stop.is_set() or _process_stop.is_set():
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
            if child.pid and child.is_alive():
                try:
                    os.kill(child.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def _fork_sender(app: Flask, digest_id: int, settings: SendSettings, connections: int, rate: float):
    import multiprocessing

    context = multiprocessing.get_context("fork")
    process = context.Process(target=_child_main, args=(app, digest_id, settings, connections, rate,
                                                        os.getpid()), daemon=True,
                              name=f"send-digest-{digest_id}")
    process.start()
    return process


def _child_main(app: Flask, digest_id: int, settings: SendSettings, connections: int, rate: float,
                parent: int) -> None:
    """A forked sender process: dies with its parent (even on kill -9), stops on SIGTERM/SIGINT."""
    _die_with_parent()
    if os.getppid() != parent:
        os._exit(1)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with app.app_context():
        db.engine.dispose(close=False)  # the parent's connections are the parent's
    ProcessSender(app, digest_id, settings, connections, None, stop, rate=rate).run()


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the child notices on its own (getppid)
        pass


def send_batch(digest_id: int, first_id: int, last_id: int) -> dict:
    """Send the open deliveries of the digest with ids in [first_id, last_id] over one
    connection (a Celery task's work). Returns {"retry_after": seconds or None, ...stats}."""
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    recover_stale(digest_id)
    digest = db.session.get(Digest, digest_id)
    if digest is None or digest.status != "sending":
        return {"retry_after": None, "status": digest.status if digest else "missing"}
    settings = SendSettings.from_config(app.config)
    db.session.commit()
    per_task = settings.rate / settings.connections if settings.rate else 0
    sender = ProcessSender(app, digest_id, settings, 1, None, id_range=(first_id, last_id), rate=per_task)
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

