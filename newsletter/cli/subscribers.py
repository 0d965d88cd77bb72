"""`flask subscribers …`: add, import, export."""

from __future__ import annotations

import getpass
import os
import sys
import tempfile
from pathlib import Path

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from newsletter import privacy, subscriptions
from newsletter.admins import audit
from newsletter.extensions import db
from newsletter.mail import outbox as mail_queue
from newsletter.models import SUBSCRIBER_STATES, QueuedEmail, Topic
from newsletter.subscriptions import imports, suppression

group = AppGroup("subscribers", help="Manage subscribers: add, import, export, erase.")

ADD_FLUSH_LIMIT = 20  # `add` sends its confirmation at once unless the queue has a backlog


def _operator() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _no_queue_thread() -> None:
    # A command is a short-lived process: a background mail thread would die with it mid-send.
    # The command sends what it must itself; the rest waits for the app's worker or the scheduler.
    current_app.config["MAIL_QUEUE_THREAD"] = False


@group.command("add")
@click.argument("email")
@click.option("--confirmed", is_flag=True,
              help="Confirmed at once (you hold their consent); the ledger records the command as source.")
@click.option("--lang", "language", default=None, help="sv or en (default: DEFAULT_LOCALE).")
@click.option("--topic", "topics", multiple=True, metavar="SLUG",
              help="A topic to follow; repeat it. None = all topics.")
@click.option("--name", default="", help="The person's name.")
def add_command(email: str, confirmed: bool, language: str | None, topics: tuple[str, ...],
                name: str) -> None:
    """Add one subscriber: pending with a confirmation email, or --confirmed."""
    _no_queue_thread()
    command = "flask subscribers add" + (" --confirmed" if confirmed else "")
    try:
        subscriber = subscriptions.add_subscriber(
            email, name=name, language=language, topics=topics, confirmed=confirmed, source="cli",
            detail={"command": command, "actor": _operator()})
    except subscriptions.InvalidInput as exc:
        raise click.ClickException(f"cannot add {email.strip()[:100]!r}: {exc.reason}") from exc
    except suppression.Suppressed as exc:
        db.session.rollback()
        raise click.ClickException(f"{exc.address} is suppressed ({exc.reason}): left as it is; only the "
                                   "person's own signup brings it back") from exc
    except (subscriptions.SubscriberExists, IntegrityError) as exc:
        db.session.rollback()
        raise click.ClickException(_already_there(email.strip(), getattr(exc, "status", ""))) from exc
    audit.record("subscriber_added", f"subscriber:{subscriber.id}", actor=_operator(), confirmed=confirmed)
    if confirmed:
        click.echo(f"{subscriber.email}: confirmed (consent source recorded: {command})")
        return
    click.echo(f"{subscriber.email}: pending; {_confirmation_state(subscriber.id)}")


SUPPRESSED = {
    "unsubscribed": "unsubscribed",
    "bounced": "was marked bounced (their mail server refused the address)",
    "complained": "reported a digest as spam",
}


def _already_there(email: str, status: str) -> str:
    """Why an add changed nothing, saying when the person left the list themselves."""
    if status in SUPPRESSED:
        return (f"{email} {SUPPRESSED[status]}; nothing changed: they are not added back "
                "(they can subscribe again themselves through the form)")
    state = f" ({status})" if status else ""
    return f"{email} is already on the list{state}; nothing changed"


def _confirmation_state(subscriber_id: int) -> str:
    mail_queue.flush(limit=ADD_FLUSH_LIMIT)
    db.session.expire_all()
    row = db.session.execute(
        select(QueuedEmail).where(QueuedEmail.subscriber_id == subscriber_id, QueuedEmail.kind == "confirm")
        .order_by(QueuedEmail.id.desc()).limit(1)
    ).scalar_one_or_none()
    if row is not None and row.sent_at is not None:
        return "confirmation email sent"
    why = f" ({row.last_error})" if row is not None and row.last_error else ""
    return f"confirmation email queued{why}; the app's mail worker or the scheduler sends it"


@group.command("import")
@click.argument("path", metavar="FILE.csv", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--confirmed", is_flag=True,
              help="Confirm everyone at once (you hold their consent); no confirmation emails. "
                   "The ledger records this command and the file as the consent source.")
@click.option("--dry-run", is_flag=True, help="Check the file and report what would happen; write nothing.")
@click.option("--encoding", default=None, help="The file's encoding (default: detected; UTF-8 expected).")
@click.option("--send-now", is_flag=True, help="Send the confirmation emails before the command exits.")
def import_command(path: Path, confirmed: bool, dry_run: bool, encoding: str | None, send_now: bool) -> None:
    """Import subscribers from CSV: our export, a Mailchimp or a listmonk export.

    Invalid rows are reported (line and reason) on stderr and skipped; the rest is
    imported in one transaction. Exits 1 when nothing could be imported, 3 when the
    import was done but some rows were invalid.
    """
    _no_queue_thread()
    command = "flask subscribers import" + (" --confirmed" if confirmed else "")
    try:
        with path.open("rb") as stream:
            report = imports.import_csv(
                stream, confirmed=confirmed, source="cli", filename=path.name, actor=_operator(),
                dry_run=dry_run, encoding=encoding, command=command)
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror or exc}") from exc
    except imports.ImportFailed as exc:
        raise click.ClickException(f"{path.name}: {exc}") from exc
    if not dry_run:
        audit.record("subscribers_imported", path.name, actor=_operator(), added=report.added,
                     updated=report.updated, skipped=report.skipped, errors=len(report.errors),
                     confirmed=confirmed, layout=report.layout)
    for warning in report.warnings:
        click.echo(f"warning: {warning}", err=True)
    for line, reason in report.errors:
        click.echo(f"{path.name}:{line}: {reason}", err=True)
    for line, reason in report.notices:
        click.echo(f"{path.name}:{line}: skipped: {reason}", err=True)
    click.echo(("dry run, nothing written: " if dry_run else "") + report.summary())
    if send_now and report.confirmations_queued and not dry_run:
        click.echo(f"{mail_queue.flush()} emails sent")
    if report.errors:
        sys.exit(3)


@group.command("erase")
@click.argument("email")
def erase_command(email: str) -> None:
    """Erase one person and all their data; the address goes onto the suppression list."""
    try:
        address = subscriptions.normalise_email(email)
    except subscriptions.InvalidInput as exc:
        raise click.ClickException(f"cannot erase {email.strip()[:100]!r}: {exc.reason}") from exc
    subscriber = subscriptions.find_subscriber(address)
    if subscriber is None:
        # Nothing to delete (never here, or purged already): the request is still honoured for the future.
        suppression.suppress([address], reason="erased", source="cli")
        audit.record("subscriber_erased", "email-hmac:" + suppression.address_hash(address)[:32],
                     actor=_operator(), found=False)
        click.echo("not on the list; the address is on the suppression list")
        return
    target = f"subscriber:{subscriber.id}"
    privacy.erase_person(subscriber, source="cli")
    audit.record("subscriber_erased", target, actor=_operator())
    click.echo(f"{target} erased; the address is on the suppression list")


@group.command("export")
@click.argument("path", metavar="[FILE]", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--status", type=click.Choice(SUBSCRIBER_STATES), default=None,
              help="Only subscribers in this state.")
@click.option("--topic", default=None, metavar="SLUG",
              help="Only those who get this topic: who chose it, and who follow every topic.")
def export_command(path: Path | None, status: str | None, topic: str | None) -> None:
    """Write subscribers as CSV (email, status, language, topics, name, created_at, confirmed_at).

    To stdout without FILE. A file is written whole or not at all.
    """
    if topic and db.session.execute(select(Topic.id).where(Topic.slug == topic)).first() is None:
        raise click.ClickException(f"unknown topic {topic!r}")
    if path is None:
        count = subscriptions.export_subscribers_csv(sys.stdout, status=status, topic=topic)
        _audit_export(count, status, topic, "stdout")
        click.echo(f"exported {count} subscriber{'' if count == 1 else 's'}", err=True)
        return
    directory = path.resolve().parent
    try:  # mode 0600 (personal data), renamed into place when complete
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    except OSError as exc:
        raise click.ClickException(f"cannot write in {directory}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as stream:
            count = subscriptions.export_subscribers_csv(stream, status=status, topic=topic)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _audit_export(count, status, topic, str(path))
    click.echo(f"exported {count} subscriber{'' if count == 1 else 's'} to {path}", err=True)


def _audit_export(count: int, status: str | None, topic: str | None, where: str) -> None:
    audit.record("subscribers_exported", "subscribers", actor=_operator(), rows=count, status=status or "",
                 topic=topic or "", to=where)
