"""`flask admin …`: create admins, list them, print a first-run setup link."""

from __future__ import annotations

import sys

import click
from flask.cli import AppGroup
from sqlalchemy.exc import OperationalError, ProgrammingError

from newsletter.admins import accounts, audit
from newsletter.models import ADMIN_ROLES

group = AppGroup("admin", help="Manage admin accounts.")


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise click.ClickException("no password on standard input")
        return line.rstrip("\r\n")
    return click.prompt("Password", hide_input=True, confirmation_prompt=True)


@group.command("create")
@click.argument("email")
@click.option("--role", type=click.Choice(ADMIN_ROLES), default="admin", show_default=True,
              help="admin: everything; editor: articles, digests and sends.")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
def create(email: str, role: str, password_stdin: bool) -> None:
    """Create an admin account (the password is prompted for unless --password-stdin)."""
    password = _read_password(password_stdin)
    try:
        admin = accounts.create_admin(email, password, role=role)
    except accounts.AccountError as exc:
        raise click.ClickException(str(exc)) from exc
    except (OperationalError, ProgrammingError) as exc:  # no tables yet
        raise click.ClickException(f"the database is not ready ({exc.orig}); run "
                                   "`flask --app wsgi db upgrade` first") from exc
    audit.record("admin_created", admin.email, actor="cli", role=role)
    click.echo(f"Created {admin.role} {admin.email}")


@group.command("list")
def list_admins() -> None:
    """List the admin accounts."""
    for admin in accounts.list_admins():
        state = "active" if admin.active else "deactivated"
        click.echo(f"{admin.email}\t{admin.role}\t{state}")


@group.command("setup-token")
def setup_token() -> None:
    """Print a one-time link for creating the first admin in the browser (only while there is none)."""
    if accounts.admin_count():
        raise click.ClickException("an admin exists already: log in, or use `admin create`")
    click.echo(accounts.setup_url(accounts.make_setup_token()))
