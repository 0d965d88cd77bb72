"""Benchmark of the digest send, end to end: `flask --app wsgi digest send` into a local SMTP sink.

    .venv/bin/python bench/send_digest.py --db sqlite --n 10000,100000
    make bench BENCH_ARGS="--db postgresql --n 100000"

For each N: a fresh database (SQLite in a temp dir, or a throwaway PostgreSQL
database) is seeded with N confirmed subscribers (bulk inserts; sv/en, some
following only some topics) and ~12 new articles; then the real command runs
as a subprocess with MAIL_URL pointing at the sink, and this script measures,
in the same run:

- messages/s counted at the sink, time from process start to the first message,
  wall time of the whole command;
- peak RSS summed over the sending process tree (sampled from /proc every 20 ms;
  PSS too, which does not count pages shared after fork twice);
- CPU seconds per 1,000 messages (rusage of the command and every child it reaped;
  the PostgreSQL backends' CPU separately);
- the ceiling: Postfix's `smtp-source -d -s 16` against the same sink, same size;
- a naive baseline: Jinja render + EmailMessage + smtplib per subscriber, over one
  reused connection, for a sample (extrapolated) or for all N (`--naive-n 0`);

and the ratios against the send path's targets. Results go to bench/results/ as JSON.
The sink is Postfix's `smtp-sink` (installed with apt if missing and we are root)
or bench/sink.py, an asyncio sink of our own (`--sink asyncio`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

TARGETS = {
    "ceiling_ratio": 0.5,  # >= 50 % of smtp-source's rate
    "naive_speedup": 15.0,  # >= 15x the naive baseline
    "seconds_100k": 20.0,  # 100,000 subscribers in <= 20 s
    "peak_rss_mb": 150.0,
    "first_message_s": 1.0,
}
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")
MAIL_FROM = "Bänkföreningen <nyhetsbrev@bench.example>"
PUBLIC_URL = "https://nyhetsbrev.bench.example"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the sink ------------------------------------------------------------------------------


class Phase:
    """Messages counted at the sink between `start` and `stop`, with the first and last times."""

    def __init__(self, base: int):
        self.base = base
        self.count = 0
        self.first: float | None = None
        self.first_wall: float | None = None  # time.time() of the first message
        self.last: float | None = None


class Sink:
    """Postfix's smtp-sink or bench/sink.py, whose `-c` counter we read from a pipe."""

    def __init__(self, kind: str):
        self.kind = kind
        self.port = free_port()
        self.count = 0
        self.phase: Phase | None = None
        self._lock = threading.Lock()
        if kind == "postfix":
            command = ["smtp-sink", "-c"]
            if os.geteuid() == 0:
                command += ["-u", "nobody"]
            command += [f"127.0.0.1:{self.port}", "1024"]
        else:
            command = [sys.executable, str(ROOT / "bench" / "sink.py"), "--port", str(self.port)]
        self.command = command
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._wait_listening()

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.recv(100)
                    sock.sendall(b"QUIT\r\n")
                    sock.recv(100)
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"the sink ({' '.join(self.command)}) did not start")

    def _read(self) -> None:
        pattern = re.compile(rb"mesg=(\d+)")
        rest = b""
        fd = self.process.stdout.fileno()
        while True:
            data = os.read(fd, 65536)
            if not data:
                return
            now = time.monotonic()
            rest += data
            *lines, rest = rest.split(b"\r")
            for line in reversed(lines):
                match = pattern.search(line)
                if match:
                    self._update(int(match.group(1)), now)
                    break

    def _update(self, count: int, now: float) -> None:
        with self._lock:
            self.count = count
            phase = self.phase
            if phase is not None and count > phase.base:
                if phase.first is None:
                    phase.first = now
                    phase.first_wall = time.time()
                phase.last = now
                phase.count = count - phase.base

    def start_phase(self) -> Phase:
        with self._lock:
            self.phase = Phase(self.count)
            return self.phase

    def end_phase(self, expected: int | None = None, settle: float = 2.0) -> Phase:
        """Wait until `expected` messages arrived (or nothing moved for `settle` s); stop counting."""
        phase = self.phase
        assert phase is not None
        deadline = time.monotonic() + settle
        seen = -1
        while time.monotonic() < deadline:
            if expected is not None and phase.count >= expected:
                break
            if phase.count != seen:
                seen = phase.count
                deadline = time.monotonic() + settle
            time.sleep(0.02)
        with self._lock:
            self.phase = None
        return phase

    def cpu_seconds(self) -> float:
        stat = _stat(self.process.pid)
        return stat[2] / TICKS if stat else 0.0

    def close(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def ensure_postfix_tools() -> bool:
    """smtp-sink and smtp-source on PATH; apt-get install postfix (no daemon left running) if not."""
    if shutil.which("smtp-sink") and shutil.which("smtp-source"):
        return True
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        log("smtp-sink/smtp-source missing and cannot apt-get install postfix (not root)")
        return False
    log("installing postfix (for smtp-sink and smtp-source) with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    answer = b"postfix postfix/main_mailer_type select No configuration\n"
    subprocess.run(["debconf-set-selections"], input=answer, env=env, check=False)
    result = subprocess.run(["apt-get", "install", "-y", "-q", "postfix"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    if result.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL, check=False)
        result = subprocess.run(["apt-get", "install", "-y", "-q", "postfix"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    # The package may start the mail daemon: we want only its tools.
    if subprocess.run(["postfix", "status"], capture_output=True, check=False).returncode == 0:
        subprocess.run(["postfix", "stop"], capture_output=True, check=False)
    return bool(shutil.which("smtp-sink") and shutil.which("smtp-source"))


# --- sampling the process tree ---------------------------------------------------------------


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(ppid, comm, utime+stime ticks) from /proc/pid/stat."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    close = data.rfind(b")")
    comm = data[data.find(b"(") + 1 : close].decode(errors="replace")
    fields = data[close + 2 :].split()
    return int(fields[1]), comm, int(fields[11]) + int(fields[12])


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as handle:
            return int(handle.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as handle:
            for line in handle:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _cpu_times() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # without guest time, which is counted in user already
    return (total - idle) / TICKS, total / TICKS


def wait_for_quiet(limit: float, busy_max: float = 0.25) -> float:
    """Wait up to `limit` s until the machine is mostly idle (other benchmarks, test suites);
    returns the busy fraction of the last second."""
    deadline = time.monotonic() + limit
    while True:
        busy0, total0 = _cpu_times()
        time.sleep(1)
        busy1, total1 = _cpu_times()
        busy = (busy1 - busy0) / max(total1 - total0, 1e-9)
        if busy <= busy_max or time.monotonic() >= deadline:
            return round(busy, 2)
        log(f"machine busy ({busy:.0%} of all CPUs): waiting for quiet")


class TreeSampler(threading.Thread):
    """Peak RSS (and PSS) summed over a process and its descendants; CPU of PostgreSQL backends."""

    def __init__(self, root: int, interval: float = 0.02, database: str | None = None):
        super().__init__(daemon=True)
        self.database = database  # count only the PostgreSQL backends serving this database
        self._backend_of: dict[int, bool] = {}
        self.root = root
        self.interval = interval
        self.stop_event = threading.Event()
        self.peak_rss = 0
        self.peak_pss = 0
        self.peak_processes = 0
        self.samples = 0
        self.timeline: list[tuple[float, int]] = []  # (seconds, rss) every ~0.5 s
        self.postgres_cpu: dict[int, tuple[int, int]] = {}  # pid -> (first ticks, last ticks)
        self.tree_cpu: dict[int, int] = {}
        for pid, (_ppid, comm, ticks) in self._all().items():
            if self._ours(pid, comm):
                self.postgres_cpu[pid] = (ticks, ticks)

    @staticmethod
    def _all() -> dict[int, tuple[int, str, int]]:
        found = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                stat = _stat(int(name))
                if stat:
                    found[int(name)] = stat
        return found

    def run(self) -> None:
        started = time.monotonic()
        next_mark = 0.0
        while not self.stop_event.is_set():
            procs = self._all()
            children: dict[int, list[int]] = {}
            for pid, (ppid, comm, ticks) in procs.items():
                children.setdefault(ppid, []).append(pid)
                if self._ours(pid, comm):
                    first = self.postgres_cpu.get(pid, (0, 0))[0]
                    self.postgres_cpu[pid] = (first, ticks)
            tree, stack = [], [self.root]
            while stack:
                pid = stack.pop()
                if pid in procs:
                    tree.append(pid)
                    self.tree_cpu[pid] = procs[pid][2]
                    stack.extend(children.get(pid, ()))
            rss = sum(_rss(pid) for pid in tree)
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_processes = max(self.peak_processes, len(tree))
            if self.samples % 10 == 0:
                self.peak_pss = max(self.peak_pss, sum(_pss(pid) for pid in tree))
            elapsed = time.monotonic() - started
            if elapsed >= next_mark:
                self.timeline.append((round(elapsed, 2), rss))
                next_mark += 0.5
            self.samples += 1
            self.stop_event.wait(self.interval)

    def _ours(self, pid: int, comm: str) -> bool:
        """A backend of our database ("postgres: user DB 127.0.0.1(port) ..."): not other
        people's tests that share the server."""
        if not comm.startswith("postgres") or not self.database:
            return False
        known = self._backend_of.get(pid)
        if known is None:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    title = handle.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                title = ""
            known = self._backend_of[pid] = f" {self.database} " in title
        return known

    def stop(self) -> None:
        self.stop_event.set()
        self.join()

    def postgres_seconds(self) -> float:
        return sum(last - first for first, last in self.postgres_cpu.values()) / TICKS


# --- the database ----------------------------------------------------------------------------


class Database:
    def __init__(self, kind: str, pg_url: str, workdir: Path):
        self.kind = kind
        self.pg_url = pg_url.rstrip("/")
        if kind == "sqlite":
            self.url = f"sqlite:///{workdir / 'bench.db'}"
            self.name = str(workdir / "bench.db")
        else:
            self.name = f"nl_bench_{os.getpid()}_{secrets.token_hex(3)}"
            self._admin(f'CREATE DATABASE "{self.name}"')
            self.url = f"{self.pg_url}/{self.name}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(f"{self.pg_url}/postgres", autocommit=True) as conn:
            conn.execute(sql)

    def drop(self) -> None:
        if self.kind == "postgresql":
            self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def make_app(db_url: str, instance: Path):
    from newsletter import create_app

    return create_app({
        "SQLALCHEMY_DATABASE_URI": db_url,
        "INSTANCE_PATH": str(instance),
        "SECRET_KEY": "bench-secret",
        "MAIL_URL": "memory://bench",
        "MAIL_FROM": MAIL_FROM,
        "PUBLIC_URL": PUBLIC_URL,
        "MAIL_QUEUE_THREAD": False,
        "FEED_URLS": [],
    })


WORDS = ("kommunen föreningen styrelsen medlemmar möte förslag budget biblioteket skolan "
         "kollektivtrafiken cykelbanor parken sommaren hösten vintern våren öppet hus "
         "insamling volontärer ungdomar äldre kultur idrott stadsdelen grannar trygghet").split()


def _text(rng, words: int) -> str:
    sentence, out = [], []
    for i in range(words):
        sentence.append(rng.choice(WORDS))
        if len(sentence) > 8 and (i % 11 == 0):
            out.append(" ".join(sentence).capitalize() + ".")
            sentence = []
    if sentence:
        out.append(" ".join(sentence).capitalize() + ".")
    return " ".join(out)


def seed(app, n: int, articles: int, summary_words: int) -> dict:
    """N confirmed subscribers and `articles` new articles, with bulk inserts."""
    import random

    from sqlalchemy import insert, text

    from newsletter.extensions import db
    from newsletter.models import Article, Subscriber, subscriber_topics
    from newsletter.subscriptions.topics import ensure_topics

    rng = random.Random(42)
    started = time.monotonic()
    with app.app_context():
        db.create_all()
        topics = ensure_topics()
        now = datetime.now(UTC)
        db.session.execute(insert(Article.__table__), [
            {
                "source_id": f"bench-{i}",
                "topic_id": topics[i % len(topics)].id,
                "title": f"{_text(rng, 9).rstrip('.')} ({i + 1})",
                "url": f"{PUBLIC_URL}/artiklar/{i + 1}-{'-'.join(rng.choice(WORDS) for _ in range(4))}",
                "summary": _text(rng, summary_words),
                "body_html": "",
                "image_url": f"https://cdn.bench.example/bilder/{i + 1}.jpg" if i % 3 == 0 else "",
                "image_alt": "",
                "author": rng.choice(("Anna Lind", "Erik Öberg", "Sara Åkesson", "")),
                "published_at": now - timedelta(hours=3 + i),
                "collected_at": now,
                "updated_at": now,
                "hidden": False,
            }
            for i in range(articles)
        ])
        db.session.commit()
        domains = ("example.com", "example.org", "post.example.se", "mail.example.net")
        chunk = 10_000
        for start in range(0, n, chunk):
            rows, links = [], []
            for i in range(start, min(n, start + chunk)):
                rows.append({
                    "id": i + 1,
                    "uid": secrets.token_hex(12),
                    "email": f"reader{i:07d}@{domains[i % len(domains)]}",
                    "name": "",
                    "status": "confirmed",
                    "language": "en" if i % 10 < 3 else "sv",
                    "created_at": now,
                    "confirmed_at": now,
                    "generation": 0,
                })
                # 60 % follow everything (no topic chosen), the rest one or two topics.
                pick = i % 5
                if pick == 3:
                    links.append({"subscriber_id": i + 1, "topic_id": topics[0].id})
                elif pick == 4:
                    links.append({"subscriber_id": i + 1, "topic_id": topics[0].id})
                    links.append({"subscriber_id": i + 1, "topic_id": topics[-1].id})
            db.session.execute(insert(Subscriber.__table__), rows)
            if links:
                db.session.execute(insert(subscriber_topics), links)
            db.session.commit()
        if db.engine.dialect.name == "postgresql":
            db.session.execute(text("SELECT setval('subscriber_id_seq', :n)"), {"n": max(n, 1)})
            db.session.execute(text("ANALYZE"))
            db.session.commit()
            # Write the seed's pages now, not in a checkpoint during the send: in some runs that
            # made the send's first commits (before its first message) wait seconds for the disk.
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("CHECKPOINT"))
    return {"seconds": round(time.monotonic() - started, 2), "subscribers": n, "articles": articles}


# --- the real send ---------------------------------------------------------------------------


def run_send(sink: Sink, db_url: str, instance: Path, n: int, extra_env: dict, profile: Path | None,
             logfile: Path, database: str | None = None) -> dict:
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "MAIL_URL": f"smtp://127.0.0.1:{sink.port}",
        "MAIL_FROM": MAIL_FROM,
        "PUBLIC_URL": PUBLIC_URL,
        "SECRET_KEY": "bench-secret",
        "INSTANCE_PATH": str(instance),
        "MAIL_QUEUE_THREAD": "0",
        "FEED_URLS": "",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
        **extra_env,
    }
    command = os.environ.get("BENCH_PREFIX", "").split() + [sys.executable]
    if profile:  # CPU time in every thread of the sending process (bench/cpu_profile.py)
        command += [str(ROOT / "bench" / "cpu_profile.py"), str(profile)]
    command += ["-m", "flask", "--app", "wsgi", "digest", "send"]
    phase = sink.start_phase()
    machine0, sink0 = _cpu_times(), sink.cpu_seconds()
    with open(logfile, "wb") as out:
        started = time.monotonic()
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        sampler = TreeSampler(process.pid, database=database)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        ended = time.monotonic()
        process.returncode = os.waitstatus_to_exitcode(status)
        sampler.stop()
    phase = sink.end_phase(expected=n)
    machine1, sink1 = _cpu_times(), sink.cpu_seconds()
    count = phase.count
    window = (phase.last - phase.first) if phase.first and phase.last and count > 1 else None
    cpu = usage.ru_utime + usage.ru_stime
    busy = machine1[0] - machine0[0]
    elapsed = machine1[1] - machine0[1]  # CPU seconds available on all cores in the window
    others = busy - cpu - (sink1 - sink0) - sampler.postgres_seconds()
    return {
        "command": " ".join(command[1:] if not profile else command[1:]),
        "exit_code": process.returncode,
        "sink_count": count,
        "wall_s": round(ended - started, 3),
        "first_message_s": round(phase.first - started, 3) if phase.first else None,
        "first_message_wall": phase.first_wall,
        "last_message_s": round(phase.last - started, 3) if phase.last else None,
        # first to last message at the sink: the steady sending rate
        "sink_rate": round((count - 1) / window, 1) if window else None,
        # start of the command to its exit: what an admin waits for
        "end_to_end_rate": round(count / (ended - started), 1),
        "cpu_s": round(cpu, 2),
        "cpu_user_s": round(usage.ru_utime, 2),
        "cpu_sys_s": round(usage.ru_stime, 2),
        "cpu_s_per_1000": round(cpu / count * 1000, 3) if count else None,
        "cpu_s_sampled": round(sum(sampler.tree_cpu.values()) / TICKS, 2),
        "postgres_cpu_s": round(sampler.postgres_seconds(), 2),
        "sink_cpu_s": round(sink1 - sink0, 2),
        # ours + the sink + our database backends, over 2 cores: the wall time an otherwise
        # idle 2-core machine would need if the send were CPU-bound and spread evenly
        "cpu_bound_2core_s": round((cpu + (sink1 - sink0) + sampler.postgres_seconds()) / 2, 2),
        # CPU that other processes on the machine used meanwhile (tests of other branches...),
        # in cores on average: a noisy neighbour makes every figure here worse.
        "other_load_cores": round(max(others, 0) / (ended - started), 2),
        "machine_busy_fraction": round(busy / max(elapsed, 1e-9), 2),
        "peak_rss_mb": round(sampler.peak_rss / 2**20, 1),
        "peak_pss_mb": round(sampler.peak_pss / 2**20, 1),
        "max_rss_single_mb": round(usage.ru_maxrss / 1024, 1),
        "peak_processes": sampler.peak_processes,
        "rss_timeline_mb": [(t, round(r / 2**20, 1)) for t, r in sampler.timeline],
        "log_tail": logfile.read_text(errors="replace")[-1500:],
    }


def ledger(app) -> dict:
    from sqlalchemy import select

    from newsletter import delivery
    from newsletter.extensions import db
    from newsletter.models import Digest

    with app.app_context():
        digest = db.session.execute(select(Digest).order_by(Digest.id.desc())).scalars().first()
        if digest is None:
            return {"digest": None}
        counts = delivery.send_progress(digest.id)
        return {"digest": digest.id, "status": digest.status,
                **{k: v for k, v in counts.items() if isinstance(v, int | float | str | type(None))},
                "compiled_ts": digest.created_at.timestamp(),
                "pinned_ts": digest.started_at.timestamp() if digest.started_at else None}


def message_size(app, sample: int = 200) -> dict:
    """Average size of the real messages (from the digest just sent), and the variants."""
    from sqlalchemy import select

    from newsletter.digests import DigestRenderer
    from newsletter.extensions import db
    from newsletter.mail.personal import personal_values
    from newsletter.models import Digest, Subscriber

    with app.app_context():
        digest = db.session.execute(select(Digest).order_by(Digest.id.desc())).scalars().first()
        renderer = DigestRenderer(digest)
        sizes = []
        query = select(Subscriber).order_by(Subscriber.id).limit(sample)
        for subscriber in db.session.execute(query).scalars():
            prepared = renderer.message_for(subscriber)
            if prepared is not None:
                sizes.append(len(prepared.render(personal_values(subscriber))))
        return {"avg_bytes": round(sum(sizes) / len(sizes)), "min_bytes": min(sizes), "max_bytes": max(sizes),
                "articles": len(renderer.articles), "variants_in_sample": len(renderer._messages)}


# --- the ceiling ----------------------------------------------------------------------------


def run_ceiling(sink: Sink, n: int, size: int, sessions: int) -> dict:
    if not shutil.which("smtp-source"):
        return {"skipped": "smtp-source not installed"}
    command = ["smtp-source", "-d", "-s", str(sessions), "-m", str(n), "-l", str(size),
               "-f", "bench@bench.example", "-t", "sink@bench.example", f"127.0.0.1:{sink.port}"]
    sink.start_phase()
    sink0 = sink.cpu_seconds()
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, check=False)
    ended = time.monotonic()
    phase = sink.end_phase(expected=n)
    sink_cpu = sink.cpu_seconds() - sink0
    return {
        "command": " ".join(command),
        "exit_code": result.returncode,
        "sink_count": phase.count,
        "wall_s": round(ended - started, 3),
        "rate": round(phase.count / (ended - started), 1),
        "sink_cpu_s": round(sink_cpu, 2),
    }


# --- the naive baseline -----------------------------------------------------------------------


def run_naive(app, sink: Sink, sample: int) -> dict:
    """Per subscriber: Jinja render (+ CSS inlining), EmailMessage, smtplib over one connection."""
    import smtplib
    from email.message import EmailMessage
    from email.utils import format_datetime, make_msgid

    from markupsafe import escape
    from sqlalchemy import select

    from newsletter.digests import DigestRenderer
    from newsletter.engine.prepared import slot
    from newsletter.extensions import db
    from newsletter.mail import compose as mail
    from newsletter.mail.personal import personal_values
    from newsletter.models import Digest, Subscriber

    with app.app_context():
        digest = db.session.execute(select(Digest).order_by(Digest.id.desc())).scalars().first()
        renderer = DigestRenderer(digest)
        query = select(Subscriber).where(Subscriber.status == "confirmed").order_by(Subscriber.id)
        if sample:
            query = query.limit(sample)
        subscribers = db.session.execute(query.execution_options(yield_per=1000)).scalars()
        list_id = mail.list_id()
        domain = mail.sender_domain()
        sender = mail.envelope_sender()
        phase = sink.start_phase()
        started = time.monotonic()
        sent = 0
        with smtplib.SMTP("127.0.0.1", sink.port) as smtp:
            for subscriber in subscribers:
                key = renderer.variant(subscriber)
                if key is None:
                    continue
                subject, text, html = renderer.render(key[0], key[1], personal=True)
                values = personal_values(subscriber)
                for name in ("unsubscribe_url", "preferences_url"):
                    text = text.replace(slot(name), values[name])
                    html = html.replace(slot(name), str(escape(values[name])))
                message = EmailMessage()
                message["Date"] = format_datetime(datetime.now(UTC))
                message["From"] = MAIL_FROM
                message["To"] = subscriber.email
                message["Subject"] = subject
                message["Message-ID"] = make_msgid(domain=domain)
                message["List-Id"] = list_id
                message["List-Unsubscribe"] = f"<{values['unsubscribe_url']}>"
                message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
                message.set_content(text)
                message.add_alternative(html, subtype="html")
                smtp.send_message(message, from_addr=sender, to_addrs=[subscriber.email])
                sent += 1
        ended = time.monotonic()
        phase = sink.end_phase(expected=sent)
    seconds = ended - started
    return {"sample": sent, "seconds": round(seconds, 3), "sink_count": phase.count,
            "rate": round(sent / seconds, 1), "ms_per_message": round(seconds / sent * 1000, 3)}


# --- one run ---------------------------------------------------------------------------------


def git_state() -> dict:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    return {"commit": git("rev-parse", "--short", "HEAD"), "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def run_one(args, n: int, sink: Sink) -> dict:
    code = git_state()  # of the code the send runs (before anyone commits meanwhile)
    workdir = Path(tempfile.mkdtemp(prefix="nl-bench-"))
    instance = workdir / "instance"
    database = Database(args.db, args.pg_url, workdir)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    RESULTS.mkdir(parents=True, exist_ok=True)
    try:
        app = make_app(database.url, instance)
        log(f"{args.db} N={n}: seeding {database.name}")
        seeded = seed(app, n, args.articles, args.summary_words)
        quiet = wait_for_quiet(args.wait_quiet) if args.wait_quiet else None
        log(f"seeded in {seeded['seconds']} s; running `flask --app wsgi digest send`")
        profile = RESULTS / f"{stamp}-{args.db}-{n}.prof" if args.profile else None
        send = run_send(sink, database.url, instance, n, dict(args.env), profile,
                        RESULTS / f"{stamp}-{args.db}-{n}.log",
                        database.name if args.db == "postgresql" else None)
        log(f"sent: {send['sink_count']} at the sink in {send['wall_s']} s (exit {send['exit_code']})")
        book = ledger(app)
        first = send["first_message_wall"]
        if first and book.get("compiled_ts"):
            # from the digest being compiled (after the app started) to the first message
            send["first_message_after_compile_s"] = round(first - book["compiled_ts"], 3)
            if book.get("pinned_ts"):
                send["first_message_after_pinning_s"] = round(first - book["pinned_ts"], 3)
        size = message_size(app)
        ceiling = {"skipped": "--no-ceiling"} if args.no_ceiling else run_ceiling(
            sink, n, size["avg_bytes"], args.sessions)
        if args.no_naive:
            naive = {"skipped": "--no-naive"}
        else:
            sample = n if args.naive_n == 0 else min(n, args.naive_n)
            log(f"naive baseline over {sample} subscribers")
            naive = run_naive(app, sink, sample)
            naive["extrapolated_s_for_n"] = round(n / naive["rate"], 1)
        if profile:
            send["profile"] = str(profile)
            send["profile_top"] = profile_summary(profile)
    finally:
        database.drop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "db": args.db, "n": n, "sink": sink.kind, "sink_command": " ".join(sink.command),
        "machine": {"cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
                    "cpu": _cpu_model(), "python": platform.python_version()},
        "git": code, "env": {k: "(generated)" if k.endswith("PRIVATE_KEY") else v for k, v in args.env},
        "argv": sys.argv[1:],
        "loadavg": Path("/proc/loadavg").read_text().split()[:3], "busy_before_send": quiet,
        "seed": seeded, "message": size, "send": send, "ledger": book, "ceiling": ceiling, "naive": naive,
    }
    result["targets"] = judge(result)
    path = RESULTS / f"{stamp}-{args.db}-{n}.json"
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    result["json"] = str(path)
    return result


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def judge(result: dict) -> dict:
    send, ceiling, naive, n = result["send"], result["ceiling"], result["naive"], result["n"]
    rate = send.get("sink_rate") or 0
    out = {}
    if ceiling.get("rate"):
        ratio = rate / ceiling["rate"]
        out["ceiling_ratio"] = {"value": round(ratio, 3), "target": ">= 0.5", "ok": ratio >= 0.5}
    if naive.get("rate"):
        speedup = send["end_to_end_rate"] / naive["rate"]
        out["naive_speedup"] = {"value": round(speedup, 1), "target": ">= 15 (end-to-end rate / naive rate)",
                                "ok": speedup >= TARGETS["naive_speedup"]}
    projected = send["wall_s"] * 100_000 / n
    out["seconds_for_100k"] = {"value": round(projected, 1),
                               "target": "<= 20" + ("" if n == 100_000 else f" (scaled from N={n})"),
                               "ok": projected <= TARGETS["seconds_100k"]}
    out["peak_rss_mb"] = {"value": send["peak_rss_mb"], "target": "<= 150", "ok": send["peak_rss_mb"] <= 150}
    first = send.get("first_message_s")
    out["first_message_s"] = {"value": first, "target": "< 1", "ok": first is not None and first < 1}
    out["all_sent"] = {"value": send["sink_count"], "target": f"== {n}", "ok": send["sink_count"] == n}
    return out


def profile_summary(path: Path, limit: int = 30) -> str:
    import io
    import pstats

    buffer = io.StringIO()
    stats = pstats.Stats(str(path), stream=buffer)
    stats.sort_stats("tottime").print_stats(limit)
    return buffer.getvalue()


def report(result: dict) -> None:
    send, ceiling, naive, size = result["send"], result["ceiling"], result["naive"], result["message"]
    n = result["n"]
    print()
    print(f"=== {result['db']}, N={n:,}, sink {result['sink']}, {result['machine']['cpus']} CPUs, "
          f"git {result['git']['commit']}{' (dirty)' if result['git']['dirty'] else ''} ===")
    print(f"message: {size['avg_bytes']:,} bytes average, {size['articles']} articles")
    print(f"digest send: {send['sink_count']:,} messages at the sink, exit {send['exit_code']}, "
          f"ledger {result['ledger']}")
    print(f"  wall {send['wall_s']} s; first message after {send['first_message_s']} s "
          f"({send.get('first_message_after_compile_s')} s after the digest was compiled, "
          f"{send.get('first_message_after_pinning_s')} s after the recipients were pinned); "
          f"last after {send['last_message_s']} s")
    print(f"  rate at the sink {send['sink_rate']} msg/s (first to last); "
          f"end to end {send['end_to_end_rate']} msg/s")
    print(f"  CPU {send['cpu_s']} s ({send['cpu_user_s']} user + {send['cpu_sys_s']} sys) = "
          f"{send['cpu_s_per_1000']} s per 1,000; PostgreSQL backends {send['postgres_cpu_s']} s")
    print(f"  all CPU (ours + sink + our DB backends) / 2 cores = {send['cpu_bound_2core_s']} s "
          f"(what an idle 2-core machine needs at least)")
    print(f"  sink CPU {send['sink_cpu_s']} s; other processes on the machine used "
          f"{send['other_load_cores']} cores meanwhile (machine {send['machine_busy_fraction']:.0%} busy)")
    print(f"  peak RSS {send['peak_rss_mb']} MB summed over up to {send['peak_processes']} processes "
          f"(PSS {send['peak_pss_mb']} MB; largest single process {send['max_rss_single_mb']} MB)")
    if ceiling.get("rate"):
        print(f"ceiling: {ceiling['command']}\n  {ceiling['sink_count']:,} in {ceiling['wall_s']} s = "
              f"{ceiling['rate']} msg/s (sink CPU {ceiling.get('sink_cpu_s')} s)")
    if naive.get("rate"):
        print(f"naive: {naive['sample']:,} messages in {naive['seconds']} s = {naive['rate']} msg/s "
              f"({naive['ms_per_message']} ms each); N would take {naive['extrapolated_s_for_n']} s")
    print("targets:")
    for name, verdict in result["targets"].items():
        mark = "PASS" if verdict["ok"] else "FAIL"
        print(f"  {mark}  {name}: {verdict['value']} (target {verdict['target']})")
    if send["exit_code"] != 0:
        print("--- digest send output (tail) ---\n" + send["log_tail"])
    if send.get("profile_top"):
        print(send["profile_top"])
    print(f"results: {result['json']}")


def dkim_env(ed25519_too: bool) -> list[tuple[str, str]]:
    """Settings that make `digest send` sign every message with fresh keys."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    def pem(key) -> str:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()

    env = [("DKIM_SELECTOR", "bench"),
           ("DKIM_PRIVATE_KEY", pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))]
    if ed25519_too:
        env += [("DKIM_ED25519_SELECTOR", "benched"),
                ("DKIM_ED25519_PRIVATE_KEY", pem(ed25519.Ed25519PrivateKey.generate()))]
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description="Benchmark `flask digest send` end to end.")
    parser.add_argument("--n", default="100000",
                        help="subscribers; a comma list runs each (e.g. 10000,100000)")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432"),
                        help="server where a throwaway database is created (and dropped)")
    parser.add_argument("--sink", choices=("auto", "postfix", "asyncio"), default="auto")
    parser.add_argument("--sessions", type=int, default=16, help="smtp-source -s (parallel sessions)")
    parser.add_argument("--naive-n", type=int, default=2000, help="naive baseline sample; 0 = all N")
    parser.add_argument("--no-naive", action="store_true")
    parser.add_argument("--no-ceiling", action="store_true")
    parser.add_argument("--articles", type=int, default=12)
    parser.add_argument("--summary-words", type=int, default=25)
    parser.add_argument("--profile", action="store_true",
                        help="run the send under cProfile, CPU time of every thread (not child processes)")
    parser.add_argument("--env", action="append", default=[], type=lambda s: tuple(s.split("=", 1)),
                        metavar="KEY=VALUE",
                        help="extra environment for `digest send` (e.g. SEND_CONNECTIONS=8)")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help="before each send, wait up to this long for the machine to be mostly idle")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (SQLite database, logs)")
    parser.add_argument("--dkim", action="store_true",
                        help="sign every message (a fresh RSA-2048 key: DKIM_SELECTOR, DKIM_PRIVATE_KEY)")
    parser.add_argument("--dkim-ed25519", action="store_true",
                        help="with --dkim: a second, Ed25519 signature on every message")
    args = parser.parse_args()
    if args.dkim:
        args.env += dkim_env(args.dkim_ed25519)
    sizes = [int(x.replace("_", "")) for x in args.n.split(",")]
    # Bytecode for every module, as a deployed service has after its first start: otherwise the
    # first send after a change of the code also pays for compiling it (0.3-0.6 s).
    import compileall

    compileall.compile_dir(str(ROOT / "newsletter"), quiet=1)

    kind = args.sink
    if kind in ("auto", "postfix"):
        if ensure_postfix_tools():
            kind = "postfix"
        elif kind == "postfix":
            print("smtp-sink is not available", file=sys.stderr)
            return 2
        else:
            kind = "asyncio"
    sink = Sink(kind)
    log(f"sink: {' '.join(sink.command)}")
    results = []
    try:
        for n in sizes:
            result = run_one(args, n, sink)
            report(result)
            results.append(result)
    finally:
        sink.close()
    if len(results) > 1:
        small, large = results[0], results[-1]
        growth = large["send"]["peak_rss_mb"] / max(small["send"]["peak_rss_mb"], 0.1)
        print(f"\npeak RSS N={small['n']:,}: {small['send']['peak_rss_mb']} MB, N={large['n']:,}: "
              f"{large['send']['peak_rss_mb']} MB (x{growth:.2f}; flat means close to 1)")
    ok = all(v["ok"] for r in results for v in r["targets"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
