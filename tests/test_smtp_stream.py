"""SMTPTransport.send_many, the pipelined stream: the paths where the next message's
envelope, sent ahead with this one's content, must not put the replies out of step."""

from __future__ import annotations

import socket
import threading

from delivery_helpers import PipeliningServer, fault_server

from newsletter.engine.prepared import dot_stuffed
from newsletter.engine.smtp import Outgoing, SMTPTransport

MESSAGE = b"Subject: s\r\n\r\nbody\r\n"


def _stream(*recipients: str) -> list[Outgoing]:
    return [Outgoing(r, r, dot_stuffed(MESSAGE + r.encode() + b"\r\n")) for r in recipients]


def test_utf8_recipient_after_an_accepted_message_on_a_server_without_smtputf8(smtp_server):
    """A recipient that needs SMTPUTF8, on a server without it, gets 553 and its envelope
    is never sent ahead: had it been, its three unread replies would be taken for the next
    message's (aiosmtpd's 501 to MAIL … SMTPUTF8 would bounce c@, a good address)."""
    handler = fault_server(smtp_server)  # offers PIPELINING
    smtp_server.controller.SMTP_kwargs["enable_SMTPUTF8"] = False  # aiosmtpd's default: no SMTPUTF8
    transport = SMTPTransport(smtp_server.url, timeout=3)
    try:
        outcomes = [(sent.key, error and error.code) for sent, error in transport.send_many(
            "bounce@example.se", _stream("a@example.se", "ü@example.se", "c@example.se", "d@example.se"))]
        assert transport.pipelining and not transport.smtputf8
    finally:
        transport.close()
    assert outcomes == [("a@example.se", None), ("ü@example.se", 553), ("c@example.se", None),
                        ("d@example.se", None)]
    assert sorted(handler.counts()) == ["a@example.se", "c@example.se", "d@example.se"]


def test_utf8_recipient_announced_to_a_lenient_server_gets_nobody_elses_message():
    """The same with a server that would take the UTF-8 envelope anyway (354): had it been
    sent ahead, c@'s envelope and content (with c@'s personal links) would have become
    the refused recipient's message."""
    server = PipeliningServer()  # PIPELINING, no SMTPUTF8, accepts any RCPT not slow*@
    transport = SMTPTransport(f"smtp://127.0.0.1:{server.port}", timeout=3)
    try:
        outcomes = [(sent.key, error and error.code) for sent, error in transport.send_many(
            "bounce@example.se", _stream("a@example.se", "ü@example.se", "c@example.se"))]
    finally:
        transport.close()
    assert outcomes == [("a@example.se", None), ("ü@example.se", 553), ("c@example.se", None)]
    assert [rcpt for rcpt, _ in server.messages] == ["a@example.se", "c@example.se"]


def test_reused_connection_closed_while_idle_with_421_is_reopened():
    """A reused connection that the server closed while idle, with the usual "421 timeout",
    had nothing of the next message on it: it is reopened at once, instead of deferring
    the message as a 421 refusal (a retry with back-off, one more error toward the storm)."""
    server = PipeliningServer()
    go_idle, closed = threading.Event(), threading.Event()

    def idle_timeout(conn, lines, number):  # the first connection says "421 timeout" and closes
        if number != 1:
            return False
        go_idle.wait(10)
        conn.sendall(b"421 4.4.2 test Error: timeout exceeded\r\n")
        conn.shutdown(socket.SHUT_WR)  # what the client writes now is read and ignored
        closed.set()
        for _ in lines:
            pass
        return True

    server.after_message = idle_timeout
    transport = SMTPTransport(f"smtp://127.0.0.1:{server.port}", timeout=3)
    try:
        transport.send("bounce@example.se", "a@example.se", MESSAGE)
        go_idle.set()
        assert closed.wait(5)
        transport.send("bounce@example.se", "b@example.se", MESSAGE)
    finally:
        transport.close()
    assert [rcpt for rcpt, _ in server.messages] == ["a@example.se", "b@example.se"]
    assert server.connections == 2


def test_without_lookahead_each_message_is_taken_only_after_the_last_is_done(smtp_server):
    """lookahead=False (a rate-limited send): the next message is asked for only once the
    last one's reply is in, so the server never waits in DATA for it."""
    handler = fault_server(smtp_server)
    transport = SMTPTransport(smtp_server.url, timeout=3)
    received_before_asking = []

    def messages():
        for outgoing in _stream("a@example.se", "b@example.se", "c@example.se"):
            received_before_asking.append(handler.received())
            yield outgoing

    try:
        outcomes = [(sent.key, error) for sent, error in
                    transport.send_many("bounce@example.se", messages(), lookahead=False)]
    finally:
        transport.close()
    assert outcomes == [("a@example.se", None), ("b@example.se", None), ("c@example.se", None)]
    assert received_before_asking == [0, 1, 2]
