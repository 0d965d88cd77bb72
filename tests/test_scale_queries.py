"""The queries that must hold at a million subscribers have the intended shape: the topic
filter is EXISTS / NOT EXISTS (never IN / NOT IN over the link table) with one rule for
"follows all topics" in the admin list, the API and the exports; exports stream in keyset
batches; the send's audience is counted in SQL, not by loading subscribers."""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from contextlib import contextmanager

from admin_helpers import logged_in
from api_helpers import Api, add_subscriber, make_token
from sqlalchemy import event, select

from newsletter.delivery.audience import variant_counts
from newsletter.engine.sending import VariantRule
from newsletter.extensions import db
from newsletter.models import Subscriber, Topic
from newsletter.subscriptions import export
from newsletter.subscriptions.listing import SubscriberFilter, count_subscribers

PEOPLE = [  # email, status, language, chosen topics
    ("all@example.com", "confirmed", "sv", ()),
    ("blog@example.com", "confirmed", "en", ("blogg",)),
    ("news@example.com", "confirmed", "sv", ("nyheter",)),
    ("both@example.com", "confirmed", "en", ("nyheter", "blogg")),
    ("press@example.com", "confirmed", "sv", ("pressmeddelanden",)),
    ("pending@example.com", "pending", "sv", ()),
    ("odd@example.com", "confirmed", "fi", ("blogg",)),
]
RECEIVE_BLOGG = ["all@example.com", "blog@example.com", "both@example.com", "pending@example.com",
                 "odd@example.com"]


def _people(app) -> None:
    with app.app_context():
        for email, status, language, topics in PEOPLE:
            add_subscriber(email, status=status, language=language, topics=topics)


@contextmanager
def statements(app):
    """Every SQL statement the app's engine runs inside the block."""
    seen: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        seen.append(" ".join(statement.split()).upper())

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _topic_filter_shape(sql: list[str]) -> None:
    filtered = [s for s in sql if "TOPIC.SLUG = " in s]  # the filter's statements (by the slug asked for)
    assert filtered, sql
    for statement in filtered:
        assert " NOT IN " not in statement and not re.search(r"\bIN \(SELECT", statement), statement
        assert "NOT (EXISTS" in statement or "NOT EXISTS" in statement, statement


def test_the_topic_filter_is_exists_and_not_exists_with_one_rule(app):
    _people(app)
    with app.app_context():
        query = SubscriberFilter(topic="blogg").apply(select(Subscriber.email).order_by(Subscriber.id))
        sql = " ".join(str(query.compile(db.engine)).split()).upper()
        assert "EXISTS" in sql and " NOT IN " not in sql and " IN (SELECT" not in sql
        assert list(db.session.execute(query).scalars()) == RECEIVE_BLOGG
        assert count_subscribers(SubscriberFilter(topic="blogg")) == len(RECEIVE_BLOGG)
        assert count_subscribers(SubscriberFilter(topic="blogg", status="pending")) == 1


def test_admin_list_api_list_and_both_exports_filter_topics_alike(app):
    _people(app)
    admin = logged_in(app)
    api = Api(app.test_client(), make_token(app))
    with statements(app) as sql:
        page = admin.get("/admin/subscribers?topic=blogg").get_data(as_text=True)
    _topic_filter_shape(sql)
    assert all(email in page for email in RECEIVE_BLOGG) and "news@example.com" not in page
    with statements(app) as sql:
        listed = api.get("/subscribers", query_string={"topic": "blogg"}).get_json()["data"]
    _topic_filter_shape(sql)
    assert [s["email"] for s in listed] == RECEIVE_BLOGG
    for client, url in ((admin, "/admin/subscribers/export.csv?topic=blogg"),
                        (api, "/subscribers/export?topic=blogg")):
        with statements(app) as sql:
            rows = list(csv.DictReader(io.StringIO(client.get(url).get_data(as_text=True))))
        _topic_filter_shape(sql)
        assert [r["email"] for r in rows] == RECEIVE_BLOGG


def test_exports_stream_and_never_hold_the_whole_list(app, monkeypatch):
    """SQLite: keyset pages of EXPORT_BATCH rows; PostgreSQL: COPY TO STDOUT read in blocks.
    Either way the response streams a chunk at a time."""
    _people(app)
    monkeypatch.setattr(export, "EXPORT_BATCH", 2)
    monkeypatch.setattr(export, "COPY_BLOCK", 10)
    admin = logged_in(app)
    api = Api(app.test_client(), make_token(app))
    with app.app_context():
        postgresql = db.engine.dialect.name == "postgresql"
    for client, url in ((admin, "/admin/subscribers/export.csv"), (api, "/subscribers/export")):
        with statements(app) as sql:
            response = client.get(url, buffered=False)
            assert response.is_streamed
            chunks = [chunk.decode() for chunk in response.response]
            response.close()
        assert "".join(chunks).count("\n") == 1 + len(PEOPLE)
        reads = [s for s in sql if s.startswith("SELECT SUBSCRIBER.ID, SUBSCRIBER.EMAIL")]
        if postgresql:  # one COPY on a raw connection: no row is read through the ORM
            assert reads == [] and len(chunks) > 3
        else:
            # 7 people in pages of 2: 4 pages and the empty one that ends it, each bounded by
            # LIMIT and starting after the last id seen (keyset, not OFFSET pages).
            assert len(reads) == 5 and all("LIMIT" in s and "SUBSCRIBER.ID >" in s for s in reads)
            assert len(chunks) == 5  # the header, then one chunk per page


def test_the_send_audience_is_counted_in_sql_as_the_sender_would_pick_it(app):
    _people(app)
    with app.app_context():
        ids = {t.slug: t.id for t in db.session.execute(select(Topic)).scalars()}
        confirmed = select(Subscriber).where(Subscriber.status == "confirmed")
        people = list(db.session.execute(confirmed).scalars())
        for digest_topics in ({ids["blogg"]}, {ids["blogg"], ids["nyheter"]}, {ids["nyheter"], None},
                              set(ids.values()), set()):
            rule = VariantRule(frozenset(digest_topics), frozenset({"sv", "en"}), "sv")
            expected = Counter(rule.variant_for(p.language, [t.id for t in p.topics]) for p in people)
            db.session.expire_all()
            with statements(app) as sql:
                counted = variant_counts(rule)
            assert counted == expected
            assert len(sql) == 1  # one grouped query, whatever the number of subscribers


def test_the_list_counts_exactly_up_to_a_limit_then_estimates(app):
    _people(app)
    admin = logged_in(app)
    exact = admin.get("/admin/subscribers?topic=blogg&lang=en").get_data(as_text=True)
    assert f"{len(RECEIVE_BLOGG)} subscribers match." in exact
    app.config["ADMIN_COUNT_EXACT_LIMIT"] = 3
    with statements(app) as sql:
        page = admin.get("/admin/subscribers?topic=blogg&lang=en").get_data(as_text=True)
    counts = [s for s in sql if s.startswith("SELECT COUNT(")]
    assert counts and all("LIMIT" in s for s in counts)  # it stops counting at the limit
    with app.app_context():
        postgresql = db.engine.dialect.name == "postgresql"
    if postgresql:  # the planner's estimate, at least the limit
        found = re.search(r"About ([\d,]+) subscribers match\.", page)
        assert found and int(found.group(1).replace(",", "")) > 3
    else:
        assert "More than 3 subscribers match." in page


def test_the_dashboard_scans_the_list_at_most_once_per_cache_period(app):
    _people(app)
    admin = logged_in(app)
    app.config["ADMIN_STATS_CACHE_SECONDS"] = 60
    scans = []
    for _ in range(3):
        with statements(app) as sql:
            assert admin.get("/admin/").status_code == 200
        scans.append(sum(1 for s in sql if "FROM SUBSCRIBER" in s and "GROUP BY SUBSCRIBER.STATUS" in s))
    assert scans == [1, 0, 0]
    app.config["ADMIN_STATS_CACHE_SECONDS"] = 0  # off: every view counts again
    with statements(app) as sql:
        admin.get("/admin/")
    assert any("GROUP BY SUBSCRIBER.STATUS" in s for s in sql)
