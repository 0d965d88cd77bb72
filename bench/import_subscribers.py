"""Benchmark: import (and export) 100,000 subscribers on SQLite and PostgreSQL.

    .venv/bin/python bench/import_subscribers.py [--rows 100000] [--postgres URL]

PostgreSQL is used when --postgres or BENCH_DATABASE_URL / TEST_DATABASE_URL is set
(a throwaway database is created on that server and dropped afterwards). The CSV is
generated into a temporary directory: mixed languages and topics, Swedish names,
and about 1% invalid or duplicate rows. Timed: a pending import (one queued
confirmation per person), a re-import of the same file (everyone already there),
an export, and a --confirmed import into an empty database.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import secrets
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, func, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from config import Config  # noqa: E402
from newsletter import create_app, subscriptions  # noqa: E402
from newsletter.extensions import db  # noqa: E402
from newsletter.models import ConsentEvent, QueuedEmail, Subscriber  # noqa: E402
from newsletter.subscriptions import imports  # noqa: E402

FIRST = ["Anna", "Erik", "Maria", "Lars", "Karin", "Olle", "Åsa", "Jörgen", "Märta", "Sven", "Lena", "Björn"]
LAST = ["Lindqvist", "Nilsson", "Öberg", "Holm", "Berg", "Ström", "Ek", "Åkesson", "Sjögren", "Lund"]
TOPICS = ["", "nyheter", "blogg", "nyheter;pressmeddelanden", "nyheter;blogg;pressmeddelanden"]


def write_csv(path: Path, rows: int) -> None:
    """`rows` data rows of our import layout; every 100th row is invalid or a duplicate."""
    rng = random.Random(42)
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write("email,name,language,topics\n")
        for i in range(rows):
            first, last = rng.choice(FIRST), rng.choice(LAST)
            if i % 100 == 99:
                bad = ["not-an-address", f"person{i - 1}@example{(i - 1) % 13}.se", f"x{i}@example.se\x07",
                       f"p{i}@example.se"][i // 100 % 4]
                language = "xx" if bad.startswith("p") else "sv"
                out.write(f"{bad},{first} {last},{language},\n")
                continue
            language = "sv" if rng.random() < 0.8 else "en"
            out.write(f"person{i}@example{i % 13}.se,{first} {last},{language},{rng.choice(TOPICS)}\n")


def counts() -> str:
    def n(model) -> int:
        return db.session.execute(select(func.count()).select_from(model)).scalar_one()

    return f"{n(Subscriber)} subscribers, {n(QueuedEmail)} queued, {n(ConsentEvent)} events"


def timed(label: str, action) -> float:
    """Wall time (and this process's CPU time: the database server's is not in it)."""
    start, cpu = time.perf_counter(), time.process_time()
    result = action()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"  {label:34} {elapsed:7.2f} s wall {cpu:6.2f} s cpu   {result}")
    return elapsed


def run_backend(name: str, url: str, csv_path: Path, rows: int) -> dict[str, float]:
    print(f"\n{name}  ({rows:,} rows, {csv_path.stat().st_size / 1e6:.1f} MB)")
    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "MAIL_URL": "memory://", "MAIL_QUEUE_THREAD": False,
                      "INSTANCE_PATH": str(csv_path.parent / f"instance-{name}")}, config_class=Config)
    results = {}
    with app.app_context():
        db.drop_all()
        db.create_all()

        def run_import(confirmed: bool):
            with csv_path.open("rb") as stream:
                report = imports.import_csv(stream, confirmed=confirmed, source="cli", filename=csv_path.name)
            return (f"+{report.added} ={report.updated} skipped {report.skipped} "
                    f"({len(report.errors)} invalid); {counts()}")

        results["import pending"] = timed("import (pending, confirmations)", lambda: run_import(False))
        results["re-import"] = timed("re-import (all already there)", lambda: run_import(False))
        export_path = csv_path.parent / f"export-{name}.csv"

        def run_export():
            with export_path.open("w", encoding="utf-8", newline="") as out:
                return f"{subscriptions.export_subscribers_csv(out)} rows"

        results["export"] = timed("export", run_export)
        db.session.remove()
        db.drop_all()
        db.create_all()
        results["import confirmed"] = timed("import --confirmed (empty db)", lambda: run_import(True))
        db.session.remove()
        db.drop_all()
        db.engine.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--postgres", default=os.environ.get("BENCH_DATABASE_URL")
                        or os.environ.get("TEST_DATABASE_URL"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        csv_path = Path(tmp) / "subscribers.csv"
        start = time.perf_counter()
        write_csv(csv_path, args.rows)
        print(f"generated {csv_path.name} in {time.perf_counter() - start:.2f} s")
        run_backend("sqlite", f"sqlite:///{Path(tmp) / 'bench.db'}", csv_path, args.rows)
        if args.postgres:
            base = make_url(args.postgres).set(drivername="postgresql+psycopg")
            name = f"nl_bench_{os.getpid()}_{secrets.token_hex(3)}"
            admin = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            try:
                run_backend("postgresql", base.set(database=name).render_as_string(hide_password=False),
                            csv_path, args.rows)
            finally:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                admin.dispose()
        else:
            print("\n(no PostgreSQL: pass --postgres URL or set BENCH_DATABASE_URL)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak memory of the process: {peak:.0f} MB")


if __name__ == "__main__":
    main()
