"""How every process logs: plain text (the default) or one JSON object per line (LOG_FORMAT=json).

Standard library only, so the send workers (no Flask) log the same way as the web app, the
scheduler and the Celery workers. Two context variables carry what a line is about: the
request id (web) and the digest id (a send). Email addresses never reach a log at INFO or
above: they are replaced by a short hash, so logs can be kept longer than personal data.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
digest_id: contextvars.ContextVar[int | None] = contextvars.ContextVar("digest_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Local part @ domain with a dot; deliberately broad: a false positive costs a hash in a log line.
ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")


def hide_address(match: re.Match) -> str:
    return "<email:" + hashlib.sha256(match.group(0).lower().encode()).hexdigest()[:12] + ">"


def redact(text: str) -> str:
    """The text with every email address replaced by `<email:HASH>` (the same address, the same hash)."""
    return ADDRESS.sub(hide_address, text) if "@" in text else text


def _digest_of_thread(name: str | None) -> int | None:
    """The sending threads are named "send-<digest id>[-…]": their lines carry the digest id."""
    if name and name.startswith("send-"):
        number = name[5:].partition("-")[0]
        if number.isdigit():
            return int(number)
    return None


class ContextFilter(logging.Filter):
    """Adds the request and digest ids to every record, and hides addresses at INFO and above."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        if getattr(record, "digest_id", None) is None:
            record.digest_id = digest_id.get() or _digest_of_thread(record.threadName)
        if record.levelno >= logging.INFO:
            message = record.getMessage()
            if "@" in message:
                record.msg, record.args = redact(message), None
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text and "@" in record.exc_text:
                record.exc_text = redact(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, digest_id (and exc)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        for name in ("request_id", "digest_id"):
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The plain default, with the request or digest id appended when there is one."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = " ".join(f"{name}={value}" for name in ("request_id", "digest_id")
                         if (value := getattr(record, name, None)) is not None)
        return f"{line} [{extra}]" if extra else line


def configure(level: str = "INFO", fmt: str = "text", stream=None) -> logging.Handler:
    """Set the root logger up once for this process (again replaces the handler it set before)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_newsletter", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._newsletter = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if fmt.lower() == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler


@contextlib.contextmanager
def digest_context(value: int | None) -> Iterator[None]:
    """Log lines inside carry this digest id."""
    token = digest_id.set(value)
    try:
        yield
    finally:
        digest_id.reset(token)
