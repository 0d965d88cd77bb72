"""Signups per second: the project's `POST /subscribe` (JSON, as an embedded form sends it)
against a bare Flask app inserting the same address (bench/bare_signup.py), both under
gunicorn -w 2, on the same database, in the same run.

    .venv/bin/python bench/signups.py --db sqlite
    .venv/bin/python bench/signups.py --db postgresql

Each side gets --requests new addresses from --concurrency client threads (keep-alive
connections); prints req/s and p50/p95/p99 latency, and exits 1 if the project is below
50 % of the bare app or its p99 is above 25 ms.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from send_digest import ROOT, Database, free_port  # noqa: E402

GUNICORN = str(Path(sys.executable).with_name("gunicorn"))


def serve(module: str, env: dict, workers: int, log: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    with open(log, "ab") as out:
        process = subprocess.Popen([GUNICORN, "-w", str(workers), "-b", f"127.0.0.1:{port}", module],
                                   cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process, port
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{module} did not start: {log.read_text()[-2000:]}")


def load(port: int, prefix: str, requests: int, concurrency: int, extra: dict) -> dict:
    """`requests` POSTs of new addresses from `concurrency` threads; latencies in ms."""
    latencies: list[float] = []
    failures: list[int] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def worker() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = []
        for n in counter_next():
            body = json.dumps({"email": f"{prefix}{n}@bench.example", "topics": ["blogg"], "language": "sv",
                               **extra})
            started = time.perf_counter()
            connection.request("POST", "/subscribe", body=body, headers={
                "Content-Type": "application/json", "Accept": "application/json"})
            response = connection.getresponse()
            response.read()
            mine.append((time.perf_counter() - started) * 1000)
            if response.status != 200:
                with lock:
                    failures.append(response.status)
        connection.close()
        with lock:
            latencies.extend(mine)

    def counter_next():
        while True:
            with lock:
                n = next(counter, None)
            if n is None:
                return
            yield n

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * (len(latencies) - 1)))], 1)

    return {"requests": len(latencies), "failures": len(failures), "statuses": sorted(set(failures)),
            "rps": round(len(latencies) / wall, 1), "p50_ms": round(statistics.median(latencies), 1),
            "p95_ms": pct(0.95), "p99_ms": pct(0.99)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="nl-signup-bench-"))
    database = Database(args.db, args.pg_url, workdir)
    log = workdir / "server.log"
    result: dict = {"db": args.db, "requests": args.requests, "concurrency": args.concurrency}
    env = {**os.environ, "DATABASE_URL": database.url, "SECRET_KEY": "bench-secret",
           "INSTANCE_PATH": str(workdir / "instance"), "MAIL_URL": f"outbox://{workdir / 'outbox'}",
           "MAIL_QUEUE_THREAD": "0", "LOG_LEVEL": "WARNING", "SIGNUP_MIN_SECONDS": "0",
           "SIGNUP_RATE_PER_IP": "1000000 per minute", "SIGNUP_RATE_PER_ADDRESS": "1000 per minute",
           # The throughput of the signup itself: without the constant-time floor (measured by
           # bench/signups_timing.py).
           "SIGNUP_RESPONSE_SECONDS": "0",
           "PYTHONPATH": str(ROOT)}
    try:
        subprocess.run([str(Path(sys.executable).with_name("flask")), "--app", "wsgi", "db", "upgrade"],
                       cwd=ROOT, env=env, check=True, capture_output=True)
        subprocess.run([sys.executable, "-c", "import bench.bare_signup as b; b.create_table()"],
                       cwd=ROOT, env=env, check=True)
        for name, module in (("bare", "bench.bare_signup:app"), ("project", "wsgi:app"),
                             ("bare again", "bench.bare_signup:app")):
            process, port = serve(module, env, args.workers, log)
            try:
                extra = {}
                if module == "wsgi:app":
                    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                    connection.request("GET", "/subscribe/start")
                    extra = {"started": json.loads(connection.getresponse().read())["started"]}
                    connection.close()
                load(port, f"warm-{name.replace(' ', '')}-", 100, 2, extra)  # imports, first queries
                result[name] = load(port, f"{name.replace(' ', '')}-", args.requests, args.concurrency, extra)
            finally:
                process.terminate()
                process.wait(20)
            print(f"{name:10} {result[name]}", flush=True)
    finally:
        database.drop()
    bare = min(result["bare"]["rps"], result["bare again"]["rps"])
    ratio = result["project"]["rps"] / bare
    result["targets"] = {
        "project >= 50 % of the bare insert": {"value": round(ratio, 2), "ok": ratio >= 0.5},
        "p99 <= 25 ms": {"value": result["project"]["p99_ms"], "ok": result["project"]["p99_ms"] <= 25},
        "no failed request": {"value": result["project"]["failures"],
                              "ok": result["project"]["failures"] == 0},
    }
    for name, verdict in result["targets"].items():
        print(f"  {'ok  ' if verdict['ok'] else 'MISS'} {name}: {verdict['value']}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"signups-{args.db}.json").write_text(json.dumps(result, indent=2))
    return 0 if all(v["ok"] for v in result["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
