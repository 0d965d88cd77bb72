"""Importing subscribers from CSV: our own export, Mailchimp and listmonk exports.

`import_csv` reads the file as a stream (line by line through the csv module,
never whole), checks every row with the signup form's rules (subscriptions.py)
and writes in chunks with bulk statements (INSERT … ON CONFLICT DO NOTHING),
all inside ONE transaction: a failure anywhere (database error, unreadable file,
bytes that are not the detected encoding) rolls everything back.

The rules of consent:
- an import only adds people, or confirms a pending person when `confirmed`
  is given; it never lowers anyone's status, and never re-subscribes someone
  who unsubscribed, bounced or complained;
- a row that the exporting system marks as opted out (unsubscribed, cleaned,
  blocklisted) is not imported; a row our own export marks `pending` stays
  pending even with `confirmed` (that person never confirmed);
- the consent evidence the export carries (Mailchimp OPTIN_TIME, OPTIN_IP,
  CONFIRM_TIME, CONFIRM_IP; listmonk created_at; our created_at/confirmed_at)
  goes into the ConsentEvent detail with the file name and layout.

Pending people get a confirmation email: one QueuedEmail row each, inserted in
bulk without a rendered message (mail_queue renders it when it sends).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

from flask import current_app
from flask_babel import gettext
from sqlalchemy import JSON, select, update
from sqlalchemy.exc import SQLAlchemyError

from newsletter.extensions import db
from newsletter.i18n import N_, Problem, localized
from newsletter.mail import outbox as mail_queue
from newsletter.models import (
    CONSENT_SOURCES,
    ConsentEvent,
    QueuedEmail,
    Subscriber,
    new_uid,
    subscriber_topics,
    utcnow,
)
from newsletter.subscriptions import suppression
from newsletter.subscriptions.consent import email_hash
from newsletter.subscriptions.signup import InvalidInput, normalise_email
from newsletter.subscriptions.topics import all_topics, ensure_topics
from newsletter.subscriptions.validation import clean_name, has_forbidden_characters

CHUNK_SIZE = 2000  # rows per bulk statement round
HEAD_BYTES = 64 * 1024  # what the encoding and delimiter are guessed from
MAX_EVIDENCE_LENGTH = 100
FALLBACK_ENCODING = "cp1252"  # Excel on Windows (Swedish and English) saves CSV in it

# A person's status in an export, as ours: confirmed, pending, or one of the opt-outs.
OPT_OUTS = {
    "unsubscribed": N_("unsubscribed in the export: not imported"),
    "bounced": N_("bounced in the export: not imported"),
    "complained": N_("complained in the export: not imported"),
    "cleaned": N_("cleaned (bounced) in the Mailchimp export: not imported"),
    "blocklisted": N_("blocklisted in the listmonk export: not imported"),
    "disabled": N_("disabled in the listmonk export: not imported"),
}
ACTIVE_HERE = ("pending", "confirmed")
# What the admin's page says of a suppressed row, by the suppression's reason.
SUPPRESSED_NOTICE = N_("on the suppression list: not imported")
SUPPRESSED_NOTICES = {
    "unsubscribed": N_("on the suppression list (unsubscribed): not imported"),
    "bounced": N_("on the suppression list (bounced): not imported"),
    "complained": N_("on the suppression list (complained): not imported"),
    "erased": N_("on the suppression list (erased): not imported"),
    "imported": N_("on the suppression list (opted out in an imported list): not imported"),
}


class ImportFailed(Exception):
    """The import as a whole failed and nothing was written; `line` is where, if known."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(f"line {line}: {message}" if line else message)
        self.line, self.problem = line, message

    def localized(self) -> str:
        """The message in the page's language."""
        problem = localized(self.problem)
        if not self.line:
            return problem
        return gettext("line %(line)s: %(problem)s", line=self.line, problem=problem)


@dataclass
class ImportReport:
    """What an import did. Every data row is added, updated (pending -> confirmed) or skipped."""

    filename: str = ""
    layout: str = ""
    encoding: str = ""
    dry_run: bool = False
    rows: int = 0
    added: int = 0
    updated: int = 0
    skipped: int = 0
    confirmations_queued: int = 0
    suppressed: int = 0  # rows left alone because the address is on the suppression list
    opt_outs: int = 0  # rows the export marks as opted out, added to the suppression list
    errors: list[tuple[int, str]] = field(default_factory=list)  # invalid rows: (line, reason)
    # Valid rows left alone on purpose (opted out at the source, unsubscribed here): (line, reason).
    notices: list[tuple[int, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # about the whole file (encoding, tags)
    last_line: int = 0  # where reading got to (for an error that stops the import)

    def summary(self) -> str:
        what = "would be" if self.dry_run else "were"
        queued = self.confirmations_queued
        what = what if queued != 1 else what.replace("were", "was")
        return (f"{_count(self.rows, 'row')} ({self.layout}, {self.encoding}): {self.added} added, "
                f"{self.updated} confirmed who were pending, {self.skipped} skipped "
                f"({len(self.errors)} invalid, {self.suppressed} suppressed, "
                f"{self.opt_outs} opted out at the source); "
                f"{_count(queued, 'confirmation email')} {what} queued")


def _count(number: int, noun: str) -> str:
    """ "1 row", "2 rows": the command line's English, singular and plural."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


# --- reading the file: encoding, delimiter, lines --------------------------------------


class _Prefixed(io.RawIOBase):
    """A non-seekable byte stream with the bytes already read from it put back in front."""

    def __init__(self, head: bytes, rest: IO[bytes]):
        self.head, self.rest = head, rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.head:
            size = min(len(buffer), len(self.head))
            buffer[:size], self.head = self.head[:size], self.head[size:]
            return size
        data = self.rest.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def _guess_encoding(head: bytes) -> str:
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"  # Excel's "Unicode text"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return FALLBACK_ENCODING
    return "utf-8"


def open_text(stream: IO, encoding: str | None, report: ImportReport) -> IO[str]:
    """The stream as text with line ends untouched (what csv wants), its encoding detected."""
    if isinstance(stream, io.TextIOBase):
        report.encoding = getattr(stream, "encoding", None) or "text"
        return stream
    head = stream.read(HEAD_BYTES)
    if not isinstance(head, bytes):
        raise TypeError("import_csv wants a binary stream (or a text stream)")
    if encoding:
        try:
            codecs.lookup(encoding)
        except LookupError as exc:
            raise ImportFailed(Problem(N_("unknown encoding %(encoding)s"), encoding=repr(encoding))) from exc
    else:
        encoding = _guess_encoding(head)
        if encoding == FALLBACK_ENCODING:
            report.warnings.append(Problem(N_(
                "the file is not UTF-8: it was read as Windows-1252 (Latin-1); check that names with "
                "å, ä, ö look right, or save the file as 'CSV UTF-8' and import it again")))
    report.encoding = encoding
    raw = _Prefixed(head, stream)
    return io.TextIOWrapper(io.BufferedReader(raw), encoding=encoding, newline="")


def _delimiter(first_line: str) -> str:
    # Swedish Excel writes ';', "Unicode text" writes tabs; a one-column file has none of them.
    counts = {d: first_line.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def _records(text: IO[str]) -> Iterator[tuple[int, list[str]]]:
    """(first physical line number, cells) of every non-blank CSV record, header included."""
    lines = _bounded_lines(text)
    first = next(lines, "")
    delimiter = _delimiter(first)
    reader = csv.reader(_chain(first, lines), delimiter=delimiter)
    previous_end = 0
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ImportFailed(Problem(N_("the file is not valid CSV: %(detail)s"), detail=str(exc),
                                       local=N_("the file is not valid CSV")), reader.line_num) from exc
        start, previous_end = previous_end + 1, reader.line_num
        if any(cell.strip() for cell in cells):
            yield start, cells


# A line longer than this is refused as soon as this much of it is read (never read whole).
MAX_LINE_CHARS = 64 * 1024


def _bounded_lines(text: IO[str]) -> Iterator[str]:
    number = 0
    while True:
        line = text.readline(MAX_LINE_CHARS + 1)
        if not line:
            return
        number += 1
        if len(line) > MAX_LINE_CHARS:
            raise ImportFailed(f"the file is not valid CSV: line {number} is longer than {MAX_LINE_CHARS} "
                               "characters", number)
        yield line


def _chain(first: str, rest: Iterator[str]) -> Iterator[str]:
    if first:
        yield first
    yield from rest


# --- layouts --------------------------------------------------------------------


EMAIL_HEADERS = ("email", "e-mail", "email address", "email_address", "e-post", "epost", "mail")


@dataclass
class Layout:
    """Which column holds what; `index(name)` is the column of a lower-cased header, or None."""

    name: str
    columns: dict[str, int]
    email: int
    status_of_file: str = ""  # Mailchimp writes one file per status

    def index(self, header: str) -> int | None:
        return self.columns.get(header)


def detect_layout(header: list[str]) -> Layout | None:
    """Our export (or any file with an email column), Mailchimp, listmonk; None if no email column."""
    columns: dict[str, int] = {}
    for position, cell in enumerate(header):
        columns.setdefault(cell.strip().lstrip("\ufeff").strip().lower(), position)
    if "email address" in columns:
        status = "unsubscribed" if "unsub_time" in columns else "cleaned" if "clean_time" in columns else ""
        return Layout("mailchimp", columns, columns["email address"], status)
    if "email" in columns and "attributes" in columns and "status" in columns:
        return Layout("listmonk", columns, columns["email"])
    for name in EMAIL_HEADERS:
        if name in columns:
            return Layout("newsletter", columns, columns[name])
    return None


EVIDENCE = {
    "mailchimp": {"optin_time": "optin_time", "optin_ip": "optin_ip", "confirm_time": "confirm_time",
                  "confirm_ip": "confirm_ip", "last_changed": "last_changed", "unsub_time": "unsub_time",
                  "clean_time": "clean_time", "leid": "mailchimp_leid"},
    "listmonk": {"uuid": "listmonk_uuid", "created_at": "created_at", "updated_at": "updated_at"},
    "newsletter": {"created_at": "created_at", "confirmed_at": "confirmed_at"},
    "addresses": {},
}


# --- one row ---------------------------------------------------------------------


# A plain ASCII dot-atom local part: a strict subset of what email-validator accepts, and one it
# leaves as it is. Such addresses only need their domain checked, and domains repeat in a list.
_PLAIN_ADDRESS = re.compile(r"([A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*)@([A-Za-z0-9.-]+)")
_DOMAIN_CACHE_SIZE = 50_000


class EmailNormaliser:
    """subscriptions.normalise_email, with each distinct domain validated once (100,000 rows)."""

    def __init__(self):
        self.domains: dict[str, str | tuple[str]] = {}  # domain -> normalised, or (reason,)

    def __call__(self, raw: str) -> str:
        match = _PLAIN_ADDRESS.fullmatch(raw)
        if match is None or len(raw) > 254 or len(match.group(1)) > 64:
            return normalise_email(raw)  # anything unusual: the full rules
        domain = self.domains.get(match.group(2))
        if domain is None:
            try:
                domain = normalise_email(f"a@{match.group(2)}").partition("@")[2]
            except InvalidInput as exc:
                domain = (exc.reason,)
            if len(self.domains) < _DOMAIN_CACHE_SIZE:
                self.domains[match.group(2)] = domain
        if isinstance(domain, tuple):
            raise InvalidInput("email", domain[0])
        return f"{match.group(1)}@{domain}".lower()


@dataclass
class Row:
    line: int
    email: str
    name: str
    language: str
    topic_ids: list[int]
    may_confirm: bool  # False when the export says this person never confirmed
    evidence: dict[str, str]


class RowRejected(Exception):
    def __init__(self, reason: str, *, notice: bool = False, opted_out: str = ""):
        super().__init__(reason)
        self.reason, self.notice = reason, notice
        self.opted_out = opted_out  # the address, when the export says it opted out


def _unescape(value: str) -> str:
    """Undo our export's spreadsheet escape ('=…, '+…, '-…, '@…)."""
    return value[1:] if value[:1] == "'" and value[1:2] in ("=", "+", "-", "@") else value


class RowReader:
    """Turns the cells of one record into a Row (or RowRejected), by the layout."""

    def __init__(self, layout: Layout):
        self.layout = layout
        self.languages = current_app.config["LANGUAGES"]
        self.default_language = current_app.config["DEFAULT_LOCALE"]
        self.topics: dict[str, int] = {}
        for topic in all_topics():
            for key in (topic.slug, topic.name_sv, topic.name_en):
                self.topics.setdefault(key.strip().lower(), topic.id)
        self.ignored_tags: set[str] = set()
        self.normalise_email = EmailNormaliser()
        self.topic_cache: dict[str, list[int] | str] = {}  # cell -> topic ids, or why not

    def cell(self, cells: list[str], header: str) -> str:
        position = self.layout.index(header)
        return cells[position] if position is not None and position < len(cells) else ""

    def read(self, line: int, cells: list[str]) -> Row:
        layout = self.layout
        raw_email = cells[layout.email] if layout.email < len(cells) else ""
        try:
            email = self.normalise_email(_unescape(raw_email))
        except InvalidInput as exc:
            raise RowRejected(exc.reason) from None
        status = self.status(cells)
        if status in OPT_OUTS:
            raise RowRejected(Problem(OPT_OUTS[status]), notice=True, opted_out=email)
        try:
            name = clean_name(_unescape(self.name(cells)))
        except InvalidInput as exc:
            raise RowRejected(exc.reason) from None
        return Row(line=line, email=email, name=name, language=self.language(cells),
                   topic_ids=self.topic_ids(cells), may_confirm=status != "pending",
                   evidence=self.evidence(cells))

    def status(self, cells: list[str]) -> str:
        if self.layout.status_of_file:
            return self.layout.status_of_file
        value = self.cell(cells, "status").strip().lower()
        if self.layout.name == "listmonk":
            return "" if value == "enabled" else value
        if value in ("", "confirmed", "subscribed", "pending") or value in OPT_OUTS:
            return value
        raise RowRejected(Problem(N_("unknown status %(value)s"), value=repr(value[:20])))

    def name(self, cells: list[str]) -> str:
        if self.layout.name == "mailchimp":
            return f"{self.cell(cells, 'first name')} {self.cell(cells, 'last name')}".strip()
        return self.cell(cells, "name").strip(" ")

    def language(self, cells: list[str]) -> str:
        value = self.cell(cells, "language") or self.cell(cells, "lang") or self.cell(cells, "språk")
        value = value.strip(" ")
        if not value and self.layout.name == "listmonk":
            value = str(self.attributes(cells).get("language") or self.attributes(cells).get("lang") or "")
        if not value:
            return self.default_language
        code = value.strip().lower().replace("_", "-").partition("-")[0]
        if code not in self.languages or has_forbidden_characters(value):
            raise RowRejected(Problem(N_("unknown language %(value)s"), value=repr(value[:20])))
        return code

    def attributes(self, cells: list[str]) -> dict:
        try:
            value = json.loads(self.cell(cells, "attributes") or "{}")
        except (ValueError, RecursionError):
            return {}
        return value if isinstance(value, dict) else {}

    def topic_ids(self, cells: list[str]) -> list[int]:
        if self.layout.name == "mailchimp":  # tags: "a","b" ; only those that name a topic count
            tags = next(csv.reader([self.cell(cells, "tags")]), [])
            ids = []
            for tag in (t.strip() for t in tags if t.strip()):
                if tag.lower() in self.topics:
                    ids.append(self.topics[tag.lower()])
                else:
                    self.ignored_tags.add(tag[:40])
            return sorted(set(ids))
        value = self.cell(cells, "topics")
        known = self.topic_cache.get(value)
        if known is None:
            try:
                known = self.parse_topics(value)
            except RowRejected as exc:
                known = exc.reason
            if len(self.topic_cache) < 1000:
                self.topic_cache[value] = known
        if isinstance(known, str):
            raise RowRejected(known)
        return known

    def parse_topics(self, value: str) -> list[int]:
        if has_forbidden_characters(value):
            raise RowRejected(Problem(N_("line break or control character in the topics")))
        wanted = [s for s in re.split(r"[;,|]+", value.lower()) if s.strip()]
        unknown = [s.strip() for s in wanted if s.strip() not in self.topics]
        if unknown:
            raise RowRejected(Problem(N_("unknown topic: %(topics)s"), topics=", ".join(unknown)[:80]))
        return sorted({self.topics[s.strip()] for s in wanted})

    def evidence(self, cells: list[str]) -> dict[str, str]:
        found = {}
        for header, key in EVIDENCE[self.layout.name].items():
            value = self.cell(cells, header).strip(" ")
            if value and not has_forbidden_characters(value):
                found[key] = value[:MAX_EVIDENCE_LENGTH]
        return found


# --- writing ---------------------------------------------------------------------------


class BulkInsert:
    """INSERT many rows with one statement per batch, without SQLAlchemy's per-row work.

    PostgreSQL: INSERT … SELECT * FROM unnest(one array per column), one statement per chunk.
    SQLite: a multi-row VALUES list (within its parameter limit). Values go through the column
    types' bind processors (a datetime repeated row after row is processed once).
    """

    SQLITE_MAX_PARAMS = 30_000  # SQLite >= 3.32 allows 32,766

    def __init__(self, table, columns: tuple[str, ...], *, conflict: str = "",
                 returning: tuple[str, ...] = ()):
        self.connection = db.session.connection()
        dialect = self.dialect = self.connection.dialect
        if dialect.name not in ("postgresql", "sqlite"):
            raise ImportFailed(Problem(N_("bulk import is not supported on %(database)s"),
                                       database=dialect.name))
        quote = dialect.identifier_preparer.quote
        self.columns, self.returning = columns, bool(returning)
        self.processors = [self._processor(table.c[name]) for name in columns]
        head = f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in columns)}) "
        tail = f" ON CONFLICT ({quote(conflict)}) DO NOTHING" if conflict else ""
        if returning:
            tail += " RETURNING " + ", ".join(quote(c) for c in returning)
        if dialect.name == "postgresql":
            # %b: binary parameters (arrays dumped without text escaping)
            arrays = ", ".join(f"%b::{table.c[name].type.compile(dialect=dialect)}[]" for name in columns)
            self.sql = f"{head}SELECT * FROM unnest({arrays}){tail}"  # nosec B608 # table and column names from the models
        else:
            self.head, self.tail = head + "VALUES ", tail
            self.values = "(" + ", ".join("?" * len(columns)) + ")"
            self.batch = max(1, self.SQLITE_MAX_PARAMS // len(columns))

    def _processor(self, column):
        if isinstance(column.type, JSON):
            return json.dumps
        process = column.type.dialect_impl(self.dialect).bind_processor(self.dialect)
        if process is None:
            return None
        last: list = [object(), None]

        def cached(value):
            if value is not last[0]:
                last[0], last[1] = value, process(value)
            return last[1]

        return cached

    def __call__(self, rows: list[dict]) -> list[tuple]:
        """Insert `rows` (dicts with every column); the RETURNING rows, if asked for."""
        if not rows:
            return []
        table = [[row[name] for row in rows] for name in self.columns]
        for index, process in enumerate(self.processors):
            if process is not None:
                table[index] = [process(value) for value in table[index]]
        if self.dialect.name == "postgresql":
            result = self.connection.exec_driver_sql(self.sql, tuple(table))
            return list(result.all()) if self.returning else []
        returned: list[tuple] = []
        records = list(zip(*table, strict=True))
        for start in range(0, len(records), self.batch):
            batch = records[start:start + self.batch]
            sql = self.head + ", ".join([self.values] * len(batch)) + self.tail
            result = self.connection.exec_driver_sql(sql, tuple(v for record in batch for v in record))
            if self.returning:
                returned.extend(result.all())
        return returned


SUBSCRIBER_COLUMNS = ("uid", "email", "name", "status", "language", "created_at", "generation",
                      "confirmed_at", "confirmation_sent_at")
EVENT_COLUMNS = ("subscriber_id", "email_hash", "kind", "source", "wording_version", "ip", "user_agent",
                 "detail", "created_at")
MAIL_COLUMNS = ("kind", "subscriber_id", "to_addr", "message", "attempts", "next_attempt_at", "last_error",
                "created_at")


class Writer:
    """Writes validated rows a chunk at a time, in the caller's transaction."""

    def __init__(self, report: ImportReport, *, confirmed: bool, source: str, filename: str, layout: str,
                 actor: str, command: str):
        self.report, self.confirmed, self.now = report, confirmed, utcnow()
        self.base_detail = {"file": filename, "layout": layout, "channel": source}
        if actor:
            self.base_detail["actor"] = actor
        if confirmed:
            # The operator asserts these people consented: the command and file are the source.
            self.base_detail["consent_source"] = f"{command or source + ' import --confirmed'} {filename}"
        self.insert_subscribers = BulkInsert(Subscriber.__table__, SUBSCRIBER_COLUMNS, conflict="email",
                                             returning=("id", "email"))
        self.insert_events = BulkInsert(ConsentEvent.__table__, EVENT_COLUMNS)
        self.insert_mails = BulkInsert(QueuedEmail.__table__, MAIL_COLUMNS)
        self.insert_links = BulkInsert(subscriber_topics, ("subscriber_id", "topic_id"))

    def write(self, rows: list[Row]) -> None:
        existing = {
            email: (sid, status) for sid, email, status in db.session.execute(
                select(Subscriber.id, Subscriber.email, Subscriber.status)
                .where(Subscriber.email.in_([r.email for r in rows])))
        }
        fresh = [r for r in rows if r.email not in existing]
        # Erased, or purged after unsubscribing: only the person's own signup brings them back.
        refused = suppression.suppressed([r.email for r in fresh])
        for row in fresh:
            if row.email in refused:
                self.report.notices.append((row.line, Problem(
                    N_("suppressed (%(reason)s): not imported"), reason=refused[row.email],
                    local=SUPPRESSED_NOTICES.get(refused[row.email], SUPPRESSED_NOTICE))))
                self.report.skipped += 1
                self.report.suppressed += 1
        fresh = [r for r in fresh if r.email not in refused]
        added = self.insert_new(fresh) if fresh else {}
        for row in fresh:
            if row.email not in added:  # signed up a moment ago, while we were importing
                self.report.skipped += 1
        self.handle_existing([r for r in rows if r.email in existing], existing)

    def status_of(self, row: Row) -> str:
        return "confirmed" if self.confirmed and row.may_confirm else "pending"

    def insert_new(self, rows: list[Row]) -> dict[str, int]:
        now = self.now
        values = []
        for row in rows:
            status = self.status_of(row)
            values.append({
                "uid": new_uid(), "email": row.email, "name": row.name, "status": status,
                "language": row.language, "created_at": now, "generation": 0,
                "confirmed_at": now if status == "confirmed" else None,
                "confirmation_sent_at": now if status == "pending" else None,
            })
        ids = {email: sid for sid, email in self.insert_subscribers(values)}
        links, events, mails = [], [], []
        for row in rows:
            sid = ids.get(row.email)
            if sid is None:
                continue
            status = self.status_of(row)
            links.extend({"subscriber_id": sid, "topic_id": t} for t in row.topic_ids)
            events.append(self.event(sid, row.email, "import", row, status))
            if status == "pending":
                mails.append({"kind": "confirm", "subscriber_id": sid, "to_addr": row.email, "message": b"",
                              "attempts": 0, "next_attempt_at": now, "last_error": "", "created_at": now})
        self.insert_links(links)
        self.insert_mails(mails)
        self.insert_events(events)
        self.report.added += len(events)
        self.report.confirmations_queued += len(mails)
        return ids

    def event(self, sid: int, email: str, kind: str, row: Row, status: str) -> dict:
        detail = {**self.base_detail, "line": row.line, "confirmed": status == "confirmed", **row.evidence}
        if status != "confirmed":
            detail.pop("consent_source", None)
        return {"subscriber_id": sid, "email_hash": email_hash(email), "kind": kind, "source": "import",
                "wording_version": "", "ip": "", "user_agent": "", "detail": detail, "created_at": self.now}

    def handle_existing(self, rows: list[Row], existing: dict[str, tuple[int, str]]) -> None:
        to_confirm, events = [], []
        # Pending after an erasure or an opt-out: only their own confirmation may confirm them.
        held = suppression.suppressed([r.email for r in rows if existing[r.email][1] == "pending"]
                                      if self.confirmed else [])
        for row in rows:
            sid, status = existing[row.email]
            if status not in ACTIVE_HERE:
                self.report.notices.append((row.line, Problem(
                    N_("%(status)s here: not subscribed again by an import"), status=status,
                    local=N_("has left the list here: not subscribed again by an import"))))
                self.report.suppressed += 1
            elif row.email in held:
                self.report.notices.append((row.line, f"suppressed ({held[row.email]}): left pending until "
                                                      "the person confirms"))
                self.report.suppressed += 1
            elif status == "pending" and self.status_of(row) == "confirmed":
                to_confirm.append(sid)
                events.append(self.event(sid, row.email, "confirm", row, "confirmed"))
                continue
            self.report.skipped += 1
        if to_confirm:
            db.session.execute(
                update(Subscriber).where(Subscriber.id.in_(to_confirm), Subscriber.status == "pending")
                .values(status="confirmed", confirmed_at=self.now)
                .execution_options(synchronize_session=False))
            self.insert_events(events)
            self.report.updated += len(to_confirm)


# --- the service -------------------------------------------------------------------------


def import_csv(stream: IO, *, confirmed: bool, source: str, filename: str, actor: str = "",
               dry_run: bool = False, encoding: str | None = None, command: str = "",
               chunk_size: int = CHUNK_SIZE) -> ImportReport:
    """Import subscribers from a CSV stream (binary, or text); atomic; ImportFailed if nothing was.

    `source` is the channel (cli, admin, api); `command` what the operator ran (kept in the
    ledger as the consent source with --confirmed); `dry_run` checks everything and writes nothing.
    """
    if source not in CONSENT_SOURCES:
        raise ValueError(f"unknown source {source!r}")
    ensure_topics()  # committed on its own: the configured topics, not part of the import
    report = ImportReport(filename=filename, dry_run=dry_run)
    try:
        _import(stream, report, confirmed=confirmed, source=source, actor=actor, encoding=encoding,
                command=command, chunk_size=chunk_size)
    except ImportFailed:
        db.session.rollback()
        raise
    except (OSError, UnicodeDecodeError, SQLAlchemyError) as exc:
        db.session.rollback()
        where = f" after line {report.last_line}" if report.last_line else ""
        if isinstance(exc, UnicodeDecodeError):
            raise ImportFailed(Problem(N_(
                "the file is not valid %(encoding)s%(where)s: nothing was imported; save it as UTF-8 "
                "(or give its encoding) and import it again"),
                encoding=report.encoding, where=where)) from exc
        raise ImportFailed(Problem(N_("import failed%(where)s, nothing was imported: %(detail)s"),
                                   where=where, detail=_short(exc))) from exc
    except BaseException:
        db.session.rollback()
        raise
    if dry_run:
        db.session.rollback()
    else:
        db.session.commit()
        if report.confirmations_queued:
            mail_queue.wake()
    return report


def _short(exc: Exception) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _import(stream: IO, report: ImportReport, *, confirmed: bool, source: str, actor: str,
            encoding: str | None, command: str, chunk_size: int) -> None:
    records = _records(open_text(stream, encoding, report))
    first = next(records, None)
    if first is None:
        raise ImportFailed(Problem(N_("the file is empty")))
    line, header = first
    layout = detect_layout(header)
    pending_first: list[tuple[int, list[str]]] = []
    if layout is None:
        if len(header) and "@" in header[0]:  # no header: a plain list of addresses
            layout = Layout("addresses", {}, 0)
            pending_first.append(first)
        else:
            raise ImportFailed(Problem(N_(
                "no email column: the first line must name the columns (email, name, language, topics), "
                "or be a Mailchimp or listmonk export")), line)
    report.layout = layout.name
    reader = RowReader(layout)
    writer = Writer(report, confirmed=confirmed, source=source, filename=report.filename,
                    layout=layout.name, actor=actor, command=command)
    seen: dict[str, int] = {}
    chunk: list[Row] = []
    opted_out: list[str] = []  # addresses the export marks unsubscribed, cleaned, blocklisted
    for line, cells in _chain_records(pending_first, records):
        report.rows, report.last_line = report.rows + 1, line
        try:
            row = reader.read(line, cells)
            if row.email in seen:
                raise RowRejected(Problem(N_("duplicate of line %(line)s"), line=seen[row.email]))
        except RowRejected as rejected:
            (report.notices if rejected.notice else report.errors).append((line, rejected.reason))
            report.skipped += 1
            if rejected.opted_out:
                opted_out.append(rejected.opted_out)
            continue
        seen[row.email] = line
        chunk.append(row)
        if len(chunk) >= chunk_size:
            writer.write(chunk)
            chunk = []
        if len(opted_out) >= chunk_size:
            report.opt_outs += suppression.suppress(opted_out, reason="imported", source=source)
            opted_out = []
    if chunk:
        writer.write(chunk)
    if opted_out:
        report.opt_outs += suppression.suppress(opted_out, reason="imported", source=source)
    if reader.ignored_tags:
        tags = ", ".join(sorted(reader.ignored_tags)[:20])
        report.warnings.append(Problem(N_("tags that name no topic were ignored: %(tags)s"), tags=tags))


def _chain_records(first: list, rest: Iterator) -> Iterator:
    yield from first
    yield from rest
