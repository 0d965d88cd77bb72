"""Audit events of API calls that change something: the token is the actor (newsletter/audit.py)."""

from __future__ import annotations

from flask import g

from newsletter.admins import audit as audit_log


def audit(action: str, target: str = "", **detail) -> None:
    """Record an API action by the current token (committed; the request's IP goes with it)."""
    token = g.api_token
    audit_log.record(action, target, actor=f"api:{token.name}", token_id=token.id, **detail)
