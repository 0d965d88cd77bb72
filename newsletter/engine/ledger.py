"""The send ledger as a sender sees it: claims, results and status, over a plain DB-API connection.

Like listmonk's campaign manager, the sending loop (`sending.Sender`) talks to the
database only through this small store. It speaks SQL to sqlite3 and psycopg directly,
without SQLAlchemy or Flask, so that a send worker process stays small (a Python with
its database driver) and a message costs no ORM or statement compilation. The tables
are the models' (`models.Delivery`, `Subscriber`, `ConsentEvent`, `Digest`); the app
side of the ledger (pinning, recovery, finishing, progress) is in `delivery`.

Claim tokens name the process that holds the rows (host:pid:start:random), so that
the claims of a process that is gone can be told apart and taken back.
"""

from __future__ import annotations

import os
import secrets
import socket
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from newsletter.engine.clock import SQLITE_TIME, as_utc, utcnow

OPEN_STATES = ("queued", "sending")  # not finished yet



# --- claim owners ---------------------------------------------------------------------------

HOST = socket.gethostname()[:24]


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
    return f"{HOST}:{pid}:{_process_start(pid)}"


def claim_token() -> str:
    return f"{process_owner()}:{secrets.token_hex(4)}"


# Claims this process gave up on (its database was away when a sender stopped): its pid is
# alive, but nobody here will settle them, so they count as a dead sender's.
_abandoned: set[str] = set()


def abandon(token: str) -> None:
    _abandoned.add(token)


def owner_alive(token: str) -> bool | None:
    """True/False for a claim of a process on this host; None when it is another host's."""
    if token in _abandoned:
        return False
    host, _, rest = token.partition(":")
    pid_text, _, rest = rest.partition(":")
    start = rest.partition(":")[0]
    if host != HOST or not pid_text.isdigit():
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


# --- what a sender reads and writes -------------------------------------------------------


@dataclass(frozen=True)
class Recipient:
    """A recipient as the sender loads it with its claim: a row, not an ORM object."""

    id: int
    uid: str
    email: str
    language: str
    status: str
    topic_ids: tuple[int, ...] = ()


@dataclass
class Item:
    """A claimed Delivery row and its recipient."""

    delivery_id: int
    attempts: int
    recipient: Recipient


@dataclass
class Results:
    """What a connection has sent since the ledger last heard of it."""

    sent: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    retry: list[tuple[int, int, str]] = field(default_factory=list)  # (id, attempts, reply)
    failed: list[tuple[int, int, str]] = field(default_factory=list)
    bounced: list[tuple[int, int, str]] = field(default_factory=list)  # the person: delivery.bounces
    handed_on: list[int] = field(default_factory=list)  # not for this process (sending.NotHere)
    untried: list[int] = field(default_factory=list)  # claimed, but not sent (a stop, a pause)

    def __bool__(self) -> bool:
        return bool(self.sent or self.skipped or self.retry or self.failed or self.bounced
                    or self.handed_on or self.untried)


# How a result is written (`Ledger._write`, and PostgreSQL's claim for the plain ones).
_SENT = ("state = 'sent', sent_at = ?, attempts = attempts + 1, claimed_by = NULL, last_reply = '250',"
         " updated_at = ?")
_SKIPPED = "state = 'skipped', claimed_by = NULL, updated_at = ?"
_BACK = "state = 'queued', claimed_by = NULL, updated_at = ?"  # not tried, or not for this process

# What a claim loads of a recipient, after the delivery's id and attempts (`_item` reads it).
_RECIPIENT_COLUMNS = "s.id, s.uid, s.email, s.language, s.status"


def _item(row: Sequence, topic_ids: Iterable[int]) -> Item:
    return Item(row[0], row[1], Recipient(row[2], row[3], row[4], row[5] or "", row[6], tuple(topic_ids)))


@dataclass(frozen=True)
class Database:
    """How a process of its own connects: "sqlite" and a file path, or "postgresql" and a
    libpq connection URI. Picklable, for a send worker."""

    dialect: str
    target: str

    def connect(self):
        if self.dialect == "sqlite":
            conn = sqlite3.connect(self.target, timeout=30)
            # As sqlite_tuning does for the app's engine: WAL, and commits without fsync.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            return conn
        import psycopg  # only a PostgreSQL sender loads the driver

        # Autocommit: a claim is one statement, so it is its own transaction and one round
        # trip; `Ledger._run` wraps the others in BEGIN ... COMMIT. And like SQLite's WAL +
        # synchronous=NORMAL, a commit does not wait for the disk: a crash of the sender loses
        # nothing; only a crash of the database server could forget the last moments (then
        # those messages would be sent again).
        conn = psycopg.connect(self.target, autocommit=True)
        conn.execute("SET synchronous_commit = off")
        return conn


class Ledger:
    """Claims and results of one digest's Delivery rows over DB-API connections.

    `connect()` gives a new connection (each sending thread keeps its own). Every method
    takes the connection and ends its transaction (commit or rollback) before it returns,
    so nothing stays open while the messages go out.
    """

    def __init__(self, dialect: str, connect: Callable[[], Any]):
        if dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"the send ledger speaks sqlite and postgresql, not {dialect}")
        self.dialect = dialect
        self.connect = connect
        self.postgresql = dialect == "postgresql"

    # SQL helpers: one spelling of each statement, qmark style; psycopg wants %s.

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.postgresql else sql

    def _in(self, column: str, values: Sequence) -> tuple[str, list]:
        if self.postgresql:
            return f"{column} = ANY(?)", [list(values)]
        return f"{column} IN ({','.join('?' * len(values))})", list(values)

    def _time(self, value: datetime | None):
        if value is None or self.postgresql:
            return value
        return value.astimezone(UTC).strftime(SQLITE_TIME)

    def _read_time(self, value) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # SQLite keeps the text the ORM wrote
            value = datetime.fromisoformat(value)
        return as_utc(value)

    def _run(self, conn, work: Callable[[Any], Any], *, one_statement: bool = False):
        """`work(cursor)` in one transaction: committed, or rolled back on any error.

        On an autocommit connection (PostgreSQL's, of `Database`) a `work` of `one_statement`
        runs as it is (the statement is its own transaction, with no BEGIN or COMMIT to wait
        for); any other is wrapped in BEGIN ... COMMIT."""
        cursor = conn.cursor()
        try:
            if getattr(conn, "autocommit", False):
                if one_statement:
                    return work(cursor)
                with conn.transaction():
                    return work(cursor)
            result = work(cursor)
            conn.commit()
            return result
        except BaseException:
            try:
                conn.rollback()
            except Exception:  # noqa: BLE001  (a broken connection: the error above matters)
                pass
            raise
        finally:
            cursor.close()

    def _rows(self, sql: str, params: list, id_range, exclude) -> tuple[str, list]:
        """A WHERE over the digest's rows, narrowed to a Celery batch's id range and without
        the rows this process handed on."""
        if id_range is not None:
            sql += " AND id >= ? AND id <= ?"
            params = [*params, *id_range]
        if exclude:
            clause, values = self._in("id", sorted(exclude))
            sql += f" AND NOT ({clause})"
            params = [*params, *values]
        return sql, params

    def _due(self, digest_id: int, now: datetime, after: int, id_range, exclude) -> tuple[str, list]:
        return self._rows("digest_id = ? AND state = 'queued' AND claimed_by IS NULL"
                          " AND (next_attempt_at IS NULL OR next_attempt_at <= ?) AND id > ?",
                          [digest_id, self._time(now), after], id_range, exclude)

    # claims

    def claim(self, conn, digest_id: int, token: str, *, after: int, size: int, now: datetime,
              id_range: tuple[int, int] | None = None, exclude: Iterable[int] = (),
              done: Results | None = None, backoff: Callable[[int], timedelta] | None = None) -> list[Item]:
        """Record `done` (the results of the chunk sent before, if any), then take up to `size`
        due rows with ids above `after` as "sending" for `token`, and load them: one transaction.

        So a message's row is written twice (sending, then its result), and a connection has
        at most one chunk in flight that the ledger does not know the outcome of.

        On PostgreSQL the claim is one statement that also writes the plain results (sent,
        skipped, handed back) and loads the recipients with their topics; on a connection of
        `Database` (autocommit) it is its own transaction: one round trip a chunk. A locking
        CTE picks the rows (FOR UPDATE SKIP LOCKED, run once; as a plain IN (subquery) the
        planner may run it again for every row). The statement's parts see one snapshot: the
        rows it writes results to are "sending", so none of them is claimed again in it.
        Results that need more (a retry's time, a bounce's consent event) go first, in the
        same transaction. SQLite serialises writers, and its UPDATE checks again that each row
        is free; RETURNING gives the ids claimed, which are then loaded.
        """
        due, params = self._due(digest_id, now, after, id_range, set(exclude))
        if self.postgresql:
            return self._claim_postgresql(conn, digest_id, token, due, [*params, size], now, done, backoff)

        # The guard after the subquery names no digest_id: with it, SQLite drove the UPDATE by
        # the (digest_id, state, id) index over every queued row, not by the ids chosen.
        sql = (f"UPDATE delivery SET claimed_by = ?, state = 'sending', updated_at = ? WHERE id IN"
               f" (SELECT id FROM delivery WHERE {due} ORDER BY id LIMIT ?)"
               " AND state = 'queued' AND claimed_by IS NULL RETURNING id")
        args = [token, self._time(now), *params, size]

        def claim_and_load(cursor) -> list[Item]:
            if done is not None:
                self._write(cursor, digest_id, done, token, backoff)
            cursor.execute(sql, args)
            taken = [row[0] for row in cursor.fetchall()]
            return self._load(cursor, taken, token) if taken else []

        return self._run(conn, claim_and_load)

    def _claim_postgresql(self, conn, digest_id: int, token: str, due: str, due_params: list, now: datetime,
                          done: Results | None, backoff) -> list[Item]:
        done = done or Results()
        back = done.untried + done.handed_on
        sql = ("WITH"
               f" sent AS (UPDATE delivery SET {_SENT} WHERE id = ANY(?) AND claimed_by = ?),"
               f" skipped AS (UPDATE delivery SET {_SKIPPED} WHERE id = ANY(?) AND claimed_by = ?),"
               f" back AS (UPDATE delivery SET {_BACK} WHERE id = ANY(?) AND claimed_by = ?),"
               f" chosen AS (SELECT id FROM delivery WHERE {due} ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED),"
               " taken AS (UPDATE delivery SET claimed_by = ?, state = 'sending', updated_at = ?"
               " FROM chosen WHERE delivery.id = chosen.id"
               " RETURNING delivery.id, delivery.attempts, delivery.subscriber_id)"
               f" SELECT t.id, t.attempts, {_RECIPIENT_COLUMNS},"
               " ARRAY(SELECT topic_id FROM subscriber_topic WHERE subscriber_id = s.id ORDER BY topic_id)"
               " FROM taken t JOIN subscriber s ON s.id = t.subscriber_id ORDER BY t.id")
        args = [now, now, done.sent, token, now, done.skipped, token, now, back, token,
                *due_params, token, now]

        rest = Results(retry=done.retry, failed=done.failed, bounced=done.bounced)

        def claim(cursor) -> list[Item]:
            if rest:
                self._write(cursor, digest_id, rest, token, backoff)
            cursor.execute(self._sql(sql), args)
            return [_item(row, row[7]) for row in cursor.fetchall()]

        return self._run(conn, claim, one_statement=not rest)

    def _load(self, cursor, taken: list[int], token: str) -> list[Item]:
        ids, id_params = self._in("d.id", taken)
        cursor.execute(self._sql(
            f"SELECT d.id, d.attempts, {_RECIPIENT_COLUMNS}"
            " FROM delivery d JOIN subscriber s ON s.id = d.subscriber_id"
            f" WHERE {ids} AND d.claimed_by = ? AND d.state = 'sending' ORDER BY d.id"),
            [*id_params, token])
        rows = cursor.fetchall()
        if not rows:
            return []
        topics: dict[int, list[int]] = {}
        who, who_params = self._in("subscriber_id", sorted({row[2] for row in rows}))
        cursor.execute(self._sql(f"SELECT subscriber_id, topic_id FROM subscriber_topic WHERE {who}"),
                       who_params)
        for subscriber_id, topic_id in cursor.fetchall():
            topics.setdefault(subscriber_id, []).append(topic_id)
        return [_item(row, sorted(topics.get(row[2], ()))) for row in rows]

    def release_claim(self, conn, digest_id: int, token: str) -> None:
        """Hand back every open row of the claim, as a crash would."""
        self._run(conn, lambda cursor: cursor.execute(self._sql(
            "UPDATE delivery SET state = 'queued', claimed_by = NULL, updated_at = ?"
            " WHERE digest_id = ? AND claimed_by = ? AND state IN ('queued', 'sending')"),
            [self._time(utcnow()), digest_id, token]))

    # results

    def record(self, conn, digest_id: int, results: Results, token: str, *,
               backoff: Callable[[int], timedelta]) -> None:
        """The results of a chunk, in a transaction of their own (a sender that stops)."""
        self._run(conn, lambda cursor: self._write(cursor, digest_id, results, token, backoff))

    def _write(self, cursor, digest_id: int, results: Results, token: str,
               backoff: Callable[[int], timedelta] | None) -> None:
        """The results, for the rows `token` still holds: a row taken back meanwhile (a claim
        that looked dead) is another sender's now, and this write must not undo its work."""
        now = self._time(utcnow())
        moment = utcnow()

        def each(ids: Sequence[int], assignments: str, params: Sequence = ()) -> None:
            if ids:
                clause, values = self._in("id", ids)
                cursor.execute(self._sql(f"UPDATE delivery SET {assignments}"
                                         f" WHERE {clause} AND claimed_by = ?"), [*params, *values, token])

        each(results.sent, _SENT, [now, now])
        each(results.skipped, _SKIPPED, [now])
        for delivery_id, attempts, reply in results.retry:
            assert backoff is not None, "a retry needs the back-off"
            each([delivery_id], "state = 'queued', claimed_by = NULL, attempts = ?, last_reply = ?,"
                 " next_attempt_at = ?, updated_at = ?",
                 [attempts, reply, self._time(moment + backoff(attempts)), now])
        for delivery_id, attempts, reply in results.failed:
            each([delivery_id], "state = 'failed', claimed_by = NULL, attempts = ?, last_reply = ?,"
                 " updated_at = ?", [attempts, reply, now])
        for delivery_id, attempts, reply in results.bounced:
            each([delivery_id], "state = 'bounced', claimed_by = NULL, attempts = ?, last_reply = ?,"
                 " updated_at = ?", [attempts, reply, now])
        # Not tried (a stop, a pause) or not for this process: back to the queue, never sent.
        each(results.untried + results.handed_on, _BACK, [now])

    # the send's state

    def status(self, conn, digest_id: int) -> str | None:
        def read(cursor):
            cursor.execute(self._sql("SELECT status FROM digest WHERE id = ?"), [digest_id])
            row = cursor.fetchone()
            return row[0] if row else None

        return self._run(conn, read)

    def open_rows(self, conn, digest_id: int, id_range: tuple[int, int] | None = None,
                  exclude: Iterable[int] = ()) -> tuple[int, datetime | None, int]:
        """(rows still open, the earliest retry time among them, how many are claimed)."""
        sql, params = self._rows("digest_id = ? AND state IN ('queued', 'sending')", [digest_id], id_range,
                                 set(exclude))

        def read(cursor):
            cursor.execute(self._sql(f"SELECT count(*), min(next_attempt_at), count(claimed_by)"
                                     f" FROM delivery WHERE {sql}"), params)
            left, next_at, claimed = cursor.fetchone()
            return left, self._read_time(next_at), claimed

        return self._run(conn, read)

    def pinning_done(self, conn, digest_id: int) -> bool:
        """Every recipient is pinned (`recipient_count` is set after the last chunk)."""
        def read(cursor) -> bool:
            cursor.execute(self._sql("SELECT (SELECT recipient_count FROM digest WHERE id = ?)"
                                     " >= (SELECT count(*) FROM delivery WHERE digest_id = ?)"),
                           [digest_id, digest_id])
            return bool(cursor.fetchone()[0])

        return self._run(conn, read)

    def pause(self, conn, digest_id: int, reason: str) -> bool:
        """"sending" -> "paused" with the reason; True for the one caller that paused it."""
        def write(cursor) -> bool:
            cursor.execute(self._sql("UPDATE digest SET status = 'paused', error = ?"
                                     " WHERE id = ? AND status = 'sending'"), [reason, digest_id])
            return bool(cursor.rowcount)

        return self._run(conn, write)
