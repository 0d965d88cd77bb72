"""`flask privacy …`: retention, proof of consent and the suppression list, by hand."""

from __future__ import annotations

import json

import click
from flask.cli import AppGroup

from newsletter import privacy as retention
from newsletter import subscriptions
from newsletter.admins import audit
from newsletter.cli.subscribers import _operator
from newsletter.subscriptions import consent, suppression

group = AppGroup("privacy", help="Retention, proof of consent and the suppression list.")


@group.command("purge")
@click.option("--dry-run", is_flag=True, help="Count what would be removed; remove nothing.")
def purge_command(dry_run: bool) -> None:
    """Apply the retention settings now (the scheduler does it daily). Prints counts, never addresses."""
    report = retention.purge(dry_run=dry_run)
    for line in report.lines():
        click.echo(line)
    if not dry_run:
        click.echo(f"{len(report.batches)} batches")
        audit.record("retention_purged", "retention", actor=_operator(), pending=report.pending,
                     inactive=report.inactive, deliveries=report.deliveries)


@group.command("proof")
@click.argument("email")
def proof_command(email: str) -> None:
    """Print the proof of consent of one address as JSON: every ledger event with its wording."""
    subscriber = subscriptions.find_subscriber(email)
    if subscriber is None:
        raise click.ClickException("no subscriber with that address")
    click.echo(json.dumps(consent.proof_of_consent(subscriber), ensure_ascii=False, indent=2))
    audit.record("consent_proof_exported", f"subscriber:{subscriber.id}", actor=_operator())


@group.command("unsuppress")
@click.argument("email")
def unsuppress_command(email: str) -> None:
    """Lift a bounce or complaint suppression (the person may then sign up again themselves)."""
    try:
        address = subscriptions.normalise_email(email)
    except subscriptions.InvalidInput as exc:
        raise click.ClickException(exc.reason) from exc
    lifted = suppression.lift_by_admin(address)
    if lifted is None:
        raise click.ClickException("no bounce or complaint suppression on that address (an unsubscribe or "
                                   "erasure is lifted only by the person's own signup)")
    audit.record("suppression_lifted", "email-hmac:" + suppression.address_hash(address)[:32],
                 actor=_operator(), reason=lifted)
    click.echo(f"lifted ({lifted}): {address} may sign up again and confirm")
