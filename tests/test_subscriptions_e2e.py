"""The whole double opt-in flow over real HTTP (loopback) against a real SMTP server."""

from __future__ import annotations

import re
import threading

import pytest
import requests
from conftest import body_text
from subs_helpers import confirm_links, count, form_fields, subscriber
from werkzeug.serving import make_server

from newsletter.extensions import db
from newsletter.mail import outbox as mail_queue
from newsletter.models import ConsentEvent


@pytest.fixture
def live_url(smtp_app):
    """The real app served over HTTP on a loopback port, in a thread."""
    server = make_server("127.0.0.1", 0, smtp_app, threaded=True)
    url = f"http://127.0.0.1:{server.server_port}"
    smtp_app.config["PUBLIC_URL"] = url  # links in the emails point at this server
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield url
    server.shutdown()
    thread.join(timeout=5)


def flush(app) -> int:
    with app.app_context():
        return mail_queue.flush()


def test_subscribe_confirm_welcome_and_one_click_unsubscribe(smtp_app, smtp_server, live_url):
    browser = requests.Session()
    page = browser.get(f"{live_url}/subscribe", headers={"Accept-Language": "sv"})
    assert page.status_code == 200, page.text
    assert "<html lang=\"sv\">" in page.text
    data = {**form_fields(page.text), "email": "Anna.Lindqvist@Example.SE", "topics": ["nyheter"],
            "language": "sv", "website": ""}
    answer = browser.post(f"{live_url}/subscribe", data=data, allow_redirects=False)
    assert answer.status_code == 200 and "Kolla din inkorg" in answer.text

    # The request only queued the email; the queue sends it.
    assert smtp_server.messages() == []
    assert flush(smtp_app) == 1
    [confirmation] = smtp_server.messages(to="anna.lindqvist@example.se")
    assert confirmation["Subject"] == "Bekräfta din prenumeration"
    assert confirmation.get_content_type() == "multipart/alternative"
    assert confirmation["List-Unsubscribe"] is None  # not a bulk email
    links = confirm_links(body_text(confirmation)) | confirm_links(body_text(confirmation, "html"))
    assert len(links) == 1, links
    [confirm_url] = links
    assert confirm_url.startswith(f"{live_url}/confirm/")

    # A link scanner's GET changes nothing.
    scanner = requests.get(confirm_url)
    assert scanner.status_code == 200 and "<form" in scanner.text
    with smtp_app.app_context():
        assert subscriber("anna.lindqvist@example.se").status == "pending"

    # The person presses the button.
    reader = requests.Session()
    button_page = reader.get(confirm_url)
    confirmed = reader.post(confirm_url, data=form_fields(button_page.text), allow_redirects=False)
    assert confirmed.status_code == 200
    with smtp_app.app_context():
        person = subscriber("anna.lindqvist@example.se")
        assert person.status == "confirmed" and person.confirmed_at is not None
        assert count(ConsentEvent, ConsentEvent.subscriber_id == person.id,
                     ConsentEvent.kind == "confirm") == 1

    assert flush(smtp_app) == 1
    welcome = smtp_server.messages(to="anna.lindqvist@example.se")[-1]
    assert welcome["Subject"] == "Välkommen till vårt nyhetsbrev"
    for header in ("Date", "From", "To", "Subject", "Message-ID"):
        assert len(welcome.get_all(header)) == 1, header
    assert welcome["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert welcome["List-Id"]
    unsubscribe_url = re.fullmatch(r"<([^>]+)>", welcome["List-Unsubscribe"]).group(1)
    assert unsubscribe_url.startswith(f"{live_url}/unsubscribe/")
    assert not confirm_links(body_text(welcome))

    # RFC 8058 one-click: a POST without cookies or CSRF token, multipart then urlencoded.
    one_click = requests.post(unsubscribe_url, files={"List-Unsubscribe": (None, "One-Click")},
                              allow_redirects=False)
    assert one_click.status_code == 200
    with smtp_app.app_context():
        assert subscriber("anna.lindqvist@example.se").status == "unsubscribed"
    again = requests.post(unsubscribe_url, data={"List-Unsubscribe": "One-Click"}, allow_redirects=False)
    assert again.status_code == 200
    with smtp_app.app_context():
        person = subscriber("anna.lindqvist@example.se")
        assert person.status == "unsubscribed"
        assert count(ConsentEvent, ConsentEvent.subscriber_id == person.id,
                     ConsentEvent.kind == "unsubscribe") == 1
        db.session.remove()

    # The old confirmation link no longer subscribes them.
    old = reader.get(confirm_url)
    assert old.status_code == 410 and 'href="/subscribe"' in old.text
