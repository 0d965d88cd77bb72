"""The admin, the API, the exports and the dry run at a million subscribers.

    .venv/bin/python bench/admin_at_scale.py --db postgresql --n 1000000
    .venv/bin/python bench/admin_at_scale.py --db sqlite --n 1000000

Seeds N subscribers with topics (PostgreSQL: COPY; SQLite: executemany), then times every
admin list, filter and search page, the dashboard, the API lists (p50/p95 over --repeat
requests through the app, in this process), both CSV exports (wall time and peak RSS above
idle) and `digest send --dry-run`'s planning; each beside a bare baseline from the same run
(the page's own SQL alone; COPY TO for the exports; a COUNT for the dry run). Prints a table
and writes bench/results/admin-<db>-<n>.json; exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from send_digest import RESULTS, Database, make_app  # noqa: E402

TARGETS = {"page_p95_ms": 150, "export_rss_mb": 50, "dry_run_s": 5, "dry_run_rss_mb": 150}
PASSWORD = "a long bench password"
CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"|value="([^"]+)"[^>]*name="csrf_token"')


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class PeakRss:
    """Samples this process's RSS every 10 ms while it runs: the peak above where it started."""

    def __enter__(self):
        self.start = self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())
        self.above = round(self.peak - self.start, 1)


# --- seeding ----------------------------------------------------------------------------------


def seed(app, n: int) -> float:
    """N subscribers: 80 % confirmed, 10 % pending, 7 % unsubscribed, 3 % bounced; 60 % follow
    every topic (none chosen), the rest one or two; confirmations spread over a year."""
    from sqlalchemy import text

    from newsletter.extensions import db
    from newsletter.subscriptions.topics import seed_topics

    started = time.monotonic()
    rng = random.Random(7)
    now = datetime.now(UTC)
    with app.app_context():
        db.create_all()
        seed_topics()
        topic_ids = list(db.session.execute(text("SELECT id FROM topic ORDER BY position")).scalars())
        domains = ("example.com", "example.org", "post.example.se", "mail.example.net")

        def rows():
            for i in range(1, n + 1):
                roll = rng.random()
                status = ("confirmed" if roll < 0.8 else "pending" if roll < 0.9 else
                          "unsubscribed" if roll < 0.97 else "bounced")
                created = now - timedelta(seconds=rng.randrange(365 * 86400))
                confirmed = created + timedelta(minutes=5) if status != "pending" else None
                left = confirmed + timedelta(days=rng.randrange(1, 30)) if status == "unsubscribed" else None
                yield (i, f"{i:024x}", f"reader{i:07d}@{domains[i % 4]}", f"Läsare {i}", status,
                       "en" if i % 10 < 3 else "sv", created, confirmed, left, 0)

        def links():
            for i in range(1, n + 1):
                pick = i % 5
                if pick == 3:
                    yield (i, topic_ids[0])
                elif pick == 4:
                    yield (i, topic_ids[0])
                    yield (i, topic_ids[-1])

        columns = ("id, uid, email, name, status, language, created_at, confirmed_at, unsubscribed_at, "
                   "generation")
        if db.engine.dialect.name == "postgresql":
            raw = db.engine.raw_connection()
            try:
                with raw.cursor() as cursor:
                    with cursor.copy(f"COPY subscriber ({columns}) FROM STDIN") as copy:
                        for row in rows():
                            copy.write_row(row)
                    with cursor.copy("COPY subscriber_topic (subscriber_id, topic_id) FROM STDIN") as copy:
                        for row in links():
                            copy.write_row(row)
                    cursor.execute("SELECT setval('subscriber_id_seq', %s)", (n,))
                raw.commit()
            finally:
                raw.close()
            db.session.execute(text("ANALYZE"))
            db.session.commit()
        else:
            raw = db.engine.raw_connection()
            try:
                insert = f"INSERT INTO subscriber ({columns}) VALUES ({', '.join('?' * 10)})"
                batch = []
                for row in rows():
                    batch.append(row)
                    if len(batch) == 20000:
                        raw.executemany(insert, batch)
                        batch.clear()
                raw.executemany(insert, batch)
                raw.executemany("INSERT INTO subscriber_topic (subscriber_id, topic_id) VALUES (?, ?)",
                                links())
                raw.commit()
                raw.execute("ANALYZE")
            finally:
                raw.close()
        _articles(db, now)
    return round(time.monotonic() - started, 1)


def _articles(db, now) -> None:
    from newsletter.models import Article, Topic

    topics = list(db.session.execute(db.select(Topic).order_by(Topic.position)).scalars())
    for i in range(12):
        db.session.add(Article(source_id=f"bench-{i}", title=f"Artikel {i + 1}", url=f"https://bench.example/{i}",
                               summary="Kort sammanfattning.", topic_id=topics[i % len(topics)].id,
                               published_at=now - timedelta(hours=3 + i)))
    db.session.commit()


# --- timing -----------------------------------------------------------------------------------


def timed(call, repeat: int) -> dict:
    times = []
    call()  # warm: the first request of a page compiles its templates
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
    return {"p50_ms": round(statistics.median(times), 1), "p95_ms": round(p95, 1)}


def admin_client(app):
    from newsletter.admins import accounts
    from newsletter.extensions import db

    with app.app_context():
        accounts.create_admin("bench@example.org", PASSWORD, role="admin")
        db.session.commit()  # services flush; the caller commits
    client = app.test_client()
    html = client.get("/admin/login").get_data(as_text=True)
    match = CSRF.search(html)
    token = match.group(1) or match.group(2)
    response = client.post("/admin/login", data={"csrf_token": token, "email": "bench@example.org",
                                                 "password": PASSWORD})
    assert response.status_code == 302, response.status_code
    return client


def api_headers(app) -> dict:
    from newsletter.admins import api_tokens
    from newsletter.extensions import db

    with app.app_context():
        _, plaintext = api_tokens.create_token("bench", "admin")
        db.session.commit()
    return {"Authorization": f"Bearer {plaintext}"}


def page_call(client, url: str, headers: dict | None = None):
    def call():
        response = client.get(url, headers=headers or {})
        assert response.status_code == 200, (url, response.status_code)
        response.get_data()

    return call


def sql_call(app, sql: str):
    from sqlalchemy import text

    from newsletter.extensions import db

    def call():
        with app.app_context():
            db.session.execute(text(sql)).all()
            db.session.remove()

    return call


PAGES = [  # (name, admin URL, the bare SQL of its rows)
    ("list", "/admin/subscribers", "SELECT * FROM subscriber ORDER BY id DESC LIMIT 51"),
    ("list, a deep page", "/admin/subscribers?before=500000",
     "SELECT * FROM subscriber WHERE id < 500000 ORDER BY id DESC LIMIT 51"),
    ("status filter", "/admin/subscribers?status=unsubscribed",
     "SELECT * FROM subscriber WHERE status = 'unsubscribed' ORDER BY id DESC LIMIT 51"),
    ("topic filter", "/admin/subscribers?topic=blogg",
     "SELECT * FROM subscriber s WHERE EXISTS (SELECT 1 FROM subscriber_topic l JOIN topic t ON t.id = "
     "l.topic_id WHERE l.subscriber_id = s.id AND t.slug = 'blogg') OR NOT EXISTS (SELECT 1 FROM "
     "subscriber_topic l WHERE l.subscriber_id = s.id) ORDER BY id DESC LIMIT 51"),
    ("language filter", "/admin/subscribers?language=en",
     "SELECT * FROM subscriber WHERE language = 'en' ORDER BY id DESC LIMIT 51"),
    ("search", "/admin/subscribers?q=reader0001234",
     "SELECT * FROM subscriber WHERE email LIKE '%reader0001234%' ORDER BY id DESC LIMIT 51"),
    ("dashboard", "/admin/", "SELECT status, count(*) FROM subscriber GROUP BY status"),
]
API_PAGES = [
    ("API list", "/api/v1/subscribers?limit=50", "SELECT * FROM subscriber ORDER BY id LIMIT 51"),
    ("API topic filter", "/api/v1/subscribers?limit=50&topic=pressmeddelanden",
     "SELECT * FROM subscriber s WHERE NOT EXISTS (SELECT 1 FROM subscriber_topic l WHERE "
     "l.subscriber_id = s.id) ORDER BY id LIMIT 51"),
    ("API status filter", "/api/v1/subscribers?limit=50&status=pending",
     "SELECT * FROM subscriber WHERE status = 'pending' ORDER BY id LIMIT 51"),
]


def export_run(client, url: str, headers: dict | None = None) -> dict:
    with PeakRss() as memory:
        started = time.perf_counter()
        response = client.get(url, headers=headers or {}, buffered=False)
        rows = -1
        for chunk in response.response:
            rows += chunk.count(b"\n")
        response.close()
        seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), "rows": rows, "rss_above_idle_mb": memory.above}


def copy_baseline(app) -> dict:
    """The exported columns straight out of the database: COPY TO on PostgreSQL, a cursor on SQLite."""
    from newsletter.extensions import db

    started = time.perf_counter()
    with app.app_context():
        raw = db.engine.raw_connection()
        try:
            select = ("SELECT email, status, language, name, created_at, confirmed_at FROM subscriber "
                      "ORDER BY id")
            if db.engine.dialect.name == "postgresql":
                with raw.cursor() as cursor, cursor.copy(f"COPY ({select}) TO STDOUT WITH CSV") as copy:
                    size = sum(len(block) for block in copy)
            else:
                out = io.StringIO()
                writer = csv.writer(out)
                size = 0
                for row in raw.execute(select):
                    writer.writerow(row)
                    if out.tell() > 1 << 20:
                        size += out.tell()
                        out.seek(0)
                        out.truncate()
                size += out.tell()
        finally:
            raw.close()
    return {"seconds": round(time.perf_counter() - started, 2), "bytes": size}


def dry_run(app) -> dict:
    from newsletter import delivery

    with PeakRss() as memory:
        started = time.perf_counter()
        with app.app_context():
            plan = delivery.plan_send()
        seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), "rss_above_idle_mb": memory.above, "recipients": plan["recipients"],
            "variants": plan["variants"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="postgresql")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=20, help="requests per page")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="nl-admin-bench-"))
    database = Database(args.db, args.pg_url, workdir)
    result: dict = {"db": args.db, "n": args.n, "pages": {}, "targets": {}}
    try:
        app = make_app(database.url, workdir / "instance")
        app.config.update(RATELIMIT_ENABLED=False, API_RATE_LIMIT="100000 per minute")
        print(f"seeding {args.n:,} subscribers ({args.db}) ...", flush=True)
        result["seed_s"] = seed(app, args.n)
        print(f"seeded in {result['seed_s']} s", flush=True)
        client = admin_client(app)
        headers = api_headers(app)
        for name, url, sql in PAGES + API_PAGES:
            page = timed(page_call(client, url, headers if url.startswith("/api") else None), args.repeat)
            base = timed(sql_call(app, sql), args.repeat)
            result["pages"][name] = {"url": url, **page, "baseline_p50_ms": base["p50_ms"],
                                     "baseline_p95_ms": base["p95_ms"]}
            print(f"{name:22} p50 {page['p50_ms']:7.1f} ms  p95 {page['p95_ms']:7.1f} ms   "
                  f"(its SQL alone: p50 {base['p50_ms']:.1f}, p95 {base['p95_ms']:.1f})", flush=True)
        result["export_baseline"] = copy_baseline(app)
        result["export_admin"] = export_run(client, "/admin/subscribers/export.csv")
        result["export_api"] = export_run(client, "/api/v1/subscribers/export", headers)
        print(f"export admin {result['export_admin']}, API {result['export_api']}, "
              f"baseline {result['export_baseline']}", flush=True)
        result["dry_run"] = dry_run(app)
        base = timed(sql_call(app, "SELECT count(*) FROM subscriber WHERE status = 'confirmed'"), 3)
        result["dry_run"]["baseline_count_ms"] = base["p50_ms"]
        print(f"dry run {result['dry_run']}", flush=True)
    finally:
        database.drop()
    worst = max(p["p95_ms"] for p in result["pages"].values())
    exports = max(result["export_admin"]["rss_above_idle_mb"], result["export_api"]["rss_above_idle_mb"])
    result["targets"] = {
        "page p95 <= 150 ms": {"value": worst, "ok": worst <= TARGETS["page_p95_ms"]},
        "export RSS above idle <= 50 MB": {"value": exports, "ok": exports <= TARGETS["export_rss_mb"]},
        "dry run <= 5 s": {"value": result["dry_run"]["seconds"],
                           "ok": result["dry_run"]["seconds"] <= TARGETS["dry_run_s"]},
        "dry run RSS <= 150 MB": {"value": result["dry_run"]["rss_above_idle_mb"],
                                  "ok": result["dry_run"]["rss_above_idle_mb"] <= TARGETS["dry_run_rss_mb"]},
    }
    for name, verdict in result["targets"].items():
        print(f"  {'ok  ' if verdict['ok'] else 'MISS'} {name}: {verdict['value']}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"admin-{args.db}-{args.n}.json").write_text(json.dumps(result, indent=2))
    return 0 if all(v["ok"] for v in result["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
