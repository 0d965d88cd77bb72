"""How a real spam filter sees every kind of message the service sends.

SpamAssassin (Debian's package, its shipped rules, local tests only: no DNS, no network)
scores the messages as a real SMTP server (aiosmtpd) received them. Each must score at most
0 with no rule counting against it (a rule with a positive score); a rule that fires is
fixed in the message, never switched off here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy

import pytest
from sqlalchemy import select

from newsletter import delivery, digests, subscriptions
from newsletter.extensions import db
from newsletter.mail import outbox
from newsletter.models import Admin, Subscriber
from newsletter.subscriptions import tokens
from newsletter.subscriptions.topics import ensure_topics

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("spamassassin") is None,
                       reason="SpamAssassin is not installed (.ci/run installs it)"),
]

INFORMATIONAL = 0.001
ARTICLES = (  # (topic, title, summary)
    ("nyheter", "Nytt bibliotek i Ålidhem öppnar i vår",
     "Biblioteket får läsesal, språkcafé och öppet sju dagar i veckan. Bygget blir klart i april."),
    ("nyheter", "Kommunen rustar cykelbanan längs älven",
     "Den gamla cykelbanan breddas och får belysning hela vägen från centrum till Gimonäs."),
    ("pressmeddelanden", "Föreningen Norrsken väljer ny ordförande",
     "Årsmötet valde Karin Öberg till ordförande. Hon har varit ledamot i styrelsen sedan 2021."),
    ("blogg", "Så planerar vi höstens föreläsningar",
     "Vi berättar hur programmet kommer till och hur du kan föreslå ämnen och talare."),
)


def score_all(messages: dict[str, bytes]) -> dict[str, dict[str, float]]:
    """Each message's rules and their scores, from one spamassassin run over an mbox of them."""
    mbox = b"".join(b"From nyhetsbrev@norrsken.example Wed Dec  2 10:00:00 2026\n" +
                    re.sub(rb"(?m)^(>*From )", rb">\1", raw.replace(b"\r\n", b"\n")) + b"\n"
                    for raw in messages.values())
    result = subprocess.run(
        ["spamassassin", "-L", "-x", "--mbox", "--cf", "add_header all Scores _TESTSSCORES(,)_"],
        input=mbox, capture_output=True, check=True, timeout=300)
    chunks = re.split(rb"(?m)^(?=From nyhetsbrev@norrsken\.example )", result.stdout)
    scored = [message_from_bytes(chunk.split(b"\n", 1)[1], policy=policy.compat32)
              for chunk in chunks if chunk.strip()]
    assert len(scored) == len(messages), result.stderr.decode(errors="replace")[-2000:]
    by_id = {message_from_bytes(raw, policy=policy.compat32)["Message-ID"]: kind
             for kind, raw in messages.items()}
    scores = {}
    for message in scored:
        kind = by_id[message["Message-ID"]]
        header = " ".join(str(message["X-Spam-Scores"] or "").split())
        rules = dict(item.split("=") for item in header.split(",") if "=" in item)
        status = " ".join(str(message["X-Spam-Status"]).split())
        scores[kind] = {name.strip(): float(value) for name, value in rules.items()}
        scores[kind]["(total)"] = float(re.search(r"score=(-?[\d.]+)", status)[1])
    return scores


def every_kind(app, smtp_server) -> dict[str, bytes]:
    """Each kind of message the service sends, in Swedish and English, as the server got it."""
    received: dict[str, bytes] = {}

    def take(kind: str, expected: int = 1) -> None:
        with smtp_server.handler.lock:
            batch = list(smtp_server.handler.messages)
        assert len(batch) == expected, (kind, len(batch))
        for _, rcpts, data in batch:
            received[f"{kind} to {rcpts[0]}"] = data
        smtp_server.clear()

    now = datetime.now(UTC)
    with app.app_context():
        ensure_topics()
        for language in ("sv", "en"):
            email = f"lasare-{language}@example.se"
            subscriptions.request_signup(email, topics=["nyheter"], language=language)
            assert outbox.flush() == 1
            take(f"confirm {language}")
            person = db.session.execute(select(Subscriber).where(Subscriber.email == email)).scalar_one()
            subscriptions.confirm_subscription(tokens.confirm_token(person))
            assert outbox.flush() == 1
            take(f"welcome {language}")
            subscriptions.request_preferences_link(email)
            assert outbox.flush() == 1
            take(f"preferences link {language}")
        for language, topics in (("sv", []), ("en", []), ("en", ["blogg"])):
            email = f"{language}-{'-'.join(topics) or 'alla'}@example.se"
            _confirmed(email, language, topics)
        smtp_server.clear()  # their confirmations and welcomes are scored above already
        for hours, (topic, title, summary) in enumerate(ARTICLES, 2):
            digests.add_article(title=title, url=f"https://norrsken.example/{hours}", summary=summary,
                                 topic_slug=topic, published=now - timedelta(hours=hours), now=now)
        db.session.add(Admin(email="redaktor@norrsken.example", password_hash="x", language="sv"))
        db.session.add(Admin(email="editor@norrsken.example", password_hash="x", language="en"))
        db.session.commit()
        for language in ("sv", "en"):
            assert delivery.send_test(f"test-{language}@norrsken.example", locale=language, now=now)
            take(f"test digest {language}")
        digest = digests.compile_digest(now)
        digest.status = "approved"
        db.session.commit()
        assert delivery.send_digest(digest.id)["sent"] == 5
        with smtp_server.handler.lock:
            sent = [m for m in smtp_server.handler.messages if not m[1][0].endswith("@norrsken.example")]
            summaries = [m for m in smtp_server.handler.messages if m[1][0].endswith("@norrsken.example")]
            smtp_server.handler.messages[:] = sent
        take("digest", 5)
        if not summaries:
            summary.send_summary(digest.id, "done")
            with smtp_server.handler.lock:
                summaries = list(smtp_server.handler.messages)
        for _, rcpts, data in summaries:
            received[f"send summary to {rcpts[0]}"] = data
    return received


def _confirmed(email: str, language: str, topics: list[str]) -> None:
    subscriptions.request_signup(email, topics=topics, language=language)
    person = db.session.execute(select(Subscriber).where(Subscriber.email == email)).scalar_one()
    subscriptions.confirm_subscription(tokens.confirm_token(person))
    outbox.flush()


def test_spamassassin_scores_every_message_kind_at_most_zero(make_app, smtp_server):
    app = make_app(MAIL_URL=smtp_server.url, PUBLIC_URL="https://nyhetsbrev.norrsken.example",
                   UNSUBSCRIBE_MAILTO="avregistrera@norrsken.example",
                   BOUNCE_ADDRESS="bounces@norrsken.example")
    messages = every_kind(app, smtp_server)
    kinds = {re.sub(r" (sv|en)\b.*| to .*", "", kind) for kind in messages}
    assert kinds == {"confirm", "welcome", "preferences link", "test digest", "digest", "send summary"}
    scores = score_all(messages)
    # SpamAssassin's informational rules score 0.001 (HTML_MESSAGE: "HTML included in message").
    against = {kind: {rule: score for rule, score in rules.items()
                      if score > INFORMATIONAL and rule != "(total)"}
               for kind, rules in scores.items()}
    assert against == {kind: {} for kind in messages}, scores
    assert all(rules["(total)"] <= 0 for rules in scores.values()), scores


def test_the_text_and_html_parts_carry_the_same_words(make_app, smtp_server):
    """No hidden text: every word of the HTML part a reader sees is in the text part too."""
    app = make_app(MAIL_URL=smtp_server.url, PUBLIC_URL="https://nyhetsbrev.norrsken.example")
    missing_words = {}
    for kind, raw in every_kind(app, smtp_server).items():
        message = message_from_bytes(raw, policy=policy.default)
        text = message.get_body(("plain",)).get_content()
        html = message.get_body(("html",)).get_content()
        visible = re.sub(r"(?s)<(style|head)\b.*?</\1>|<!--.*?-->|<[^>]+>", " ", html)
        visible = re.sub(r"&[a-z]+;|&#\d+;", " ", visible)
        words = {w.lower() for w in re.findall(r"[^\W\d_]{4,}", visible)}
        missing = {w for w in words if w not in text.lower()}
        if missing:
            missing_words[kind] = sorted(missing)
    assert missing_words == {}
