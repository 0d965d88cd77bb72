"""`flask digest …`: preview, send (or test, or dry-run) and status of the weekly digest."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from flask import current_app
from flask.cli import AppGroup

from newsletter import delivery, digests
from newsletter.subscriptions import InvalidInput

group = AppGroup("digest", help="The weekly digest.")

NO_FETCH = click.option("--no-fetch", "no_fetch", is_flag=True,
                        help="Do not poll the feeds first (within DIGEST_FETCH_SECONDS).")


def _poll_feeds() -> None:
    """Poll every feed; the ones that failed are named on stderr (the digest goes on without them)."""
    results = digests.poll_feeds_first()
    added = sum(result.added for result in results)
    failed = [result for result in results if not result.ok]
    click.echo(f"feeds polled: {len(results)}, {added} new articles, {len(failed)} failed", err=True)
    for result in failed:
        click.echo(f"  feed failed: {result.url}: {result.error}", err=True)


@group.command("preview")
@click.option("--out", "out", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the HTML here (without --out the text part is printed).")
@click.option("--lang", default=None, help="sv or en (default: DEFAULT_LOCALE).")
@NO_FETCH
def preview_command(out: str | None, lang: str | None, no_fetch: bool) -> None:
    """Poll the feeds, then render the coming digest without sending anything."""
    locale = _language(lang)
    if not no_fetch:
        _poll_feeds()
    rendered = digests.preview_coming(locale)
    if rendered is None:
        raise click.ClickException("nothing new for a digest (no articles within DIGEST_MAX_AGE_DAYS)")
    subject, text, html = rendered
    if out:
        Path(out).write_text(html, encoding="utf-8")
        click.echo(f"{subject}\nwritten to {out}")
    else:
        click.echo(f"Subject: {subject}\n\n{text}")


@group.command("send")
@click.option("--test-to", "test_to", default=None, metavar="EMAIL",
              help="Send the coming digest only to this address; nothing is recorded or consumed.")
@click.option("--dry-run", is_flag=True, help="Show what would be sent and to how many; send nothing.")
@click.option("--lang", default=None, help="Language of a --test-to message (default: DEFAULT_LOCALE).")
@NO_FETCH
def send_command(test_to: str | None, dry_run: bool, lang: str | None, no_fetch: bool) -> None:
    """Finish interrupted sends, poll the feeds, then compile and send the digest now; exits
    when done."""
    if test_to and dry_run:
        raise click.UsageError("--test-to and --dry-run do not go together")
    if (test_to or dry_run) and not no_fetch:
        _poll_feeds()
    if test_to:
        try:
            sent = delivery.send_test(test_to, locale=_language(lang))
        except InvalidInput as exc:
            raise click.BadParameter(f"{test_to.strip()[:100]!r}: {exc.reason}",
                                     param_hint="--test-to") from exc
        if not sent:
            raise click.ClickException("nothing new for a digest: no test sent")
        click.echo(f"test sent to {test_to}")
        return
    if dry_run:
        _dry_run()
        return
    digest = delivery.send_now(poll=None if no_fetch else _poll_feeds)
    if digest is None:
        click.echo("nothing new: no digest compiled")
        return
    if delivery.workers_send():  # handed to the Celery workers: follow it in the ledger
        counts = _follow_workers(digest.id)
    else:
        counts = delivery.send_progress(digest.id)
    click.echo(f"digest {digest.id} ({counts['status']}): {digest.subject_sv}\n  {_counts(counts)}")


def _follow_workers(digest_id: int) -> dict:
    """Progress on stderr until the workers are done; exit 1 when none picks the send up."""
    seconds = current_app.config["SEND_PICKUP_SECONDS"]
    tty = sys.stderr.isatty()
    shown = [""]

    def report(progress: dict) -> None:
        line = (f"digest {digest_id}: waiting for a worker" if progress["started_at"] is None
                else f"digest {digest_id} ({progress['status']}): {_counts(progress)}")
        if line != shown[0]:
            click.echo(("\r\033[K" if tty else "") + line, err=True, nl=not tty)
            shown[0] = line

    try:
        progress = delivery.wait_for_workers(digest_id, report, pickup_seconds=seconds)
    except delivery.NotPickedUp:
        queue = current_app.config["CELERY_QUEUE"]
        raise click.ClickException(
            f"no worker started the send of digest {digest_id} within {seconds:g} s (SEND_PICKUP_SECONDS): "
            f"is a worker running (celery -A newsletter.tasks worker -Q {queue})? The send stays "
            "queued: a worker that starts sends it.") from None
    finally:
        if tty:
            click.echo("", err=True)
    return progress


def _dry_run() -> None:
    plan = delivery.plan_send()
    if plan is None:
        click.echo("nothing new: no digest would be sent")
        return
    click.echo(f"would send: {plan['subject']}")
    for article in plan["articles"]:
        topic = article.topic.slug if article.topic else "-"
        click.echo(f"  [{topic}] {article.title}")
    click.echo(f"to {plan['recipients']} subscribers ({plan['variants']} variants); nothing was recorded")


@group.command("status")
@click.option("--limit", default=10, show_default=True)
def status_command(limit: int) -> None:
    """The latest digests and their progress."""
    rows = digests.latest_digests(limit)
    if not rows:
        click.echo("no digests yet")
    for digest in rows:
        when = digest.compiled_for.isoformat(timespec="minutes")
        click.echo(f"{digest.id:4}  {digest.status:9} {when}  {digest.period or '':9} {digest.subject_sv}")
        if digest.started_at:
            click.echo(f"      {_counts(delivery.send_progress(digest.id))}")
        if digest.error:
            click.echo(f"      error: {digest.error}")


COUNT_KEYS = ("sent", "queued", "sending", "failed", "bounced", "skipped", "total")


def _counts(progress: dict) -> str:
    """The delivery counts of `send_progress`, e.g. "sent 120, failed 2, total 122"."""
    text = ", ".join(f"{name} {progress[name]}" for name in COUNT_KEYS
                     if progress.get(name) or name == "total")
    if progress.get("status") == "sending" and progress.get("rate"):
        text += f" ({progress['rate']:.0f}/s"
        text += f", {progress['eta_seconds']} s left)" if progress.get("eta_seconds") is not None else ")"
    return text


def _language(lang: str | None) -> str:
    if lang is None:
        return current_app.config["DEFAULT_LOCALE"]
    if lang not in current_app.config["LANGUAGES"]:
        print(f"Error: --lang must be one of {', '.join(current_app.config['LANGUAGES'])}", file=sys.stderr)
        raise SystemExit(2)
    return lang
