"""The newsletter service: `create_app()` builds the Flask app.

The package itself imports nothing heavy: the send worker (`python -m
newsletter.engine.worker`, a process of its own for large sends) imports only the
Flask-free modules of `newsletter.engine`, so that each sending process costs a
fraction of the memory of a Flask app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask


def create_app(overrides: dict | None = None, config_class: type | None = None) -> Flask:
    """Build the app (see `newsletter.app.create_app`); imported here only when called."""
    from newsletter.app import create_app as build

    return build(overrides, config_class)
