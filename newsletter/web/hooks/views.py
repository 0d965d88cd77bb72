"""Bounce and complaint webhooks: the generic JSON form and Amazon SES via SNS.

Thin: authenticate, parse, hand the reports to `bounces.record_reports` (one
transaction per request). Every answer is JSON; a bad body is a 4xx with a
reason, an unauthenticated one changes nothing.
"""

from __future__ import annotations

import hmac
import json
import logging

from flask import abort, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from newsletter.delivery import bounces
from newsletter.web.hooks import bp, sns

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024


class HookError(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@bp.errorhandler(HookError)
def _hook_error(exc: HookError):
    return jsonify(ok=False, error=str(exc)), exc.status


@bp.errorhandler(bounces.InvalidPayload)
def _invalid_payload(exc: bounces.InvalidPayload):
    body = {"ok": False, "error": exc.reason}
    if exc.index is not None:
        body["index"] = exc.index
    return jsonify(body), 400


@bp.errorhandler(sns.SnsError)
def _sns_error(exc: sns.SnsError):
    log.warning("SNS message refused (%s): %s", exc.status, exc)
    return jsonify(ok=False, error=str(exc)), exc.status


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException):
    return jsonify(ok=False, error=exc.description if exc.code != 404 else "not found"), exc.code


# Handlers for a status code win over a blueprint's generic HTTPException handler, and the
# app has some (the API's JSON errors): register ours per code too, so hooks stay JSON.
for _code in (400, 403, 404, 405, 413, 415, 429):
    bp.register_error_handler(_code, _http_error)


@bp.before_request
def _limit_body() -> None:
    request.max_content_length = MAX_BODY_BYTES


def _check_secret(secret: str | None) -> None:
    """404 (as if the route did not exist) unless the URL carries BOUNCE_WEBHOOK_SECRET."""
    configured = current_app.config.get("BOUNCE_WEBHOOK_SECRET") or ""
    if not configured or secret is None or not hmac.compare_digest(
            secret.encode("utf-8"), configured.encode("utf-8")):
        abort(404)


def _json_body() -> object:
    """The body as JSON, whatever the Content-Type (SNS posts text/plain)."""
    data = request.get_data(cache=False)
    if not data:
        raise HookError("empty body; JSON expected")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise HookError(f"the body is not JSON: {exc}") from exc


@bp.post("/bounces/<secret>")
def generic(secret: str):
    """{"email", "type": "bounce"|"complaint", "permanent": bool, "reason"}, or a list of them."""
    _check_secret(secret)
    reports = bounces.parse_generic(_json_body())
    counts = bounces.record_reports(reports, source="webhook")
    return jsonify(ok=True, **counts)


@bp.post("/ses")
@bp.post("/ses/<secret>")
def ses(secret: str | None = None):
    """SNS HTTP(S) subscription of the topic that SES sends bounces and complaints to."""
    topics = current_app.config.get("SNS_TOPIC_ARNS") or []
    if secret is not None or not topics:  # without an allow-list of topics, only the secret URL
        _check_secret(secret)
    message = _json_body()
    if not isinstance(message, dict):
        raise HookError("expected a JSON object")
    if "Type" not in message and secret is not None and (
            "notificationType" in message or "eventType" in message):
        # Raw message delivery: SES's JSON without the SNS envelope (and signature);
        # the secret in the URL is what authenticates it.
        return _apply(message)
    header_type = request.headers.get("x-amz-sns-message-type")
    if header_type and header_type != message.get("Type"):
        raise HookError("x-amz-sns-message-type does not match the message Type")
    # TopicArn is signed: checking it first is safe, and spares a certificate fetch for strangers.
    if topics and message.get("TopicArn") not in topics:
        raise sns.SnsError("the message is from a topic not in SNS_TOPIC_ARNS")
    sns.verify(message)
    kind = message["Type"]
    if kind == "SubscriptionConfirmation":
        sns.confirm_subscription(message)
        return jsonify(ok=True, confirmed=message.get("TopicArn"))
    if kind == "UnsubscribeConfirmation":
        log.warning("SNS subscription to %s ended", message.get("TopicArn"))
        return jsonify(ok=True)
    return _apply(message["Message"], sns_message_id=message.get("MessageId", ""))


def _apply(ses_message: str | dict, sns_message_id: str = ""):
    reports = bounces.parse_ses(ses_message)
    for report in reports:
        if sns_message_id:
            report.detail["sns_message_id"] = str(sns_message_id)[:200]
    counts = bounces.record_reports(reports, source="webhook")
    return jsonify(ok=True, **counts)
