"""`flask --app wsgi scheduler`: run the scheduler in the foreground (one per deployment)."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import with_appcontext


@click.command("scheduler")
@with_appcontext
def group() -> None:
    """Run the weekly digest, feed polling and housekeeping jobs until stopped."""
    from newsletter import scheduler  # APScheduler, for this command only (not for every `flask` command)

    scheduler.run(current_app._get_current_object())  # type: ignore[attr-defined]
