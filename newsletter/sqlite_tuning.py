"""SQLite settings for a database that several processes write (web, scheduler, senders).

WAL lets readers and one writer work at the same time, and with synchronous=NORMAL a
commit no longer waits for the disk (fsync happens at checkpoints): a process that
crashes or is killed loses nothing committed; a power cut may lose the last commits
(for the send ledger: the messages of those moments may be sent again). PostgreSQL is
what production should use; this keeps SQLite usable for a bulk send (a commit per
SEND_INFLIGHT messages) instead of waiting tens of milliseconds for every commit.
"""

from __future__ import annotations

from sqlalchemy import event
from sqlalchemy.engine import Engine


def _on_connect(dbapi_connection, connection_record) -> None:
    module = type(dbapi_connection).__module__
    if not module.startswith(("sqlite3", "pysqlite")):
        return
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def tune_engine(engine: Engine) -> None:
    """WAL and synchronous=NORMAL on every new connection of this engine, if it is SQLite."""
    if engine.dialect.name == "sqlite" and not event.contains(engine, "connect", _on_connect):
        event.listen(engine, "connect", _on_connect)
