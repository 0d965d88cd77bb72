"""LOG_FORMAT=json: one object per line with the request (or digest) id; no addresses at INFO+."""

from __future__ import annotations

import io
import json
import logging
import re
import threading

import pytest
from subs_helpers import signup

from newsletter.engine import logformat
from newsletter.extensions import db
from newsletter.mail import outbox as mail_queue


@pytest.fixture
def json_log():
    stream = io.StringIO()
    handler = logformat.configure("DEBUG", "json", stream=stream)
    yield stream
    logging.getLogger().removeHandler(handler)


def lines(stream) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_logs_parse_line_by_line_and_carry_the_request_id(app, json_log):
    client = app.test_client()
    response = client.post("/subscribe", json={"email": "bot@example.se", "website": "http://spam"},
                           headers={"Accept": "application/json", "X-Request-ID": "req-4711.a"})
    assert response.headers["X-Request-ID"] == "req-4711.a"
    records = lines(json_log)
    dropped = [r for r in records if "dropped as a bot" in r["message"]]
    assert dropped, records
    assert dropped[0]["request_id"] == "req-4711.a"
    assert {"time", "level", "logger", "message"} <= set(dropped[0])
    # Without one (or with one that is not a plain token), a new id is made.
    for given in (None, "bad id <script>"):
        response = client.get("/healthz", headers={"X-Request-ID": given} if given else {})
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])
    logging.getLogger("newsletter.test").info("outside a request")
    assert "request_id" not in lines(json_log)[-1]


def test_lines_of_a_sending_thread_carry_the_digest_id(json_log):
    thread = threading.Thread(target=lambda: logging.getLogger("newsletter.sending").warning("slow"),
                              name="send-42-1")
    thread.start()
    thread.join()
    with logformat.digest_context(7):
        logging.getLogger("newsletter.delivery").info("pinned")
    assert [(r["message"], r["digest_id"]) for r in lines(json_log)] == [("slow", 42), ("pinned", 7)]


def test_text_logs_stay_the_default_and_show_the_ids(app):
    stream = io.StringIO()
    handler = logformat.configure("INFO", "text", stream=stream)
    try:
        with logformat.digest_context(9):
            logging.getLogger("newsletter.delivery").info("sending to %s", "anna@example.se")
    finally:
        logging.getLogger().removeHandler(handler)
    line = stream.getvalue().strip()
    assert line.endswith("[digest_id=9]") and "INFO newsletter.delivery: sending to <email:" in line
    assert "anna@example.se" not in line


def test_no_address_reaches_the_logs_at_info_or_above(smtp_app, smtp_server, json_log):
    smtp_server.handler.faults = lambda rcpt: (
        f"550 5.1.1 <{rcpt}>: Recipient address rejected" if rcpt.startswith("anna") else None)
    client = smtp_app.test_client()
    for address in ("Anna.Lind@example.se", "erik@example.se"):
        response = signup(client, address)
        assert response.status_code in (200, 302, 303), response.get_data(as_text=True)
    with smtp_app.app_context():
        mail_queue.flush()
        db.session.remove()
    log = logging.getLogger("newsletter.test")
    log.warning("refused: %s", "550 <anna.lind@example.se> unknown")
    try:
        raise ValueError("no such user erik@example.se")
    except ValueError:
        log.exception("failed")
    log.debug("debug may name %s", "anna.lind@example.se")
    records = lines(json_log)
    loud = [r for r in records if r["level"] != "DEBUG"]
    assert any("<email:" in r["message"] for r in loud)
    text = json.dumps(loud)
    assert "anna.lind@example.se" not in text.lower() and "erik@example.se" not in text
    assert any("anna.lind@example.se" in r["message"] for r in records if r["level"] == "DEBUG")
    assert len(smtp_server.messages(to="erik@example.se")) == 1
