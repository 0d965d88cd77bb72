"""`flask feeds …`: register, poll and list RSS/Atom feeds."""

from __future__ import annotations

import click
from flask.cli import AppGroup
from sqlalchemy import select

from newsletter.digests import feeds
from newsletter.extensions import db
from newsletter.models import Feed

group = AppGroup("feeds", help="Register and poll RSS/Atom feeds.")


@group.command("add")
@click.argument("url")
@click.option("--topic", "topic_slug", default=None, help="Put every article of this feed in this topic.")
def add_command(url: str, topic_slug: str | None) -> None:
    """Register a feed (polled before each digest and every FEED_POLL_MINUTES)."""
    try:
        feed = feeds.add_feed(url, topic_slug=topic_slug)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"feed {feed.id}: {feed.url}" + (f" (topic {feed.topic.slug})" if feed.topic else ""))


@group.command("fetch")
def fetch_command() -> None:
    """Poll every feed now (FEED_URLS included); exits 1 if any feed failed."""
    results = feeds.fetch_all_feeds()
    for result in results:
        line = f"{result.status:13} +{result.added} new, {result.updated} updated  {result.url}"
        if result.error:
            click.echo(f"{line}\n              {result.error}", err=True)
        else:
            click.echo(line)
    if not results:
        click.echo("no feeds: add one with `feeds add URL` or set FEED_URLS", err=True)
    if any(not result.ok for result in results):
        raise SystemExit(1)


@group.command("list")
def list_command() -> None:
    """The registered feeds and how their last poll went."""
    feeds.ensure_configured_feeds()
    for feed in db.session.execute(select(Feed).order_by(Feed.id)).scalars():
        fetched = feed.last_fetched_at.isoformat(timespec="minutes") if feed.last_fetched_at else "never"
        topic = feed.topic.slug if feed.topic else "by category"
        click.echo(f"{feed.id:3}  {feed.last_status or '-':13} {fetched:22} {topic:18} {feed.url}")
        if feed.last_error:
            click.echo(f"     {feed.last_error}")
