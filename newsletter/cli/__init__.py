"""`flask --app wsgi …` commands: one module per command group, all thin over the services."""

from __future__ import annotations

from flask import Flask


def register_cli(app: Flask) -> None:
    from newsletter.cli import (
        admin,
        articles,
        bounces,
        database,
        digest,
        feeds,
        privacy,
        scheduler,
        subscribers,
    )

    for module in (subscribers, feeds, articles, digest, scheduler, admin, privacy, bounces, database):
        app.cli.add_command(module.group)
