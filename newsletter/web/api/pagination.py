"""Keyset pagination: `limit` and an opaque `cursor` (the last id seen), fast at any depth."""

from __future__ import annotations

from flask import jsonify
from sqlalchemy import Select

from newsletter.extensions import db
from newsletter.web.api.schemas import DEFAULT_LIMIT

MAX_ID = 2**31 - 1  # INTEGER primary keys; PostgreSQL refuses a larger value in a comparison


def page(query: Select, id_column, params: dict, serialise, *, descending: bool = False):
    """One page of `query` ordered by `id_column`, as {"data": [...], "next_cursor": ...}."""
    limit = params.get("limit", DEFAULT_LIMIT)
    cursor = params.get("cursor")
    if cursor is not None:
        after = int(cursor)
        if after <= MAX_ID:  # a larger cursor (ids are 32-bit) is past every row either way
            query = query.where(id_column < after if descending else id_column > after)
        elif not descending:
            query = query.where(db.false())
    query = query.order_by(id_column.desc() if descending else id_column).limit(limit + 1)
    rows = list(db.session.execute(query).scalars())
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = str(rows[-1].id) if more and rows else None
    return jsonify(data=[serialise(row) for row in rows], next_cursor=next_cursor)
