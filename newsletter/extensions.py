"""Flask extensions, created unbound here and bound in `create_app`."""

from __future__ import annotations

import logging
from pathlib import Path

import click
from flask import Flask, request
from flask_babel import Babel
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

# Stable constraint names, so that Alembic migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def client_ip() -> str:
    """The client's address; behind a proxy, ProxyFix (see create_app) has set remote_addr."""
    return request.remote_addr or "unknown"


db = SQLAlchemy(model_class=Base)
csrf = CSRFProtect()
limiter = Limiter(key_func=get_remote_address)
babel = Babel()
login = LoginManager()


@login.user_loader
def _nobody(user_id: str):
    """Nobody is logged in: a placeholder until the admin area registers its own loader."""
    return None


MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def init_migrations(app: Flask) -> None:
    """Flask-Migrate (Alembic) on the app, for `flask db …` and the migration tests."""
    # Alembic logs its plugin set-up at INFO when imported; our logging is set up by now.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    from flask_migrate import Migrate

    Migrate(app, db, directory=str(MIGRATIONS), render_as_batch=True)


class MigrationsGroup(click.Group):
    """`flask db …`: Flask-Migrate's group, imported when it is used.

    Importing Alembic costs about 0.2 s and 11 MB; every other command (a `digest send`,
    the scheduler) would pay for it, so the real group is only loaded here.
    """

    def __init__(self) -> None:
        super().__init__("db", help="Perform database migrations (Flask-Migrate).")

    def _real(self) -> click.Group:
        from flask import current_app

        if "migrate" not in current_app.extensions:
            init_migrations(current_app._get_current_object())  # type: ignore[attr-defined]
        from flask_migrate.cli import db as group

        upgrade = group.commands.get("upgrade")
        if upgrade is not None and not getattr(upgrade, "seeds", False):
            group.add_command(_then_seed(upgrade))
        return group

    def make_context(self, info_name, args, parent=None, **extra):
        return self._real().make_context(info_name, args, parent=parent, **extra)

    def list_commands(self, ctx):
        return self._real().list_commands(ctx)

    def get_command(self, ctx, name):
        return self._real().get_command(ctx, name)


AFTER_UPGRADE = "newsletter.after_upgrade"  # app.extensions: callables run after `db upgrade`


def _then_seed(upgrade: click.Command) -> click.Command:
    """`db upgrade`, then the app's seeding (e.g. the configured topics), unless it only prints SQL."""
    from flask import current_app
    from flask.cli import with_appcontext

    @with_appcontext
    def callback(**params):
        click.get_current_context().invoke(upgrade.callback, **params)
        if not params.get("sql"):
            for seed in current_app.extensions.get(AFTER_UPGRADE, ()):
                seed()

    command = click.Command(upgrade.name, callback=callback, params=upgrade.params, help=upgrade.help,
                            short_help=upgrade.short_help)
    command.seeds = True  # type: ignore[attr-defined]
    return command
