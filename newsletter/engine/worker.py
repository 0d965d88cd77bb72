"""A send worker: one more process sending a digest, without Flask or SQLAlchemy.

`delivery.send_digest` starts SEND_PROCESSES - 1 of them for a large send
(`python -m newsletter.engine.worker PARENT_PID`) and writes each its job on stdin
once the variants are rendered: the send's settings, how to reach the database and
the SMTP server, and the prepared variants. The worker then runs the same
`sending.Sender` as its parent, over its own connections. It imports only the
Flask-free modules (`sending`, `ledger`, `links`, `prepared`, `smtp`) and its
database driver, so it costs about 25 MB instead of a forked app's 80.

It dies with its parent (even on kill -9), stops cleanly on SIGTERM/SIGINT, and
leaves to the parent what needs the app: recovering stale claims, pinning,
finishing the send, and the email to the admins when it paused the send for an
error storm (exit status 3).
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from newsletter.engine import logformat
from newsletter.engine.ledger import Database, Ledger
from newsletter.engine.prepared import PreparedMessage
from newsletter.engine.sending import Hooks, Sender, SendJob, VariantRule, prepared_variants
from newsletter.engine.smtp import SMTPTransport

PAUSED = 3  # exit status: this worker paused the send for an error storm (the parent reports it)
STOPPED = 143  # exit status after SIGTERM/SIGINT: left cleanly, resumable


@dataclass
class WorkerJob:
    send: SendJob
    database: Database
    mail_url: str
    rule: VariantRule
    variants: Mapping[tuple[str, frozenset], PreparedMessage]
    log_level: str = "INFO"


class _WorkerHooks(Hooks):
    """A worker runs dry before the parent has pinned everybody: it waits for the pinning
    instead of ending (the parent pins; recovery and finishing are the parent's too)."""

    def __init__(self, ledger: Ledger, digest_id: int, poll_seconds: float, stop: threading.Event) -> None:
        self.ledger = ledger
        self.digest_id = digest_id
        self.poll_seconds = poll_seconds
        self.stop = stop
        self.paused = False

    def pinning_done(self) -> bool:
        conn = self.ledger.connect()
        try:
            return self.ledger.pinning_done(conn, self.digest_id)
        finally:
            conn.close()

    def pin_rest(self) -> None:
        self.stop.wait(self.poll_seconds)

    def paused_for_errors(self) -> None:
        self.paused = True


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the worker notices on its own (getppid)
        pass


def run(job: WorkerJob, stop: threading.Event) -> int:
    """Send the job's share of the digest; the exit status."""
    ledger = Ledger(job.database.dialect, job.database.connect)
    hooks = _WorkerHooks(ledger, job.send.digest_id, job.send.settings.poll_seconds, stop)
    sender = Sender(ledger, job.send, prepared_variants(job.rule, job.variants),
                    lambda: SMTPTransport(job.mail_url), hooks, stop)
    sender.run()
    if hooks.paused:
        return PAUSED
    return STOPPED if stop.is_set() else 0


def main(argv: list[str]) -> int:
    _die_with_parent()
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m newsletter.engine.worker PARENT_PID (the job comes on stdin)",
              file=sys.stderr)
        return 2
    if os.getppid() != int(argv[0]):  # the parent died before PR_SET_PDEATHSIG took effect
        return 1
    try:
        job: WorkerJob = pickle.load(sys.stdin.buffer)
    except EOFError:  # the parent sends on alone (it could not prepare the job, or it stopped)
        return 0
    logformat.configure(job.log_level, os.environ.get("LOG_FORMAT", "text"))  # the parent's environment
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return run(job, stop)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
