"""The operator's endpoints: /readyz and /metrics; and the request hooks every page goes through
(the request id, the HTTP metrics, noticing that the scheduler is gone)."""

from __future__ import annotations

import hmac
import re
import time
import uuid

from flask import Blueprint, Flask, Response, abort, current_app, g, jsonify, request

from newsletter.engine import counters
from newsletter.engine.logformat import request_id
from newsletter.extensions import db
from newsletter.monitoring import alerts, metrics
from newsletter.monitoring.readiness import readiness

bp = Blueprint("ops", __name__)

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@bp.get("/readyz")
def readyz():
    """Each readiness check as JSON; 200 when all pass, 503 otherwise."""
    ok, checks = readiness()
    alerts.check_now_and_then()
    return jsonify(status="ok" if ok else "fail", checks=checks), 200 if ok else 503


@bp.get("/metrics")
def prometheus_metrics():
    """Prometheus exposition, for a bearer token of METRICS_TOKEN (404 when that is unset)."""
    token = current_app.config["METRICS_TOKEN"]
    if not token:
        abort(404)
    given = request.headers.get("Authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        return Response("unauthorized\n", 401, {"WWW-Authenticate": 'Bearer realm="metrics"'})
    return Response(metrics.exposition(), mimetype=None, content_type=metrics.CONTENT_TYPE)


def init_app(app: Flask) -> None:
    """The request hooks: X-Request-ID in and out, HTTP metrics, the scheduler's outage check."""
    app.before_request(_start_request)
    app.after_request(_finish_request)
    app.teardown_request(_forget_request)
    app.register_blueprint(bp)


def _start_request() -> None:
    given = request.headers.get("X-Request-ID", "")
    g.request_id = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
    g.request_token = request_id.set(g.request_id)
    g.request_started = time.perf_counter()


def _finish_request(response: Response) -> Response:
    if "request_id" in g:
        response.headers["X-Request-ID"] = g.request_id
    if current_app.config["METRICS_TOKEN"] and "request_started" in g:
        route = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
        counters.observe_request(request.method, route, response.status_code,
                                time.perf_counter() - g.request_started)
    session = db.session
    if not current_app.testing or current_app.config.get("SCHEDULER_CHECK_IN_REQUESTS"):
        if not (session.new or session.dirty or session.deleted):  # never commit a view's leftovers
            alerts.check_now_and_then()
    return response


def _forget_request(_exc: BaseException | None) -> None:
    token = g.pop("request_token", None)
    if token is not None:
        request_id.reset(token)
