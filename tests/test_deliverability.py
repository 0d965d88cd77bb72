"""Every email meets Gmail's and Yahoo's bulk-sender rules, and is DKIM-signed when configured.

The messages are the real ones (confirmation, welcome, preferences link, digest) as a real SMTP
server (aiosmtpd on loopback) received them; DKIM signatures are checked with dkimpy against
the DNS record a key made by openssl would publish.
"""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.utils import parseaddr, parsedate_to_datetime
from urllib.parse import urlsplit

import dkim
import pytest
from bounces_helpers import dkim_dns_record, openssl, rsa_key
from sqlalchemy import select

from newsletter import delivery, digests, subscriptions
from newsletter.digests import articles
from newsletter.engine.prepared import slot
from newsletter.extensions import db
from newsletter.mail import compose as mail
from newsletter.mail import outbox as mail_queue
from newsletter.models import Subscriber
from newsletter.subscriptions import tokens
from newsletter.subscriptions.topics import ensure_topics

PUBLIC_URL = "https://nyhetsbrev.norrsken.example"
MAILTO = "avregistrera@norrsken.example"
SELECTOR = "nl2026"
DOMAIN = "norrsken.example"  # of TestConfig's MAIL_FROM
SINGLE = ("Date", "From", "To", "Subject", "Message-ID", "MIME-Version", "Content-Type")
BULK_KINDS = ("welcome", "digest")


@pytest.fixture(scope="session")
def dkim_key(tmp_path_factory):
    directory = tmp_path_factory.mktemp("dkim")
    key = rsa_key(directory / "dkim.pem")
    other = rsa_key(directory / "other.pem")
    return key, dkim_dns_record(key), dkim_dns_record(other)


def dns_for(record: bytes):
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == f"{SELECTOR}._domainkey.{DOMAIN}.".encode() else None

    return dnsfunc


def send_every_kind(app, smtp_server) -> dict[str, bytes]:
    """Send a confirmation, a welcome, a preferences link and a digest; kind -> raw message."""
    received: dict[str, bytes] = {}

    def take(kind: str) -> None:
        with app.app_context():
            assert mail_queue.flush() == 1
        (raw,) = smtp_server.raw
        received[kind] = raw
        smtp_server.clear()

    with app.app_context():
        ensure_topics()
        subscriptions.request_signup("lasare@example.se", topics=["nyheter"], language="sv")
    take("confirm")
    with app.app_context():
        person = db.session.execute(select(Subscriber)).scalar_one()
        subscriptions.confirm_subscription(tokens.confirm_token(person))
    take("welcome")
    with app.app_context():
        subscriptions.request_preferences_link("lasare@example.se")
    take("preferences_link")
    now = datetime.now(UTC)
    with app.app_context():
        articles.add_article(title="Nytt bibliotek i Ålidhem öppnar i vår", url="https://norrsken.example/a",
                             summary="Ett långt stycke " * 40, topic_slug="nyheter",
                             published=now - timedelta(hours=5), now=now)
        digest = digests.compile_digest(now)
        assert delivery.send_digest(digest.id)["sent"] == 1
    (received["digest"],) = smtp_server.raw
    return received


def check_message(kind: str, raw: bytes, *, mailto: bool) -> str:
    """Assert the rules for one message; returns its Message-ID."""
    # Wire format: CRLF only, 7-bit, no line over 998 octets (RFC 5322).
    assert b"\n" not in raw.replace(b"\r\n", b""), kind
    assert raw.isascii(), kind
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998, kind
    message = message_from_bytes(raw, policy=policy.default)
    for name in SINGLE:
        assert len(message.get_all(name) or []) == 1, (kind, name)
    assert parseaddr(str(message["From"]))[1] == f"nyhetsbrev@{DOMAIN}"
    assert str(message["From"]).startswith("Föreningen Norrsken")
    assert str(message["To"]) == "lasare@example.se"
    assert str(message["Subject"]).strip()
    date = parsedate_to_datetime(str(message["Date"]))
    assert date.tzinfo is not None and abs(datetime.now(UTC) - date) < timedelta(minutes=5)
    message_id = str(message["Message-ID"])
    assert re.fullmatch(rf"<[A-Za-z0-9.\-_]+@{re.escape(DOMAIN)}>", message_id), message_id
    assert message.get_content_type() == "multipart/alternative"
    parts = [(part.get_content_type(), part.get_content_charset()) for part in message.iter_parts()]
    assert parts == [("text/plain", "utf-8"), ("text/html", "utf-8")], kind
    assert "Ålidhem" in message.get_body(("html",)).get_content() if kind == "digest" else True

    if kind in BULK_KINDS:
        assert str(message["List-Id"]) == f"<nyhetsbrev.{DOMAIN}>"
        assert str(message["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"
        links = re.findall(r"<([^>]+)>", str(message["List-Unsubscribe"]))
        assert links[0].startswith(f"{PUBLIC_URL}/unsubscribe/"), links
        # The mailto's subject ends with the reader's unsubscribe token: the bounce mailbox reads it.
        token = links[0].rsplit("/", 1)[1]
        assert links[1:] == ([f"mailto:{MAILTO}?subject=unsubscribe%20{token}"] if mailto else [])
        for name in ("List-Id", "List-Unsubscribe", "List-Unsubscribe-Post"):
            assert len(message.get_all(name)) == 1, (kind, name)
    else:  # transactional mail is not a list message
        assert message["List-Unsubscribe"] is None and message["List-Id"] is None
    return message_id


def test_every_message_type_meets_the_bulk_sender_rules(make_app, smtp_server):
    app = make_app(MAIL_URL=smtp_server.url, PUBLIC_URL=PUBLIC_URL, UNSUBSCRIBE_MAILTO=MAILTO)
    received = send_every_kind(app, smtp_server)
    ids = [check_message(kind, raw, mailto=True) for kind, raw in received.items()]
    assert len(set(ids)) == len(ids) == 4
    assert b"DKIM-Signature" not in b"".join(received.values())  # not configured: not signed

    # The one-click target in List-Unsubscribe works as RFC 8058 wants: a bare POST, no cookie.
    header = message_from_bytes(received["digest"], policy=policy.default)["List-Unsubscribe"]
    url = re.findall(r"<([^>]+)>", str(header))[0]
    response = app.test_client().post(urlsplit(url).path, data="List-Unsubscribe=One-Click",
                                      content_type="application/x-www-form-urlencoded")
    assert response.status_code == 200
    with app.app_context():
        assert db.session.execute(select(Subscriber.status)).scalar_one() == "unsubscribed"


def test_unsubscribe_mailto_forms(app):
    with app.app_context():
        for configured, expected in (("", ""), (MAILTO, f"mailto:{MAILTO}?subject=unsubscribe"),
                                     (f"mailto:{MAILTO}", f"mailto:{MAILTO}?subject=unsubscribe"),
                                     (f"mailto:{MAILTO}?subject=stop", f"mailto:{MAILTO}?subject=stop")):
            app.config["UNSUBSCRIBE_MAILTO"] = configured
            assert mail.unsubscribe_mailto() == expected
        for bad in ("not an address", "a@b.se>, <https://evil.example", "a@b.se\r\nBcc: x@y.se"):
            app.config["UNSUBSCRIBE_MAILTO"] = bad
            with pytest.raises(ValueError):
                mail.unsubscribe_mailto()


def test_every_message_type_is_dkim_signed_and_verifies(make_app, smtp_server, dkim_key):
    key, record, other_record = dkim_key
    app = make_app(MAIL_URL=smtp_server.url, PUBLIC_URL=PUBLIC_URL, DKIM_SELECTOR=SELECTOR,
                   DKIM_PRIVATE_KEY=str(key))  # a path to the key
    received = send_every_kind(app, smtp_server)
    dnsfunc = dns_for(record)
    for kind, raw in received.items():
        check_message(kind, raw, mailto=False)
        assert raw.startswith(b"DKIM-Signature: ")
        assert dkim.verify(raw, dnsfunc=dnsfunc), kind
        signature = message_from_bytes(raw, policy=policy.compat32)["DKIM-Signature"]
        tags = dict(tag.strip().split("=", 1) for tag in re.sub(r"\s+", "", signature).split(";") if tag)
        assert tags["d"] == DOMAIN and tags["s"] == SELECTOR and tags["a"] == "rsa-sha256"
        signed = set(tags["h"].lower().split(":"))
        assert {"from", "to", "subject", "date", "message-id", "mime-version", "content-type"} <= signed
        if kind in BULK_KINDS:
            assert {"list-id", "list-unsubscribe", "list-unsubscribe-post"} <= signed

    digest = received["digest"]
    # Changing the unsubscribe link, or adding a second one, breaks the signature.
    tampered = re.sub(rb"(List-Unsubscribe: <https://[^>]+/unsubscribe/)([^>]+)>", rb"\1forged>", digest)
    assert tampered != digest and not dkim.verify(tampered, dnsfunc=dnsfunc)
    headers_end = digest.index(b"\r\n\r\n")
    added = digest[:headers_end] + b"\r\nList-Unsubscribe: <https://evil.example/u>" + digest[headers_end:]
    assert not dkim.verify(added, dnsfunc=dnsfunc)
    changed_body = digest[:headers_end] + digest[headers_end:].replace(b"Nytt bibliotek", b"Nytt badhus", 1)
    assert changed_body != digest and not dkim.verify(changed_body, dnsfunc=dnsfunc)
    # With another key in DNS it does not verify either.
    assert not dkim.verify(digest, dnsfunc=dns_for(other_record))


def test_dkim_key_as_pem_text_and_bad_settings(make_app, dkim_key):
    key, record, _ = dkim_key
    pem = key.read_text()
    escaped = pem.strip().replace("\n", "\\n")  # as a one-line .env value
    for value in (pem, escaped):
        app = make_app(DKIM_SELECTOR=SELECTOR, DKIM_PRIVATE_KEY=value)
        with app.app_context():
            message = mail.build_email("confirm", "lasare@example.se", "sv",
                                       slot=slot, slots={"confirm_url": f"{PUBLIC_URL}/confirm/x"})
            assert dkim.verify(message, dnsfunc=dns_for(record))
            assert mail.sign(b"From: a@norrsken.example\r\nTo: b@example.se\r\n\r\nhej\r\n").startswith(
                b"DKIM-Signature: ")
    unsigned = make_app(DKIM_SELECTOR=SELECTOR, DKIM_PRIVATE_KEY="")
    with unsigned.app_context():
        assert mail.dkim_signer() is None
        assert mail.sign(b"From: a@b\r\n\r\nx\r\n") == b"From: a@b\r\n\r\nx\r\n"
    not_a_key = "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----"
    for bad in ("/nonexistent/dkim.pem", not_a_key):  # the app does not start
        with pytest.raises(ValueError, match="DKIM_PRIVATE_KEY"):
            make_app(DKIM_SELECTOR=SELECTOR, DKIM_PRIVATE_KEY=bad)


def test_every_message_type_is_signed_with_rsa_and_ed25519_and_both_verify(make_app, smtp_server, dkim_key,
                                                                           tmp_path):
    """RFC 8463 dual signing: an ed25519-sha256 signature beside the rsa-sha256 one, each
    checked by dkimpy against a record made by openssl (not by the code under test)."""
    key, record, _ = dkim_key
    ed_key = tmp_path / "ed25519.pem"
    openssl("genpkey", "-algorithm", "ed25519", "-out", str(ed_key))
    raw_public = openssl("pkey", "-in", str(ed_key), "-pubout", "-outform", "DER")[-32:]
    records = {f"{SELECTOR}._domainkey.{DOMAIN}.".encode(): record,
               f"ed{SELECTOR}._domainkey.{DOMAIN}.".encode():
                   b"v=DKIM1; k=ed25519; p=" + base64.b64encode(raw_public)}
    app = make_app(MAIL_URL=smtp_server.url, PUBLIC_URL=PUBLIC_URL, DKIM_SELECTOR=SELECTOR,
                   DKIM_PRIVATE_KEY=str(key), DKIM_ED25519_SELECTOR=f"ed{SELECTOR}",
                   DKIM_ED25519_PRIVATE_KEY=ed_key.read_text())
    received = send_every_kind(app, smtp_server)
    assert set(received) == {"confirm", "welcome", "preferences_link", "digest"}

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return records.get(name)

    for kind, raw in received.items():
        check_message(kind, raw, mailto=False)
        verifier = dkim.DKIM(raw)
        signatures = message_from_bytes(raw, policy=policy.compat32).get_all("DKIM-Signature")
        algorithms = [re.search(r"a=([\w-]+)", s).group(1) for s in signatures]
        assert algorithms == ["ed25519-sha256", "rsa-sha256"], kind
        for index in range(2):
            assert verifier.verify(idx=index, dnsfunc=dnsfunc), (kind, index)
        forged = raw.replace(b"Subject: ", b"Subject: FW: ", 1)
        assert not any(dkim.DKIM(forged).verify(idx=i, dnsfunc=dnsfunc) for i in range(2))


@pytest.mark.parametrize("alphabet", [b"ab \t\r\n", b"ab \r\n", b"a   \r\n\n", b"=20 \r\n"])
def test_the_signers_relaxed_body_is_dkimpys(alphabet):
    """The signer canonicalises the body without regular expressions when it can: the same bytes."""
    import random

    from dkim.canonicalization import CanonicalizationPolicy

    from newsletter.engine.dkim import relaxed_body

    relaxed = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
    rng = random.Random(alphabet)
    for _ in range(3000):
        body = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        assert relaxed_body(body) == relaxed.canonicalize_body(body), body


def test_the_mailto_subject_ends_with_the_readers_token(app):
    values = {"to": "lasare@example.se", "unsubscribe_url": f"{PUBLIC_URL}/unsubscribe/TOKEN",
              "unsubscribe_token": "TOKEN", "preferences_url": f"{PUBLIC_URL}/preferences/P"}
    with app.app_context():
        for configured, tail in ((MAILTO, "?subject=unsubscribe%20TOKEN"),
                                 (f"mailto:{MAILTO}?subject=stop", "?subject=stop%20TOKEN"),
                                 (f"mailto:{MAILTO}?body=hej", "?body=hej&subject=unsubscribe%20TOKEN")):
            app.config["UNSUBSCRIBE_MAILTO"] = configured
            prepared = mail.prepare_message(subject="Hej", text="Hej", html="<p>Hej</p>", bulk=True)
            header = message_from_bytes(prepared.render(values), policy=policy.default)["List-Unsubscribe"]
            assert str(header) == f"<{PUBLIC_URL}/unsubscribe/TOKEN>, <mailto:{MAILTO}{tail}>"
