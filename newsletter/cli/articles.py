"""`flask articles …`: add an article that is in no feed."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from newsletter.digests import articles

group = AppGroup("articles", help="Articles that are not in any feed.")


@group.command("add")
@click.option("--title", required=True)
@click.option("--url", required=True)
@click.option("--summary", default="")
@click.option("--topic", "topic_slug", default=None, help="Topic slug (default: DEFAULT_TOPIC).")
@click.option("--published", default=None, help="ISO date or time, in TIMEZONE unless it has an offset.")
@click.option("--author", default="")
@click.option("--image", "image_url", default="", help="URL of an image.")
@click.option("--image-alt", default="", help="Alt text of the image.")
def add_command(title, url, summary, topic_slug, published, author, image_url, image_alt) -> None:
    """Add an article by hand; it goes into the next digest."""
    try:
        article = articles.add_article(title=title, url=url, summary=summary, topic_slug=topic_slug,
                                       published=published, author=author, image_url=image_url,
                                       image_alt=image_alt)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"article {article.id}: {article.title} ({article.topic.slug if article.topic else '-'}, "
               f"{article.published_at.isoformat(timespec='minutes')})")
