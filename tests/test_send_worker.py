"""Send workers: the extra sending processes of a large send, without Flask or SQLAlchemy."""

from __future__ import annotations

import re
import subprocess
import sys
import threading

from delivery_helpers import ROOT, fault_server, ledger, seed
from sqlalchemy import select

from newsletter import delivery
from newsletter.delivery.send import send_job
from newsletter.digests import DigestRenderer
from newsletter.engine import worker as send_worker
from newsletter.engine.sending import SendSettings
from newsletter.extensions import db
from newsletter.models import Delivery, Digest, Subscriber


def test_the_send_worker_imports_neither_flask_nor_sqlalchemy():
    """What keeps a worker small: a Python, its database driver, and our Flask-free modules."""
    code = ("import sys, newsletter.engine.worker;"
            " print(','.join(sorted({m.split('.')[0] for m in sys.modules}"
            " & {'flask', 'sqlalchemy', 'jinja2', 'werkzeug', 'babel', 'css_inline', 'celery'})))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            check=True)
    assert loaded.stdout.strip() == ""


def _message_id_salts(handler) -> set[str]:
    """The per-process part of each Message-ID (time.counter.salt@domain): one per sending process."""
    with handler.lock:
        contents = [content for _, _, content in handler.messages]
    return {re.search(rb"Message-ID: <\w+\.\w+\.(\w+)@", content).group(1).decode() for content in contents}


def test_a_send_with_two_processes_sends_from_both_each_message_once(make_app, smtp_server):
    app = make_app(MAIL_URL=smtp_server.url, SEND_CONNECTIONS=4, SEND_INFLIGHT=10, SEND_BATCH_SIZE=100,
                   SEND_POLL_SECONDS=0.1)
    handler = fault_server(smtp_server)
    handler.delay = 0.002  # slow enough for the worker to start before this process is done
    with app.app_context():
        digest_id = seed(1200)
        progress = delivery.send_digest(digest_id, processes=2)
        assert progress["status"] == "done" and progress["sent"] == 1200
    counts = handler.counts()
    assert len(counts) == 1200 and max(counts.values()) == 1
    assert len(_message_id_salts(handler)) == 2  # this process and one worker both sent


def test_a_worker_leaves_a_variant_it_was_not_given_to_the_app_process(make_app, smtp_server):
    """A variant that appeared after the worker got its job (say, a changed preference): the
    worker hands those rows back and never claims them again; the app's sender sends them."""
    app = make_app(MAIL_URL=smtp_server.url, SEND_INFLIGHT=5, SEND_BATCH_SIZE=20, SEND_POLL_SECONDS=0.05)
    handler = fault_server(smtp_server)
    with app.app_context():
        digest_id = seed(30)  # every third subscriber reads English
        delivery.start_send(digest_id)
        renderer = DigestRenderer(db.session.get(Digest, digest_id))
        settings = SendSettings.from_config(app.config)
        job = delivery.worker_jobs(renderer, [send_job(digest_id, settings, 2, 0)])[0]
        english = {key for key in job.variants if key[0] == "en"}
        assert english and len(job.variants) > len(english)
        job.variants = {key: message for key, message in job.variants.items() if key not in english}
        assert send_worker.run(job, threading.Event()) == 0  # ends once only the others' rows are left
        rows = db.session.execute(select(Subscriber.language, Delivery.state, Delivery.claimed_by)
                                  .join(Delivery, Delivery.subscriber_id == Subscriber.id)).all()
        assert {(language, state, claim) for language, state, claim in rows} == {
            ("sv", "sent", None), ("en", "queued", None)}
        assert len(handler.counts()) == 20
        assert delivery.send_digest(digest_id)["status"] == "done"
        assert ledger(digest_id) == {"sent": 30}
    counts = handler.counts()
    assert len(counts) == 30 and max(counts.values()) == 1


# Enough that the worker starts before the first process has signed them all (about 1 ms each).
DKIM_N = 1000


def test_a_send_worker_dkim_signs_its_messages(make_app, smtp_server, tmp_path):
    import dkim
    from bounces_helpers import dkim_dns_record, rsa_key

    key = rsa_key(tmp_path / "dkim.pem")
    record = dkim_dns_record(key)
    app = make_app(MAIL_URL=smtp_server.url, SEND_CONNECTIONS=2, SEND_INFLIGHT=5, SEND_BATCH_SIZE=20,
                   DKIM_SELECTOR="nl2026", DKIM_PRIVATE_KEY=str(key))
    domain = app.config["MAIL_FROM"].rpartition("@")[2].rstrip(">")
    handler = fault_server(smtp_server)
    with app.app_context():
        digest_id = seed(DKIM_N)
        assert delivery.send_digest(digest_id, processes=2)["sent"] == DKIM_N
    assert len(_message_id_salts(handler)) == 2  # both processes sent and signed
    with handler.lock:
        contents = [content for _, _, content in handler.messages]

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == f"nl2026._domainkey.{domain}.".encode() else None

    assert len(contents) == DKIM_N and all(dkim.verify(content, dnsfunc=dnsfunc) for content in contents)


def _workers_of(pid: int) -> list[int]:
    """The send workers this process started (from /proc: their parent and command line)."""
    import os

    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat, open(f"/proc/{entry}/cmdline", "rb") as cmd:
                parent = int(stat.read().rsplit(b")", 1)[1].split()[1])
                command = cmd.read()
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid and b"newsletter.engine.worker" in command:
            found.append(int(entry))
    return found


def test_a_worker_killed_mid_send_is_taken_over_by_the_app_process(make_app, smtp_server):
    import os
    import signal

    from delivery_helpers import wait_for

    inflight, worker_connections = 10, 2
    app = make_app(MAIL_URL=smtp_server.url, SEND_CONNECTIONS=4, SEND_INFLIGHT=inflight, SEND_BATCH_SIZE=100,
                   SEND_POLL_SECONDS=0.1)
    handler = fault_server(smtp_server)
    handler.delay = 0.003
    n = 2000
    with app.app_context():
        digest_id = seed(n)
    result: dict = {}

    def send() -> None:
        with app.app_context():
            result.update(delivery.send_digest(digest_id, processes=2))

    sending = threading.Thread(target=send)
    sending.start()
    assert wait_for(lambda: len(_message_id_salts(handler)) == 2, 30)  # the worker sends too
    (worker,) = _workers_of(os.getpid())
    os.kill(worker, signal.SIGKILL)
    sending.join(120)
    assert result["status"] == "done" and result["sent"] == n
    counts = handler.counts()
    assert len(counts) == n  # nobody lost with the worker
    assert sum(counts.values()) - n <= inflight * worker_connections  # at most its messages in flight
