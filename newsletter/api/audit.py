"""Audit events of API calls that change something: who (the token), what, when, from where.

Uses newsletter.audit.record (the admin area's audit log) when it is there; until
then it writes the AuditEvent row itself, in the same shape.
"""

from __future__ import annotations

from flask import g

from ..extensions import client_ip, db
from ..models import AuditEvent

try:
    from ..audit import record as _record
except ImportError:  # the admin area's audit module is not merged yet
    _record = None


def audit(action: str, target: str = "", **detail) -> None:
    """Record an API action by the current token, and commit it."""
    token = g.api_token
    actor = f"api:{token.name}"
    detail = {"token_id": token.id, **detail}
    if _record is not None:
        _record(action, target, actor=actor, **detail)
    else:
        db.session.add(AuditEvent(actor=actor[:320], action=action[:64], target=str(target)[:200],
                                  detail=detail, ip=client_ip()[:64]))
    db.session.commit()
