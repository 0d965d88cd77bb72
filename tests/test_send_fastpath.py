"""The bulk-send hot path: same bytes and same choices as the slow way.

The SMTP transport's own dot-stuffing, pipelining and reply checks against real SMTP
servers, the prepared message's render and wire forms against straightforward
re-implementations, and the row-based variant lookup against the ORM one.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import pytest
from delivery_helpers import PipeliningServer
from markupsafe import escape

from newsletter.digests import DigestRenderer
from newsletter.engine.prepared import _qp, dot_stuffed, slot
from newsletter.engine.smtp import MailError, Outgoing, SMTPTransport
from newsletter.mail import compose as mail
from newsletter.models import Article, Digest, Subscriber, Topic


def _reference_render(prepared: mail.PreparedMessage, values: dict[str, str]) -> bytes:
    """What render must produce: each slot encoded on its own, no caching."""
    parts = [prepared.chunks[0]]
    for (name, encoding), chunk in zip(prepared.slots, prepared.chunks[1:], strict=True):
        value = values[name]
        if encoding == "header":
            parts.append(value.encode())
        else:
            if encoding == "html":
                value = str(escape(value))
            parts.append(b"=\r\n" + _qp(value) + b"=\r\n")
        parts.append(chunk)
    return b"".join(parts)


def test_render_matches_the_reference_and_makes_up_date_and_message_id(app):
    with app.app_context():
        prepared = mail.prepare_message(
            subject="Veckans nyheter – åäö",
            text=f"Hej!\n.en rad som börjar med punkt\nAvsluta: {slot('unsubscribe_url')}\n"
                 f"Inställningar: {slot('preferences_url')}\n",
            html=f'<p><a href="{slot("unsubscribe_url")}">Avsluta</a> '
                 f'<a href="{slot("preferences_url")}">Inställningar</a></p>',
            bulk=True,
        )
        values = {
            "to": "läsare@example.com",
            "message_id": "<1.2@norrsken.example>",
            "date": "Mon, 23 Nov 2026 07:00:00 +0000",
            # an "&" is escaped in the HTML part only: the cache must keep the two apart
            "unsubscribe_url": "http://newsletter.test/unsubscribe/abc?x=1&y=" + "z" * 90,
            "preferences_url": "http://newsletter.test/preferences/abc",
        }
        assert prepared.render(values) == _reference_render(prepared, values)

        made_up = prepared.render({k: v for k, v in values.items() if k not in ("date", "message_id")})
        headers = made_up.split(b"\r\n\r\n", 1)[0].decode().replace("\r\n", "\n")
        date = re.search(r"^Date: (.+)$", headers, re.M).group(1)
        assert abs((parsedate_to_datetime(date) - datetime.now(UTC)).total_seconds()) < 5
        assert date.endswith("+0000")
        first = re.search(r"^Message-ID: (<[^>]+@norrsken\.example>)$", headers, re.M).group(1)
        again = prepared.render({"to": "x@example.com", **{k: values[k] for k in ("unsubscribe_url",
                                                                                  "preferences_url")}})
        assert first not in again.decode()  # a new Message-ID every time


def test_fast_smtp_stuffs_dots_and_quotes_addresses_like_smtplib(smtp_server):
    transport = SMTPTransport(smtp_server.url)
    message = (b"Subject: dots\r\nFrom: a@example.com\r\n\r\n.first line\r\nmiddle\r\n..two\r\n."
               b"\r\nlast without line end")
    try:
        transport.send("bounce@example.com", "reader@example.com", message)
        transport.send("bounce@example.com", "reader2@example.com", message + b"\r\n")
    finally:
        transport.close()
    mail_from, rcpts, data = smtp_server.handler.messages[0]
    assert (mail_from, rcpts) == ("bounce@example.com", ["reader@example.com"])
    assert data == message + b"\r\n"
    assert smtp_server.handler.messages[1][2] == message + b"\r\n"


def test_variant_for_rows_agrees_with_variant_for_subscribers(app):
    with app.app_context():
        news, blog, press = Topic(id=1, slug="n"), Topic(id=2, slug="b"), Topic(id=3, slug="p")
        digest = Digest(compiled_for=datetime(2026, 11, 23, 6, tzinfo=UTC), intro="")
        digest.articles = [Article(topic_id=1), Article(topic_id=2), Article(topic_id=None)]
        renderer = DigestRenderer(digest)
        cases = [([], "sv"), ([news], "en"), ([blog, press], "sv"), ([press], "sv"), ([news], "de"),
                 ([news, blog], None)]
        for topics, language in cases:
            subscriber = Subscriber(email="x@example.com", language=language, topics=topics)
            expected = renderer.variant(subscriber)
            assert renderer.variant_for(language, [t.id for t in topics]) == expected
        assert renderer.variant_for("en", [3]) is None  # follows only a topic with nothing new
        assert renderer.variant_for("de", []) == ("sv", frozenset({1, 2, None}))
        assert renderer.variant_for("en", [1]) == ("en", frozenset({1, None}))


@pytest.mark.parametrize("pipelining", [False, True], ids=["aiosmtpd", "pipelining"])
def test_transport_reports_a_refused_recipient_and_sends_the_next(smtp_server, pipelining):
    """451 to RCPT raises, and the connection goes on: aiosmtpd without PIPELINING, and a
    raw server with it (which then answers DATA with 554, as RFC 2920 says)."""
    if pipelining:
        server = PipeliningServer()  # refuses slow*@ with 451
        url = f"smtp://127.0.0.1:{server.port}"
    else:
        smtp_server.handler.faults = lambda rcpt: "451 4.7.1 try later" if rcpt.startswith("slow") else None
        url = smtp_server.url
    transport = SMTPTransport(url)
    try:
        transport.send("bounce@example.com", "reader@example.com", b"Subject: a\r\n\r\nbody\r\n")
        with pytest.raises(MailError) as refused:
            transport.send("bounce@example.com", "slow@example.com", b"Subject: b\r\n\r\nbody\r\n")
        assert refused.value.code == 451 and not refused.value.permanent
        transport.send("bounce@example.com", "other@example.com", b"Subject: c\r\n\r\nbody\r\n")
        assert transport.pipelining is pipelining
    finally:
        transport.close()
    received = ([rcpt for rcpt, _ in server.messages] if pipelining
                else [rcpt for _, rcpts, _ in smtp_server.handler.messages for rcpt in rcpts])
    assert received == ["reader@example.com", "other@example.com"]


def test_wire_is_the_rendered_message_dot_stuffed(app):
    """The wire form stuffs its chunks once and the values per message: the same bytes as
    stuffing the whole rendered message, wherever a "." starts a line."""
    with app.app_context():
        prepared = mail.prepare_message(
            subject="Punkter",
            text=f".först\n{slot('unsubscribe_url')}\n.efter länken\n..två\n.",
            html=f'<p>.x</p>\n.<a href="{slot("preferences_url")}">.</a>',
            bulk=True,
        )
        for link in ("http://newsletter.test/u/abc.def", "http://newsletter.test/u/" + "a" * 70 + ".b.c" * 30,
                     ".starts-with-a-dot"):
            values = {"to": "a@example.com", "message_id": "<1@x>", "date": "Mon, 23 Nov 2026 07:00:00 +0000",
                      "unsubscribe_url": link, "preferences_url": link}
            wire = prepared.wire(values)
            assert wire == dot_stuffed(prepared.render(values))
            assert wire.endswith(b"\r\n.\r\n")


def test_send_many_pipelines_a_stream_and_reports_each_message(smtp_server):
    """A stream over one connection: refusals (550, 451) keep it, a 421 or a cut connection
    loses it and the next message opens a new one; every message gets its own outcome, in
    order, and only the accepted ones arrive, whole."""
    from delivery_helpers import fault_server

    handler = fault_server(smtp_server)
    handler.faults = {"r2@example.se": "550 5.1.1 no such user", "r4@example.se": "451 4.7.1 later",
                      "r6@example.se": "421 4.3.2 closing"}.get
    cut = handler.handle_DATA

    async def cut_r9(server, session, envelope):  # the connection is lost in r9's DATA
        if envelope.rcpt_tos == ["r9@example.se"]:
            server.transport.abort()
            return "421 gone"
        return await cut(server, session, envelope)

    handler.handle_DATA = cut_r9
    transport = SMTPTransport(smtp_server.url)
    message = b"Subject: s\r\n\r\n.dot\r\nbody\r\n"
    stream = [Outgoing(n, f"r{n}@example.se", dot_stuffed(message)) for n in range(12)]
    connections = []

    def messages():
        for outgoing in stream:
            connections.append(transport._conn)
            yield outgoing

    try:
        outcomes = [(sent.key, error and (error.code, str(error)[:17])) for sent, error in
                    transport.send_many("a@example.se", messages())]
        assert transport.pipelining
    finally:
        transport.close()
    assert outcomes == [(0, None), (1, None), (2, (550, "550 5.1.1 no such")), (3, None),
                        (4, (451, "451 4.7.1 later")), (5, None), (6, (421, "421 4.3.2 closing")),
                        (7, None), (8, None), (9, (None, "connection failed")), (10, None), (11, None)]
    assert sorted(handler.counts()) == sorted(f"r{n}@example.se" for n in (0, 1, 3, 5, 7, 8, 10, 11))
    assert all(data == message for _, _, data in handler.messages)
    # one connection up to the 421, a second one until the cut, then a third
    assert len({id(conn) for conn in connections if conn is not None}) == 3
