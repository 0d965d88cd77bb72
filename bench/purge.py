"""Benchmark: the retention purge of 1,000,000 delivery rows, its time and peak memory.

    .venv/bin/python bench/purge.py [--rows 1000000] [--batch 5000] [--postgres URL]

Builds a throwaway database (SQLite in a temporary directory; PostgreSQL too when
--postgres or BENCH_DATABASE_URL / TEST_DATABASE_URL is set) with 10,000 confirmed
subscribers and `rows / 10,000` finished sends to all of them, every delivery row old
enough to be rolled up, then times `retention.purge()`. Prints the rows rolled up, the
batches, the wall and CPU time, and the process's peak memory during the purge alone
(VmHWM after resetting it through /proc/self/clear_refs) and what Python allocated at
most (tracemalloc, in a second, smaller run, as it slows everything down).
"""

from __future__ import annotations

import argparse
import os
import resource
import secrets
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, func, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from config import Config  # noqa: E402
from newsletter import create_app, delivery  # noqa: E402
from newsletter import privacy as retention  # noqa: E402
from newsletter.extensions import db  # noqa: E402
from newsletter.models import Delivery, SendTotal  # noqa: E402

PEOPLE = 10_000


def _kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM to the current RSS (Linux 4.0+)
        return True
    except OSError:
        return False


def fill(rows: int) -> None:
    """PEOPLE subscribers and rows // PEOPLE finished sends to all of them, 200 days ago."""
    old = datetime.now(UTC) - timedelta(days=200)
    sends = max(rows // PEOPLE, 1)
    db.session.execute(text(
        "INSERT INTO subscriber (id, uid, email, name, status, language, created_at, generation) "
        "SELECT n, 'u' || n, 'p' || n || '@example.se', '', 'confirmed', 'sv', :t, 0 FROM ("
        + _numbers(PEOPLE) + ") AS numbers"), {"t": old})
    for d in range(1, sends + 1):
        db.session.execute(text(
            "INSERT INTO digest (id, status, subject_sv, subject_en, intro, created_at, compiled_for, "
            "recipient_count, error, finished_at) "
            "VALUES (:d, 'done', 'Nytt', 'New', '', :t, :t, :n, '', :t)"),
            {"d": d, "t": old, "n": PEOPLE})
        db.session.execute(text(
            "INSERT INTO delivery (digest_id, subscriber_id, state, attempts, last_reply, updated_at, "
            "sent_at) SELECT :d, id, "
            "CASE WHEN id % 50 = 0 THEN 'bounced' WHEN id % 97 = 0 THEN 'failed' ELSE 'sent' END, "
            "1, '250 OK', :t, :t FROM subscriber"), {"d": d, "t": old})
        db.session.commit()


def _numbers(n: int) -> str:
    if db.engine.dialect.name == "postgresql":
        return f"SELECT generate_series(1, {n}) AS n"
    return f"WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < {n}) SELECT n FROM c"


def run_backend(name: str, url: str, rows: int, batch: int, instance: Path) -> None:
    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "MAIL_URL": "memory://", "MAIL_QUEUE_THREAD": False,
                      "SECRET_KEY": "bench", "INSTANCE_PATH": str(instance), "RETENTION_BATCH_SIZE": batch},
                     config_class=Config)
    with app.app_context():
        db.drop_all()
        db.create_all()
        started = time.perf_counter()
        fill(rows)
        total = db.session.execute(select(func.count()).select_from(Delivery)).scalar_one()
        before = delivery.send_progress(1)
        print(f"\n{name}: {total:,} delivery rows in {time.perf_counter() - started:.1f} s; purging "
              f"in batches of {batch:,}")
        db.session.remove()
        rss_before = _kib("VmRSS")
        measured = reset_peak()
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        report = retention.purge()
        wall = time.perf_counter() - started
        used = resource.getrusage(resource.RUSAGE_SELF)
        peak = _kib("VmHWM")
        after = delivery.send_progress(1)
        left = db.session.execute(select(func.count()).select_from(Delivery)).scalar_one()
        sent = db.session.execute(select(func.sum(SendTotal.sent))).scalar_one()
        assert left == 0 and report.deliveries == total, (left, report.deliveries)
        assert {k: after[k] for k in ("sent", "failed", "bounced", "total")} == {
            k: before[k] for k in ("sent", "failed", "bounced", "total")}
        print(f"  rolled up {report.deliveries:,} rows in {len(report.batches)} batches: {wall:.1f} s wall, "
              f"{used.ru_utime - cpu.ru_utime + used.ru_stime - cpu.ru_stime:.1f} s CPU, "
              f"{report.deliveries / wall:,.0f} rows/s; totals kept ({sent:,} sent)")
        if measured:
            print(f"  RSS before the purge {rss_before / 1024:.0f} MB, peak during it {peak / 1024:.0f} MB "
                  f"(+{(peak - rss_before) / 1024:.1f} MB)")
        # Python's own allocations at most, on a tenth of the rows (tracemalloc is slow).
        db.session.remove()  # (its open transaction would keep DROP TABLE waiting on PostgreSQL)
        db.drop_all()
        db.create_all()
        fill(rows // 10)
        db.session.remove()
        tracemalloc.start()
        small = retention.purge()
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"  tracemalloc: at most {top / 1024 / 1024:.1f} MB allocated by Python while purging "
              f"{small.deliveries:,} rows (batches of {batch:,})")
        db.session.remove()
        db.drop_all()
        db.engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=Config.RETENTION_BATCH_SIZE)
    parser.add_argument("--postgres", default=os.environ.get("BENCH_DATABASE_URL")
                        or os.environ.get("TEST_DATABASE_URL"))
    parser.add_argument("--only", choices=("sqlite", "postgresql"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        if args.only != "postgresql":
            run_backend("SQLite", f"sqlite:///{tmp_path / 'bench.db'}", args.rows, args.batch, tmp_path)
        if args.postgres and args.only != "sqlite":
            base = make_url(args.postgres).set(drivername="postgresql+psycopg")
            name = f"nl_bench_purge_{secrets.token_hex(3)}"
            admin = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            try:
                run_backend("PostgreSQL", base.set(database=name).render_as_string(hide_password=False),
                            args.rows, args.batch, tmp_path)
            finally:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                admin.dispose()


if __name__ == "__main__":
    main()
