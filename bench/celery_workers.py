"""One send shared by several Celery workers on this machine (loopback): how much each adds.

    .venv/bin/python bench/celery_workers.py --db postgresql --n 20000 --workers 1,2,3

For each worker count: a fresh database with N subscribers, that many `celery worker`
processes (-P threads, --concurrency 2 each) on a Redis queue of the run's own, then
`flask digest send` (which hands the send to them and follows it); the rate is measured at
the SMTP sink (Postfix's smtp-sink when installed). The sink and the database share the
machine's cores with the workers, so past some count adding workers adds nothing: that is
the point where they, not the senders, are the limit.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from send_digest import (  # noqa: E402
    MAIL_FROM,
    PUBLIC_URL,
    RESULTS,
    ROOT,
    Database,
    Sink,
    ensure_postfix_tools,
    make_app,
    seed,
)

CELERY = str(Path(sys.executable).with_name("celery"))
FLASK = str(Path(sys.executable).with_name("flask"))


def run(db: str, pg_url: str, n: int, workers: int, sink: Sink, broker: str) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="nl-celery-bench-"))
    database = Database(db, pg_url, workdir)
    queue = f"nl-bench-{secrets.token_hex(4)}"
    env = {**os.environ, "DATABASE_URL": database.url, "MAIL_URL": f"smtp://127.0.0.1:{sink.port}",
           "MAIL_FROM": MAIL_FROM, "PUBLIC_URL": PUBLIC_URL, "SECRET_KEY": "bench-secret",
           "INSTANCE_PATH": str(workdir / "instance"), "MAIL_QUEUE_THREAD": "0", "FEED_URLS": "",
           "LOG_LEVEL": "WARNING", "BROKER_URL": broker, "CELERY_QUEUE": queue, "SEND_PROCESSES": "1",
           "SEND_CONNECTIONS": str(2 * workers), "SEND_BATCH_SIZE": "1000", "PYTHONPATH": str(ROOT)}
    processes = []
    try:
        seed(make_app(database.url, workdir / "instance"), n, 12, 25)
        for number in range(workers):
            processes.append(subprocess.Popen(
                [CELERY, "-A", "newsletter.tasks", "worker", "-Q", queue, "-P", "threads", "-c", "2",
                 "-l", "WARNING", "--without-heartbeat", "--without-mingle", "--without-gossip",
                 "-n", f"bench{number}-{queue}@%h"], cwd=ROOT, env=env,
                stdout=subprocess.DEVNULL, stderr=open(workdir / f"worker{number}.log", "wb")))
        time.sleep(3)  # the workers connect to the broker
        phase = sink.start_phase()
        started = time.monotonic()
        send = subprocess.run([FLASK, "--app", "wsgi", "digest", "send"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=1800)
        wall = time.monotonic() - started
        phase = sink.end_phase(expected=n)
        window = (phase.last - phase.first) if phase.first and phase.last else None
        return {"workers": workers, "n": n, "exit_code": send.returncode, "at_sink": phase.count,
                "wall_s": round(wall, 2), "rate": round((phase.count - 1) / window, 1) if window else None,
                "stdout": send.stdout[-300:], "stderr": send.stderr[-300:]}
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        database.drop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="postgresql")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/12")
    args = parser.parse_args()
    sink = Sink("postfix" if ensure_postfix_tools() else "asyncio")
    results = []
    try:
        for workers in (int(w) for w in args.workers.split(",")):
            result = run(args.db, args.pg_url, args.n, workers, sink, args.broker)
            results.append(result)
            print(f"{workers} worker(s): {result['at_sink']:,} at the sink in {result['wall_s']} s, "
                  f"{result['rate']} msg/s (exit {result['exit_code']})", flush=True)
    finally:
        sink.close()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"celery-workers-{args.db}-{args.n}.json").write_text(json.dumps(results, indent=2))
    return 0 if all(r["exit_code"] == 0 and r["at_sink"] == args.n for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
