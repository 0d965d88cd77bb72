"""`flask subscribers …`: add, import, export."""

from __future__ import annotations

from flask.cli import AppGroup

group = AppGroup("subscribers", help="Manage subscribers.")
