"""Subscribers: create (double opt-in), list, read, change preferences, erase, export."""

from __future__ import annotations

import re

from flask import Response, jsonify, request, stream_with_context
from sqlalchemy import select

from newsletter import privacy, subscriptions
from newsletter.extensions import client_ip, db
from newsletter.models import Subscriber
from newsletter.subscriptions import suppression
from newsletter.web.api import bp, schemas
from newsletter.web.api.audit import audit
from newsletter.web.api.auth import requires_role
from newsletter.web.api.errors import ApiError
from newsletter.web.api.pagination import page
from newsletter.web.api.serialise import subscriber_json
from newsletter.web.api.validation import invalid, json_body, query_params

UID_PATTERN = re.compile(r"[0-9a-f]{24,32}")
# Subscriber uids are 24 hex digits: the length keeps /subscribers/export out of this route.
UID_PATH = "/subscribers/<string(minlength=24, maxlength=32):uid>"
ACCEPTED_MESSAGE = ("If the address can be subscribed, a confirmation email has been sent to it; "
                    "the subscription starts when the link in it is followed.")


def _subscriber_or_404(uid: str) -> Subscriber:
    subscriber = subscriptions.subscriber_by_uid(uid) if UID_PATTERN.fullmatch(uid) else None
    if subscriber is None:
        raise ApiError(404, "not_found", "No subscriber with this uid.")
    return subscriber


def _invalid_input(exc: subscriptions.InvalidInput) -> ApiError:
    return invalid(exc.field, exc.reason)


@bp.post("/subscribers")
def create_subscriber():
    """Ask for a subscription (double opt-in): 202 and the same answer whatever the address's state."""
    query_params([])
    data = json_body(schemas.subscriber_create())
    try:
        subscriptions.request_signup(
            data["email"], topics=data.get("topics", []), language=data.get("language"),
            name=data.get("name", ""), source="api", ip=client_ip(),
            user_agent=request.user_agent.string or "")
    except subscriptions.InvalidInput as exc:
        raise _invalid_input(exc) from None
    except suppression.Suppressed as exc:
        # Someone other than the person asks: an address that opted out stays out (the person's
        # own signup on the form still works). Named by hash in the audit log, as below.
        db.session.rollback()
        raise ApiError(409, "suppressed", f"The address is on the suppression list ({exc.reason}); "
                       "only the person's own signup can bring it back.", "email") from None
    # Named by the address's keyed hash, never the address: the audit log outlives an erasure.
    audit("api.subscriber.signup",
          "email-hmac:" + suppression.address_hash(subscriptions.normalise_email(data["email"]))[:32])
    return jsonify(status="accepted", message=ACCEPTED_MESSAGE), 202


@bp.get("/subscribers")
def list_subscribers():
    """Subscribers by id, filtered by status, topic and language."""
    params = query_params(schemas.subscriber_list_params())
    query = select(Subscriber)
    if "status" in params:
        query = query.where(Subscriber.status == params["status"])
    if "language" in params:
        query = query.where(Subscriber.language == params["language"])
    if "topic" in params:
        # Who receives the topic: those who chose it and those who chose none (the list's rule).
        query = query.where(subscriptions.follows_topic(params["topic"]))
    return page(query, Subscriber.id, params, subscriber_json)


@bp.get("/subscribers/export")
@requires_role("admin")
def export_subscribers():
    """Every subscriber as CSV (admin role only): the layout of `flask subscribers export`."""
    params = query_params(schemas.subscriber_list_params()[2:4])  # status, topic
    filters = {"status": params.get("status"), "topic": params.get("topic")}
    audit("api.subscriber.export", "", rows=subscriptions.export_count(**filters), **params)
    return Response(stream_with_context(subscriptions.export_lines(**filters)), mimetype="text/csv",
                    headers={"Content-Disposition": 'attachment; filename="subscribers.csv"'})


@bp.get(UID_PATH)
def get_subscriber(uid: str):
    query_params([])
    return jsonify(subscriber_json(_subscriber_or_404(uid)))


@bp.patch(UID_PATH)
def update_subscriber(uid: str):
    """Change topics and/or language; what is not given stays as it is."""
    query_params([])
    data = json_body(schemas.subscriber_patch())
    subscriber = _subscriber_or_404(uid)
    topics = data["topics"] if "topics" in data else subscriptions.topic_slugs(subscriber)
    try:
        subscriptions.update_preferences(subscriber, topics=topics,
                                         language=data.get("language", subscriber.language),
                                         source="api", ip=client_ip(),
                                         user_agent=request.user_agent.string or "")
    except subscriptions.InvalidInput as exc:
        raise _invalid_input(exc) from None
    audit("api.subscriber.preferences", f"subscriber:{subscriber.id}", **data)
    return jsonify(subscriber_json(subscriber))


@bp.delete(UID_PATH)
@requires_role("admin")
def erase_subscriber(uid: str):
    """Erase the person and their data (admin role only); the ledger keeps an anonymous trace."""
    query_params([])
    subscriber = _subscriber_or_404(uid)
    target = f"subscriber:{subscriber.id}"
    privacy.erase_person(subscriber, source="api")
    audit("api.subscriber.erase", target)
    return "", 204
