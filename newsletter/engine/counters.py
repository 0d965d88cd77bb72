"""Prometheus counters of what happens in a process (no Flask): HTTP requests and their latency,
subscriber events, feed polls. With PROMETHEUS_MULTIPROC_DIR set, prometheus_client writes them
to files there, and /metrics adds up every process's (newsletter/monitoring/metrics.py).
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

HTTP_REQUESTS = Counter("newsletter_http_requests", "HTTP requests answered, by route and status",
                        ["method", "route", "status"])
HTTP_LATENCY = Histogram("newsletter_http_request_duration_seconds", "Time to answer an HTTP request",
                         ["method", "route"],
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
SUBSCRIBER_EVENTS = Counter("newsletter_subscriber_events",
                            "Consent events: signup, confirm, unsubscribe, bounce, complaint, …", ["event"])
FEED_POLLS = Counter("newsletter_feed_polls", "Feed polls, by outcome (ok, not-modified, error)", ["outcome"])


def subscriber_event(kind: str) -> None:
    SUBSCRIBER_EVENTS.labels(kind).inc()


def feed_polled(outcome: str) -> None:
    FEED_POLLS.labels(outcome).inc()


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(method, route, str(status)).inc()
    HTTP_LATENCY.labels(method, route).observe(seconds)
