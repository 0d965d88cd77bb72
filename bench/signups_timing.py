"""Benchmark: how long `POST /subscribe` takes for a new, pending, confirmed and unsubscribed
address, in one run; prints the median per state and whether they are within 20 % of each other.

    .venv/bin/python bench/signups_timing.py [--rounds 40] [--floor 0.25] [--database URL]

Run with `--floor 0` to see what the answer's time tells without SIGNUP_RESPONSE_SECONDS.
The signups go through the real app over HTTP on loopback (werkzeug's threaded server), in
interleaved order, each with a fresh form stamp. The database is a throwaway SQLite file unless
--database names another (its tables are dropped and created).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

from config import Config  # noqa: E402
from newsletter import create_app, subscriptions  # noqa: E402
from newsletter.extensions import db  # noqa: E402
from newsletter.models import Subscriber  # noqa: E402

STATES = ("new", "pending", "confirmed", "unsubscribed")


def _app(database: str, floor: float, folder: str):
    app = create_app({
        "SQLALCHEMY_DATABASE_URI": database, "INSTANCE_PATH": folder, "SECRET_KEY": "bench",
        "MAIL_URL": "memory://", "MAIL_QUEUE_THREAD": False, "RATELIMIT_ENABLED": False,
        "SIGNUP_MIN_SECONDS": 0, "SIGNUP_RESPONSE_SECONDS": floor, "LOG_LEVEL": "WARNING",
    }, config_class=Config)
    with app.app_context():
        db.drop_all()
        db.create_all()
    return app


def _seed(app, rounds: int) -> dict[str, list[str]]:
    """Addresses in each state; "new" ones are not in the database."""
    addresses = {state: [f"{state}{n}@bench.example.se" for n in range(rounds)] for state in STATES}
    with app.app_context():
        for state in ("pending", "confirmed", "unsubscribed"):
            for email in addresses[state]:
                db.session.add(Subscriber(email=email, status=state, language="sv"))
        db.session.commit()
        assert subscriptions  # the domain package is what the app calls
    return addresses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--floor", type=float, default=0.25, help="SIGNUP_RESPONSE_SECONDS")
    parser.add_argument("--database", default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        database = args.database or f"sqlite:///{Path(folder) / 'bench.db'}"
        app = _app(database, args.floor, folder)
        addresses = _seed(app, args.rounds)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_port}"
        session = requests.Session()
        times: dict[str, list[float]] = {state: [] for state in STATES}
        try:
            for n in range(args.rounds):
                for state in STATES:
                    started_stamp = session.get(f"{base}/subscribe/start").json()["started"]
                    body = {"email": addresses[state][n], "topics": ["nyheter"], "language": "sv",
                            "started": started_stamp}
                    began = time.perf_counter()
                    answer = session.post(f"{base}/subscribe", json=body,
                                          headers={"Accept": "application/json"})
                    times[state].append(time.perf_counter() - began)
                    assert answer.status_code == 200 and answer.json()["ok"], answer.text
        finally:
            server.shutdown()
    medians = {state: statistics.median(values) * 1000 for state, values in times.items()}
    print(f"POST /subscribe, {args.rounds} rounds, SIGNUP_RESPONSE_SECONDS={args.floor}, "
          f"{'SQLite' if database.startswith('sqlite') else database.split(':', 1)[0]}")
    for state in STATES:
        print(f"  {state:13} median {medians[state]:7.1f} ms")
    spread = max(medians.values()) / min(medians.values())
    verdict = "within 20 %" if spread <= 1.2 else "NOT within 20 %"
    print(f"  slowest / fastest median: {spread:.2f} ({verdict})")
    return 0 if spread <= 1.2 else 1


if __name__ == "__main__":
    sys.exit(main())
