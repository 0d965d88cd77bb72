"""The sending loop of a bulk send: claim rows from the ledger, stream them over SMTP, record.

No Flask and no SQLAlchemy here (see `ledger`): the same loop runs in the threads of the
process that sends (`delivery.send_digest`, the scheduler, a Celery task) and in send
workers, processes of their own (`send_worker`) that cost a Python with its database
driver instead of a whole Flask app. What only the app can do (recover stale claims,
pin, finish the send, tell the admins) the sender asks of its `Hooks`.

The rules of the ledger (claims, the in-flight bound, replies) are described in
`delivery`'s docstring.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from newsletter.engine.ledger import Item, Ledger, Recipient, Results, abandon, claim_token, utcnow
from newsletter.engine.links import PersonalLinks
from newsletter.engine.prepared import PreparedMessage
from newsletter.engine.ratelimit import TokenBucket
from newsletter.engine.smtp import MailError, Outgoing, Transport
from newsletter.engine.verp import VerpSigner

log = logging.getLogger("newsletter.delivery.send")

AUTO_PROCESSES_MIN = 4000  # SEND_PROCESSES=0 starts extra processes only for sends this large

# Given a recipient, the prepared message they get, or None when nothing in it is for them;
# NotHere when this process has no message for them (a send worker, for a variant that
# appeared after it started): the row is left for the process that sends with the app.
MessageFactory = Callable[[Recipient], "PreparedMessage | None"]


class NotHere(LookupError):  # noqa: N818  (a signal to the sender, not a failure)
    """This process cannot make the recipient's message."""


# Set by stop_all_sends(): every send of this process finishes its messages in flight and stops.
process_stop = threading.Event()


# --- settings of one send -------------------------------------------------------------------


@dataclass
class SendSettings:
    connections: int
    processes: int
    rate: float
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
    def from_config(cls, config: Mapping, queued: int = 0, single_process: bool = False) -> SendSettings:
        connections = max(1, int(config["SEND_CONNECTIONS"]))
        processes = int(config.get("SEND_PROCESSES", 1))
        if processes <= 0:  # auto: one per CPU, for large sends only
            processes = (os.cpu_count() or 1) if queued >= AUTO_PROCESSES_MIN else 1
        if single_process:
            processes = 1
        processes = max(1, min(processes, connections))
        return cls(
            connections=connections,
            processes=processes,
            rate=float(config["SEND_RATE"] or 0),
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


# --- which variant of a digest a recipient gets -------------------------------------------


@dataclass(frozen=True)
class VariantRule:
    """Picks a digest's variant (language, topic ids shown) for a recipient from plain values."""

    topic_ids: frozenset  # of the digest's articles; None for an article whose topic was deleted
    languages: frozenset
    default_locale: str

    def variant_for(self, language: str | None, followed) -> tuple[str, frozenset] | None:
        """The recipient's language and the ids of the topics they follow (empty: all topics);
        None when nothing in the digest is for them."""
        if not followed:  # no topics chosen means all topics
            shown = self.topic_ids
        else:
            shown = self.topic_ids.intersection(followed)
            if not shown:  # none of their topics has an article this time: they get nothing
                return None
            # An article whose topic was deleted since goes to everyone.
            shown = shown | (self.topic_ids & {None})
        if not shown:
            return None
        return (language if language in self.languages else self.default_locale), shown


def prepared_variants(rule: VariantRule, variants: Mapping[tuple[str, frozenset], PreparedMessage]
                      ) -> MessageFactory:
    """A message factory over variants rendered beforehand (a send worker's)."""
    def message_for(recipient: Recipient) -> PreparedMessage | None:
        key = rule.variant_for(recipient.language, recipient.topic_ids)
        if key is None:
            return None
        message = variants.get(key)
        if message is None:
            raise NotHere(key)
        return message

    return message_for


# --- the loop ----------------------------------------------------------------------------------


class Hooks:
    """What a sender asks of the process it runs in. A send worker has only these defaults:
    the process that started it recovers, pins, finishes and reports."""

    def recover(self) -> int:
        """Take back the claims of senders that are gone; how many rows were freed."""
        return 0

    def pinning_done(self) -> bool:
        return True

    def pin_rest(self) -> None:
        pass

    def finish(self) -> None:
        """Nothing is open any more: mark the send done (and report it)."""

    def paused_for_errors(self) -> None:
        """This sender paused the send for an error storm: tell the admins."""


@dataclass
class SendJob:
    """Everything a sender needs besides the ledger; plain data, so a send worker gets it whole."""

    digest_id: int
    settings: SendSettings
    connections: int
    sender: str  # the envelope sender (MAIL FROM)
    links: PersonalLinks
    rate: float = 0.0  # this sender's share of SEND_RATE
    id_range: tuple[int, int] | None = None  # a Celery batch: only these Delivery ids
    verp: VerpSigner | None = None  # BOUNCE_ADDRESS: each message's own envelope sender


class Sender:
    """Sends one digest from this process over `job.connections` SMTP connections (threads)."""

    def __init__(self, ledger: Ledger, job: SendJob, message_for: MessageFactory,
                 transport: Callable[[], Transport], hooks: Hooks | None = None,
                 stop: threading.Event | None = None):
        self.ledger = ledger
        self.job = job
        self.digest_id = job.digest_id
        self.settings = job.settings
        self.connections = max(1, job.connections)
        self.message_for = message_for
        self.new_transport = transport
        self.hooks = hooks or Hooks()
        self.stop = stop or threading.Event()  # SIGTERM/SIGINT: leave cleanly
        self.halt = threading.Event()  # the digest is no longer "sending" (pause, cancel, done)
        self.first_reply = threading.Event()  # the first message of this sender has an outcome
        self.id_range = job.id_range
        self.bucket = TokenBucket(job.rate)
        self.verp = job.verp.for_send(job.digest_id) if job.verp is not None else None
        # A chunk's results reach the ledger (and the admin's progress) when it is done: with
        # SEND_RATE, a chunk is at most about half a second of a connection's share of it.
        per_connection = job.rate / self.connections
        self.chunk = (max(1, min(self.settings.inflight, int(per_connection / 2))) if per_connection
                      else self.settings.inflight)
        self.errors: deque[bool] = deque(maxlen=self.settings.error_window)
        self.errors_lock = threading.Lock()
        self.not_here: set[int] = set()  # rows left for another process (NotHere)
        self._cursor = 0  # the highest id claimed so far (a hint shared by the threads)
        self._local = threading.local()  # each sending thread's database connection
        self.retry_after: float | None = None  # set in range mode: rows of the range wait for a retry
        self._factory_lock = threading.Lock()
        self.stats = {"sent": 0, "failed": 0, "bounced": 0, "retry": 0, "skipped": 0}

    # the loop of a process

    def run(self) -> None:
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

    def should_stop(self) -> bool:
        return self.stop.is_set() or self.halt.is_set() or process_stop.is_set()

    def _watch(self) -> None:
        """Every SEND_POLL_SECONDS: is the digest still "sending"? Workers obey the answer."""
        try:
            while not self.should_stop():
                try:
                    status = self.ledger.status(self._db(), self.digest_id)
                    if status != "sending":
                        log.info("digest %s is %s: senders stop", self.digest_id, status)
                        self.halt.set()
                        return
                except Exception:  # noqa: BLE001  (a database hiccup must not stop the watcher)
                    log.exception("could not read the status of digest %s", self.digest_id)
                    self._close_db()
                self.halt.wait(self.settings.poll_seconds)
        finally:
            self._close_db()

    def _connection(self, number: int) -> None:
        transport = self.new_transport()
        failures = 0
        token = claim_token()  # this connection's claims, until an error hands them back
        done: Results | None = None  # sent, not in the ledger yet: it goes in with the next claim
        unsettled = False  # after an error: `done` and the token's other rows are still to be settled
        try:
            while not self.should_stop():
                try:
                    if unsettled:
                        self._settle(token, done)
                        token, done, unsettled = claim_token(), None, False
                    if done is not None and self._until_window() > 0:
                        self._record(done, token)  # not held back while the window is closed
                        done = None
                    if not self._wait_for_window():
                        break
                    items, done = self._reserve(token, done), None
                    if items:
                        done = self._send_chunk(transport, items)
                    elif not self._nothing_due():
                        break
                    failures = 0
                except Exception:  # noqa: BLE001  (the database went away, most likely)
                    failures += 1
                    log.exception("sender %s of digest %s failed (%d in a row)", number,
                                  self.digest_id, failures)
                    self._close_db()
                    unsettled = True  # settled first when the database answers again
                    if failures >= 5:  # give up, like a crash: the next run resumes
                        log.error("digest %s: too many errors, this sender stops", self.digest_id)
                        self.halt.set()
                        break
                    self.halt.wait(self.settings.poll_seconds * 2 ** failures)
        finally:
            try:
                if unsettled:
                    self._settle(token, done)
                elif done is not None:
                    self._record(done, token)  # a stop: what went out, and the rest handed back
            except Exception:  # noqa: BLE001  (no database: the claim is recovered later)
                log.exception("could not record the last results of digest %s", self.digest_id)
                abandon(token)  # this process lives on: without this its claim would look alive
            transport.close()
            self._close_db()

    def _settle(self, token: str, done: Results | None) -> None:
        """After an error: record what is known to have gone out, then hand back the rest of
        the token's rows (the chunk in flight may have gone out: the in-flight bound)."""
        if done is not None:
            self._record(done, token)
        self.ledger.release_claim(self._db(), self.digest_id, token)

    def _until_window(self) -> float:
        return seconds_until_window(self.settings.window, utcnow(), self.settings.timezone)

    def _db(self):
        """This thread's database connection, kept for the whole send: taking one from a
        pool for every chunk costs a round trip (pre-ping) and the pool's own work."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self.ledger.connect()
        return conn

    def _close_db(self) -> None:
        conn, self._local.conn = getattr(self._local, "conn", None), None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001  (a broken connection: it is dropped all the same)
                log.debug("closing a broken connection", exc_info=True)

    def _wait_for_window(self) -> bool:
        while not self.should_stop():
            wait = self._until_window()
            if wait <= 0:
                return True
            log.info("outside SEND_WINDOW: digest %s waits %.0f s", self.digest_id, wait)
            self.halt.wait(min(wait, self.settings.poll_seconds * 5))
        return False

    def _reserve(self, token: str, done: Results | None) -> list[Item]:
        """Record `done`, and claim the next chunk (`self.chunk` due rows, now "sending").

        The search starts after the last id this process claimed: on PostgreSQL the index
        keeps the dead versions of every row updated since the last vacuum, and a search
        from the start would step over all of them each time (quadratic in the list).
        Only when nothing is left ahead does it look from the start again, for the rows
        handed back or waiting for a retry.
        """
        after = self._cursor
        items = self._claim(token, after, done)
        if not items and after:
            self._cursor = 0
            items = self._claim(token, 0, None)
        if items:
            self._cursor = max(self._cursor, items[-1].delivery_id)
        return items

    def _claim(self, token: str, after: int, done: Results | None) -> list[Item]:
        items = self.ledger.claim(self._db(), self.digest_id, token, after=after, size=self.chunk,
                                  now=utcnow(), id_range=self.id_range, exclude=self.not_here, done=done,
                                  backoff=self.settings.backoff)
        if done is not None:
            self._count(done)
        return items

    def _nothing_due(self) -> bool:
        """Nothing to reserve now. Finish the digest, wait for retries or for other senders;
        False when this sender should end."""
        if self.hooks.recover():
            return True
        left, next_at, claimed = self.ledger.open_rows(self._db(), self.digest_id, self.id_range,
                                                       exclude=self.not_here)
        if left == 0:
            if self.id_range is None and not self.hooks.pinning_done():
                # Ahead of the pinning (or its process died): pin the rest here, then go on.
                self.hooks.pin_rest()
                return True
            if self.id_range is None or not self.ledger.open_rows(self._db(), self.digest_id)[0]:
                self.hooks.finish()
            return False
        wait = self.settings.poll_seconds
        if next_at is not None and claimed < left:  # some wait for a retry
            wait = max(0.0, (next_at - utcnow()).total_seconds())
            if self.id_range is not None and claimed == 0:
                self.retry_after = wait  # a Celery batch: come back later instead of sleeping
                return False
        elif self.id_range is not None:
            return False  # the rest of the range is another worker's, who is alive
        self.halt.wait(min(max(wait, 0.05), self.settings.poll_seconds))
        return True

    def _send_chunk(self, transport: Transport, chunk: list[Item]) -> Results:
        """Send the chunk as one stream over the connection; its results, with the rows not
        tried (a stop, a pause, or the rate limit's wait) as `untried`."""
        results = Results()
        tried = 0
        unanswered: dict[int, Item] = {}  # handed to the transport, no outcome yet

        def outgoing() -> Iterator[Outgoing]:
            nonlocal tried
            verp = self.verp
            for item in chunk:
                if self.should_stop() or not self.bucket.take(self.should_stop):
                    return
                tried += 1
                data = self._encode(transport, item, results)
                if data is not None:
                    unanswered[item.delivery_id] = item
                    recipient = item.recipient
                    yield Outgoing(item, recipient.email, data, verp(recipient.id) if verp else None)
                if self.halt.is_set():
                    return

        try:
            # With SEND_RATE the next message may have to wait for a token: no lookahead then.
            stream = transport.send_many(self.job.sender, outgoing(), lookahead=not self.bucket.rate)
            for message, error in stream:
                item = message.key
                del unanswered[item.delivery_id]
                self._outcome(item, error, results)
        except Exception as exc:  # noqa: BLE001  (a transport bug: retry later on a new connection)
            log.exception("digest %s: unexpected error while sending", self.digest_id)
            transport.close()
            for item in unanswered.values():
                self._outcome(item, MailError(f"error: {exc}"), results)  # no code: retried
        results.untried = [item.delivery_id for item in chunk[tried:]]
        return results

    def _encode(self, transport: Transport, item: Item, results: Results) -> bytes | None:
        """The recipient's message as the transport sends it, or None (skipped or failed)."""
        recipient = item.recipient
        if recipient.status != "confirmed":  # unsubscribed or bounced since the send started
            results.skipped.append(item.delivery_id)
            return None
        try:
            with self._factory_lock:
                prepared = self.message_for(recipient)
            if prepared is None:
                results.skipped.append(item.delivery_id)
                return None
            return transport.encode(prepared, self.job.links.values(recipient))
        except NotHere:
            self.not_here.add(item.delivery_id)
            results.handed_on.append(item.delivery_id)
            return None
        except Exception as exc:  # noqa: BLE001  (one broken message must not stop the send)
            log.exception("could not render delivery %s", item.delivery_id)
            results.failed.append((item.delivery_id, item.attempts + 1, f"render error: {exc}"[:500]))
            self._note(error=True)
            return None

    def _outcome(self, item: Item, error: MailError | None, results: Results) -> None:
        if not self.first_reply.is_set():  # set() takes the event's lock: not once a message
            self.first_reply.set()
        if error is None:
            results.sent.append(item.delivery_id)
            self._note(error=False)
            return
        attempts = item.attempts + 1
        reply = str(error)[:500]
        if error.permanent:
            results.bounced.append((item.delivery_id, attempts, reply))
        elif attempts >= self.settings.max_attempts:
            results.failed.append((item.delivery_id, attempts, reply))
        else:
            results.retry.append((item.delivery_id, attempts, reply))
        log.info("delivery %s to subscriber %s: %s", item.delivery_id, item.recipient.id, reply)
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
            if self.ledger.pause(self._db(), self.digest_id, reason):
                log.error("digest %s %s", self.digest_id, reason)
                self.hooks.paused_for_errors()
            self.halt.set()

    def _record(self, results: Results, token: str) -> None:
        if results:
            self.ledger.record(self._db(), self.digest_id, results, token, backoff=self.settings.backoff)
            self._count(results)

    def _count(self, results: Results) -> None:
        for name in self.stats:
            self.stats[name] += len(getattr(results, name))
