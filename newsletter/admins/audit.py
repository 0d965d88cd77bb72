"""The audit log: who did what to what, and when, for every admin action (AuditEvent)."""

from __future__ import annotations

from datetime import date, datetime

from flask import has_request_context, request
from sqlalchemy import select

from newsletter.extensions import client_ip, db
from newsletter.models import Admin, AuditEvent


def _jsonable(value):
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _current_actor() -> tuple[str, int | None]:
    """The logged-in admin (email, id), else "cli" outside a request."""
    if has_request_context():
        from flask_login import current_user

        if getattr(current_user, "is_authenticated", False) and isinstance(current_user, Admin):
            return current_user.email, current_user.id
        return "anonymous", None
    return "cli", None


def record(action: str, target: str = "", *, actor=None, **detail) -> AuditEvent:
    """Add one audit row to the transaction of the action it records.

    `actor` defaults to the logged-in admin (or "cli" outside a request); it may be
    an Admin, or a string such as "api:<token name>".
    """
    if actor is None:
        actor_name, admin_id = _current_actor()
    elif isinstance(actor, Admin):
        actor_name, admin_id = actor.email, actor.id
    else:
        actor_name, admin_id = str(actor), None
    event = AuditEvent(
        admin_id=admin_id, actor=actor_name[:320], action=action[:64], target=str(target)[:200],
        detail=_jsonable(detail), ip=(client_ip() if has_request_context() and request else "")[:64],
    )
    db.session.add(event)
    db.session.flush()
    return event


def list_events(*, before_id: int | None = None, limit: int = 50, action: str | None = None,
                actor: str | None = None) -> list[AuditEvent]:
    """Newest first, keyset-paginated by id."""
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if before_id:
        query = query.where(AuditEvent.id < before_id)
    if action:
        query = query.where(AuditEvent.action == action)
    if actor:
        query = query.where(AuditEvent.actor == actor)
    return list(db.session.execute(query).scalars())


def known_actions() -> list[str]:
    return list(db.session.execute(
        select(AuditEvent.action).group_by(AuditEvent.action).order_by(AuditEvent.action)).scalars())

