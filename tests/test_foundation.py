"""The app factory, configuration defaults, health check and the mail module."""

from __future__ import annotations

import re
from email import message_from_bytes, policy

from conftest import body_text

from newsletter import create_app
from newsletter.engine.prepared import slot
from newsletter.engine.smtp import MailError
from newsletter.mail.compose import prepare_message
from newsletter.mail.transports import transport_from_url


def test_healthz_reports_database_ok(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "database": "ok"}


def test_embedded_defaults_live_in_the_instance_folder(tmp_path, monkeypatch):
    for name in ("DATABASE_URL", "MAIL_URL", "SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    app = create_app({"INSTANCE_PATH": str(tmp_path), "SQLALCHEMY_DATABASE_URI": None,
                      "MAIL_URL": None, "SECRET_KEY": None})
    assert app.config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path / 'newsletter.db'}"
    assert app.config["MAIL_URL"] == f"outbox://{tmp_path / 'outbox'}"
    key = app.config["SECRET_KEY"]
    assert len(key) > 40
    again = create_app({"INSTANCE_PATH": str(tmp_path), "SQLALCHEMY_DATABASE_URI": None,
                        "MAIL_URL": None, "SECRET_KEY": None})
    assert again.config["SECRET_KEY"] == key  # generated once, then kept


def _prepared(app, bulk=True):
    with app.test_request_context():
        return prepare_message(
            subject="Veckans nyheter: Ålidhem får bibliotek",
            text=f"Hej!\nAvsluta: {slot('unsubscribe_url')}\n" + "å" * 200,
            html=f'<p>Hej <a href="{slot("unsubscribe_url")}">avsluta</a></p>',
            bulk=bulk,
        )


def test_prepared_message_is_valid_mime_with_personal_parts(app):
    prepared = _prepared(app)
    url = "http://newsletter.test/unsubscribe/abc.def-ghi?x=1&y=2"
    raw = prepared.render({"to": "anna@example.se", "unsubscribe_url": url})
    assert all(len(line) <= 78 for line in raw.split(b"\r\n")), "line too long for SMTP"
    assert raw.isascii()
    msg = message_from_bytes(raw, policy=policy.default)
    for header in ("Date", "From", "To", "Subject", "Message-ID"):
        assert len(msg.get_all(header)) == 1, header
    assert msg["Subject"] == "Veckans nyheter: Ålidhem får bibliotek"
    assert msg["To"] == "anna@example.se"
    assert msg["List-Unsubscribe"] == f"<{url}>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert re.fullmatch(r"<[^@>]+@norrsken\.example>", msg["Message-ID"])
    assert msg.get_content_type() == "multipart/alternative"
    text, html = body_text(msg), body_text(msg, "html")
    assert f"Avsluta: {url}\n" in text and "å" * 200 in text
    assert 'href="http://newsletter.test/unsubscribe/abc.def-ghi?x=1&amp;y=2"' in html


def test_each_rendering_gets_its_own_message_id(app):
    prepared = _prepared(app)
    ids = {message_from_bytes(prepared.render({"to": "a@example.se", "unsubscribe_url": "u"}),
                              policy=policy.default)["Message-ID"] for _ in range(50)}
    assert len(ids) == 50


def test_smtp_transport_delivers_and_reports_refusals(app, smtp_server):
    prepared = _prepared(app)
    smtp_server.handler.faults = lambda rcpt: "550 5.1.1 no such user" if rcpt.startswith("gone") else None
    with app.app_context():
        transport = transport_from_url(smtp_server.url)
        transport.send("nyhetsbrev@norrsken.example", "anna@example.se",
                       prepared.render({"to": "anna@example.se", "unsubscribe_url": "u"}))
        try:
            transport.send("nyhetsbrev@norrsken.example", "gone@example.se",
                           prepared.render({"to": "gone@example.se", "unsubscribe_url": "u"}))
        except MailError as exc:
            assert exc.code == 550 and exc.permanent
        else:
            raise AssertionError("a 550 must raise")
        transport.close()
    assert [m["To"] for m in smtp_server.messages()] == ["anna@example.se"]
