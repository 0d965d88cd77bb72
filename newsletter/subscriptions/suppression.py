"""The suppression list: addresses that no import, admin, API call or command may sign up.

An address is suppressed when its subscriber row says it unsubscribed, bounced or
complained, or when a Suppression entry holds its keyed hash (left by an erasure,
by the retention purge of inactive people, or by another system's export that
marks it unsubscribed or cleaned). `suppressed()` is the one check every way in
calls. Only the person's own new double opt-in lifts an unsubscribe or an erasure
(`lift_on_opt_in`, at confirmation); a bounce or a complaint is lifted only by an
admin (`lift_by_admin`, audited by the caller).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from flask import current_app
from sqlalchemy import delete, insert, select

from newsletter.extensions import db
from newsletter.models import SUPPRESSION_REASONS, Subscriber, Suppression, utcnow

INACTIVE_STATES = ("unsubscribed", "bounced", "complained")
# Suppressions that a new signup and confirmation by the person cannot lift by itself.
ADMIN_ONLY = ("bounced", "complained")


class Suppressed(ValueError):
    """The address is on the suppression list; `reason` says why (unsubscribed, erased, …)."""

    def __init__(self, address: str, reason: str):
        super().__init__(f"{address} is suppressed ({reason}): left as it is")
        self.address, self.reason = address, reason


def _key() -> bytes:
    # A key of its own derived from SECRET_KEY: the hashes are worthless without it, and no
    # other use of SECRET_KEY (tokens, sessions) produces the same values.
    secret = current_app.config["SECRET_KEY"]
    secret = secret.encode("utf-8") if isinstance(secret, str) else secret
    return hmac.digest(secret, b"newsletter.suppression", "sha256")


def address_hash(address: str, key: bytes | None = None) -> str:
    """The keyed hash (HMAC-SHA256) of a canonical (normalised, lower-case) address."""
    return hmac.new(key or _key(), address.strip().lower().encode("utf-8"), hashlib.sha256).hexdigest()


def suppressed(addresses: Iterable[str]) -> dict[str, str]:
    """The suppressed ones among canonical addresses, each with its reason: THE check."""
    addresses = list(dict.fromkeys(addresses))
    if not addresses:
        return {}
    found: dict[str, str] = {}
    rows = db.session.execute(
        select(Subscriber.email, Subscriber.status)
        .where(Subscriber.email.in_(addresses), Subscriber.status.in_(INACTIVE_STATES)))
    found.update({email: status for email, status in rows})
    key = _key()
    hashes = {address_hash(a, key): a for a in addresses if a not in found}
    if hashes:
        rows = db.session.execute(
            select(Suppression.address_hash, Suppression.reason)
            .where(Suppression.address_hash.in_(list(hashes))))
        found.update({hashes[h]: reason for h, reason in rows})
    return found


def suppression_of(address: str) -> str | None:
    """Why this canonical address is suppressed, or None."""
    return suppressed([address]).get(address)


def check_not_suppressed(address: str) -> None:
    """Raise Suppressed when the canonical address may not be signed up by anyone but its owner."""
    reason = suppression_of(address)
    if reason is not None:
        raise Suppressed(address, reason)


def _insert_ignoring_duplicates(values: list[dict]) -> None:
    if not values:
        return
    dialect = db.session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    else:  # pragma: no cover - the two supported databases
        db.session.execute(insert(Suppression), values)
        return
    statement = dialect_insert(Suppression).on_conflict_do_nothing(index_elements=["address_hash"])
    db.session.execute(statement, values)


def suppress(addresses: Iterable[str], *, reason: str, source: str = "system") -> int:
    """Add suppression entries (existing ones are kept as they are); flushed, not committed."""
    if reason not in SUPPRESSION_REASONS:
        raise ValueError(f"unknown suppression reason {reason!r}")
    key, now = _key(), utcnow()
    values = [{"address_hash": address_hash(a, key), "reason": reason, "source": source[:24],
               "created_at": now} for a in dict.fromkeys(addresses)]
    _insert_ignoring_duplicates(values)
    return len(values)


def suppress_hashed(entries: Iterable[tuple[str, str]], *, source: str = "system") -> None:
    """Add entries already hashed: (address_hash, reason) pairs (the retention purge)."""
    now = utcnow()
    _insert_ignoring_duplicates([{"address_hash": h, "reason": r, "source": source[:24], "created_at": now}
                                 for h, r in entries])


def lift_on_opt_in(address: str) -> bool:
    """The person confirmed a new signup themselves: their unsubscribe or erasure entry goes."""
    result = db.session.execute(
        delete(Suppression).where(Suppression.address_hash == address_hash(address),
                                  Suppression.reason.notin_(ADMIN_ONLY)))
    return bool(result.rowcount)


def blocks_own_signup(address: str) -> bool:
    """A bounce or complaint: even the person's own signup is ignored until an admin lifts it."""
    return suppression_of(address) in ADMIN_ONLY


def lift_by_admin(address: str) -> str | None:
    """An admin lifts any suppression of the address; returns what was lifted (None: nothing).

    A bounced or complained subscriber becomes `unsubscribed`: the person may then sign up
    again, and is confirmed only by their own double opt-in.
    """
    reason = suppression_of(address)
    if reason not in ADMIN_ONLY:  # nothing, or what only the person's own opt-in may lift
        return None
    db.session.execute(delete(Suppression).where(Suppression.address_hash == address_hash(address)))
    subscriber = db.session.execute(
        select(Subscriber).where(Subscriber.email == address)).scalar_one_or_none()
    if subscriber is not None and subscriber.status in ADMIN_ONLY:
        subscriber.status = "unsubscribed"
        subscriber.unsubscribed_at = subscriber.unsubscribed_at or utcnow()
    return reason


def suppression_counts() -> dict[str, int]:
    """Entries by reason (for the admin's privacy page)."""
    from sqlalchemy import func

    rows = db.session.execute(select(Suppression.reason, func.count()).group_by(Suppression.reason)).all()
    return {reason: n for reason, n in rows}
