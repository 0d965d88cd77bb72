"""`flask bounces …`: read the bounce mailbox now (the scheduler does it every few minutes)."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from newsletter.inbound import poll
from newsletter.inbound.mailbox import MailboxError

group = AppGroup("bounces", help="Bounces, complaints and mailto unsubscribes that come back by mail.")


@group.command("poll")
def poll_command() -> None:
    """Read BOUNCE_MAILBOX_URL once: record bounces and complaints, unsubscribe, drop auto-replies."""
    try:
        counts = poll.poll_mailbox()
    except (MailboxError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(", ".join(f"{count} {action}" for action, count in counts.items()))
