"""`flask feeds …`: register (checked), edit, pause, resume, remove, poll and list RSS/Atom feeds."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from newsletter.digests import feed_registry as feeds
from newsletter.digests import feeds as polling

group = AppGroup("feeds", help="Register, change, pause, remove and poll RSS/Atom feeds.")


@group.command("add")
@click.argument("url")
@click.option("--topic", "topic_slug", default=None, help="Put every article of this feed in this topic.")
def add_command(url: str, topic_slug: str | None) -> None:
    """Register a feed, checked by fetching it (polled before each digest and every FEED_POLL_MINUTES)."""
    try:
        added = feeds.register_feed(url, topic_slug=topic_slug)
    except feeds.FeedRefused as exc:
        raise click.ClickException(f"{url} not added: {exc}") from exc
    feed = added.feed
    line = f"feed {feed.id}: {feed.url}" + (f" (topic {feed.topic.slug})" if feed.topic else "")
    if added.result is None:
        line += ", registered already"
    else:
        line += f", {added.result.added} articles"
    click.echo(line)


@group.command("edit")
@click.argument("feed_key", metavar="URL|ID")
@click.option("--url", "new_url", default=None, help="Its new address (checked by fetching it).")
@click.option("--topic", "topic_slug", default=None, help="Put every article of this feed in this topic.")
@click.option("--by-category", is_flag=True, help="No topic: the entries' categories decide.")
def edit_command(feed_key: str, new_url: str | None, topic_slug: str | None, by_category: bool) -> None:
    """Change a feed's URL or topic."""
    if topic_slug and by_category:
        raise click.UsageError("--topic and --by-category do not go together")
    feed = _feed(feed_key)
    try:
        feeds.change_feed(feed, url=new_url, topic_slug=topic_slug, by_category=by_category)
    except feeds.FeedRefused as exc:
        raise click.ClickException(f"feed {feed.id} not changed: {exc}") from exc
    click.echo(f"feed {feed.id}: {feed.url} (topic {feed.topic.slug if feed.topic else 'by category'})")


@group.command("pause")
@click.argument("feed_key", metavar="URL|ID")
def pause_command(feed_key: str) -> None:
    """Stop polling a feed (its articles stay); `feeds resume` starts again."""
    feed = feeds.set_paused(_feed(feed_key), True)
    click.echo(f"feed {feed.id} paused: {feed.url}")


@group.command("resume")
@click.argument("feed_key", metavar="URL|ID")
def resume_command(feed_key: str) -> None:
    """Poll a paused feed again."""
    feed = feeds.set_paused(_feed(feed_key), False)
    click.echo(f"feed {feed.id} resumed: {feed.url}")


@group.command("remove")
@click.argument("feed_key", metavar="URL|ID")
def remove_command(feed_key: str) -> None:
    """Remove a feed; its articles stay."""
    feed = _feed(feed_key)
    feed_id, url = feed.id, feed.url
    try:
        kept = feeds.remove_feed(feed)
    except feeds.FeedRefused as exc:
        raise click.ClickException(f"{url} not removed: {exc}") from exc
    click.echo(f"feed {feed_id} removed: {url} ({kept} articles kept)")


def _feed(key: str):
    feed = feeds.feed_by_key(key)
    if feed is None:
        raise click.ClickException(f"no feed {key}: see `feeds list`")
    return feed


@group.command("fetch")
def fetch_command() -> None:
    """Poll every feed now (FEED_URLS included); exits 1 if any feed failed."""
    results = polling.fetch_all_feeds()
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
    """The registered feeds: when each was last polled, how that went, and its last error."""
    listed = feeds.all_feeds()
    for feed in listed:
        fetched = feed.last_fetched_at.isoformat(timespec="minutes") if feed.last_fetched_at else "never"
        topic = feed.topic.slug if feed.topic else "by category"
        status = "paused" if feed.paused else (feed.last_status or "-")
        click.echo(f"{feed.id:3}  {status:13} {fetched:22} {topic:18} {feed.url}")
        if feed.last_error:
            click.echo(f"     last error: {feed.last_error}")
    if not listed:
        click.echo("no feeds: add one with `feeds add URL` or set FEED_URLS", err=True)
