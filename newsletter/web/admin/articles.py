"""Admin pages for articles and feeds: list, add, edit, hide from the coming digest, fetch now."""

from __future__ import annotations

from flask import abort, flash, redirect, render_template, request, url_for
from flask_babel import get_locale
from flask_babel import gettext as _

from newsletter import digests
from newsletter import digests as article_service
from newsletter.admins import audit
from newsletter.digests import feed_polls
from newsletter.digests import feed_registry as feed_service
from newsletter.engine.clock import utcnow
from newsletter.extensions import db
from newsletter.i18n import local_time
from newsletter.models import Article, Feed
from newsletter.subscriptions.topics import ensure_topics
from newsletter.web.admin import bp
from newsletter.web.admin.auth import role_required
from newsletter.web.admin.content_forms import ArticleForm, FeedForm, topic_choices
from newsletter.web.admin.labels import feed_problem, feed_refusal

RECENT_DAYS = 60


def _locale() -> str:
    return str(get_locale() or "sv")


def _with_topics(form):
    form.topic.choices = topic_choices(ensure_topics(), _locale())
    return form


@bp.get("/articles")
@role_required("editor")
def articles():
    """Articles: the coming digest first (with the hidden ones), then earlier articles."""
    now = utcnow()
    coming = digests.coming_digest(now)
    coming_articles = list(coming.articles) if coming is not None else []
    hidden = digests.hidden_articles(now)
    listed = {a.id for a in coming_articles} | {a.id for a in hidden}
    earlier = [a for a in article_service.recent_articles(RECENT_DAYS) if a.id not in listed][:200]
    return render_template("admin/articles.html", coming=coming_articles, hidden=hidden, earlier=earlier,
                           in_digest=digests.digests_of(a.id for a in earlier))


@bp.route("/articles/new", methods=["GET", "POST"])
@role_required("editor")
def articles_new():
    """Add an article by hand (one that is in no feed)."""
    form = _with_topics(ArticleForm())
    if request.method == "GET":
        form.topic.data = form.topic.choices[0].value if form.topic.choices else None
    if form.validate_on_submit():
        try:
            article = article_service.add_article(
                title=form.title.data, url=form.url.data, summary=form.summary.data or "",
                topic_slug=form.topic.data, published=form.published.data, author=form.author.data or "",
                image_url=form.image_url.data or "", image_alt=form.image_alt.data or "")
        except ValueError as exc:
            form.url.errors.append(_("Could not save: %(reason)s", reason=str(exc)))
        else:
            audit.record("article.add", f"article:{article.id}", title=article.title)
            flash(_("The article was added."), "success")
            return redirect(url_for("admin.articles"))
    status = 200 if not form.errors else 422
    return render_template("admin/article_form.html", form=form, article=None), status


@bp.route("/articles/<int:article_id>", methods=["GET", "POST"])
@role_required("editor")
def articles_edit(article_id: int):
    """Edit an article's title, link, summary, section, date, author and image."""
    article = db.get_or_404(Article, article_id)
    form = _with_topics(ArticleForm(obj=article if request.method == "GET" else None))
    if request.method == "GET":
        form.topic.data = article.topic.slug if article.topic else None
        form.published.data = local_time(article.published_at).replace(tzinfo=None)
    if form.validate_on_submit():
        try:
            article_service.update_article(
                article, title=form.title.data, url=form.url.data, summary=form.summary.data or "",
                topic_slug=form.topic.data, author=form.author.data or "",
                image_url=form.image_url.data or "", image_alt=form.image_alt.data or "",
                **({"published": form.published.data} if form.published.data else {}))
        except ValueError as exc:
            db.session.rollback()
            form.title.errors.append(_("Could not save: %(reason)s", reason=str(exc)))
        else:
            draft = digests.current_draft()
            if draft is not None:  # a changed section or date changes the draft's order
                digests.refresh_draft(draft)
            audit.record("article.edit", f"article:{article.id}", title=article.title)
            flash(_("The article was saved."), "success")
            return redirect(url_for("admin.articles"))
    in_digest = digests.digests_of([article.id]).get(article.id)
    status = 200 if not form.errors else 422
    return render_template("admin/article_form.html", form=form, article=article, in_digest=in_digest), status


@bp.post("/articles/<int:article_id>/hide")
@role_required("editor")
def articles_hide(article_id: int):
    """Leave an article out of the coming digest."""
    return _set_hidden(db.get_or_404(Article, article_id), True)


@bp.post("/articles/<int:article_id>/unhide")
@role_required("editor")
def articles_unhide(article_id: int):
    """Put a hidden article back into the coming digest."""
    return _set_hidden(db.get_or_404(Article, article_id), False)


@bp.post("/articles/<int:article_id>/include")
@role_required("editor")
def articles_include(article_id: int):
    """Put an article in the coming digest although it is older than DIGEST_MAX_AGE_DAYS."""
    article = db.get_or_404(Article, article_id)
    try:
        digests.include_article(article)
    except ValueError:
        db.session.rollback()
        flash(_("This article was sent in an earlier digest and cannot be changed there."), "error")
        return redirect(url_for("admin.articles"), 303)
    audit.record("article.include", f"article:{article.id}", title=article.title)
    flash(_("“%(title)s” is in the coming digest.", title=article.title), "success")
    return redirect(url_for("admin.articles") + f"#article-{article.id}", 303)


@bp.post("/articles/<int:article_id>/move/<any(up, down):direction>")
@role_required("editor")
def articles_move(article_id: int, direction: str):
    """Move an article up or down within its section of the coming digest."""
    article = db.get_or_404(Article, article_id)
    if digests.move_article(article, -1 if direction == "up" else 1):
        audit.record("article.move", f"article:{article.id}", direction=direction)
    return redirect(url_for("admin.articles") + f"#article-{article.id}", 303)


def _set_hidden(article: Article, hidden: bool):
    in_digest = digests.digests_of([article.id]).get(article.id)
    if in_digest is not None and in_digest.status not in digests.DRAFT_STATES:
        flash(_("This article was sent in an earlier digest and cannot be changed there."), "error")
        return redirect(url_for("admin.articles"), 303)
    digests.hide_article(article, hidden)
    audit.record("article.hide" if hidden else "article.unhide", f"article:{article.id}", title=article.title)
    if hidden:
        flash(_("“%(title)s” is left out of the coming digest.", title=article.title), "success")
    else:
        flash(_("“%(title)s” is back in the coming digest.", title=article.title), "success")
    return redirect(url_for("admin.articles") + f"#article-{article.id}", 303)


# --- feeds ---------------------------------------------------------------------------------


@bp.route("/feeds", methods=["GET", "POST"])
@role_required("editor")
def feeds():
    """Feeds with their last fetch result and error; the form adds one (checked by fetching it)."""
    form = _feed_form(FeedForm())
    if form.validate_on_submit():
        try:
            added = feed_service.register_feed(form.url.data, topic_slug=form.topic.data or None)
        except feed_service.FeedRefused as exc:
            db.session.rollback()
            form.url.errors.append(_("Could not add: %(reason)s", reason=feed_refusal(exc)))
        else:
            feed = added.feed
            audit.record("feed.add", f"feed:{feed.id}", url=feed.url)
            if added.result is None:
                flash(_("This feed was registered already."), "success")
            else:
                _refresh_draft()
                flash(_("The feed was added with %(count)d articles.", count=added.result.added), "success")
            return redirect(url_for("admin.feeds"), 303)
    feeds = feed_service.all_feeds()
    return render_template("admin/feeds.html", form=form, feeds=feeds, polling=feed_polls.polling), \
        200 if not form.errors else 422


@bp.route("/feeds/<int:feed_id>", methods=["GET", "POST"])
@role_required("editor")
def feed_edit(feed_id: int):
    """Change a feed's address (checked by fetching it) or section."""
    feed = _feed_or_404(feed_id)
    form = _feed_form(FeedForm(obj=None if request.method == "POST" else feed))
    if request.method == "GET":
        form.topic.data = feed.topic.slug if feed.topic else ""
    if form.validate_on_submit():
        try:
            feed_service.change_feed(feed, url=form.url.data, topic_slug=form.topic.data or None,
                                     by_category=not form.topic.data)
        except feed_service.FeedRefused as exc:
            db.session.rollback()
            form.url.errors.append(_("Not changed: %(reason)s", reason=feed_refusal(exc)))
        else:
            audit.record("feed.edit", f"feed:{feed.id}", url=feed.url)
            _refresh_draft()
            flash(_("The feed was changed."), "success")
            return redirect(url_for("admin.feeds") + f"#feed-{feed.id}", 303)
    return render_template("admin/feed_edit.html", form=form, feed=feed), 200 if not form.errors else 422


@bp.post("/feeds/<int:feed_id>/<any(pause, resume):action>")
@role_required("editor")
def feed_pause(feed_id: int, action: str):
    """Stop polling a feed, or start again."""
    feed = feed_service.set_paused(_feed_or_404(feed_id), action == "pause")
    audit.record(f"feed.{action}", f"feed:{feed.id}")
    flash(_("The feed is paused: it is not fetched until you resume it.") if feed.paused
          else _("The feed is fetched again."), "success")
    return redirect(url_for("admin.feeds") + f"#feed-{feed.id}", 303)


@bp.post("/feeds/<int:feed_id>/remove")
@role_required("editor")
def feed_remove(feed_id: int):
    """Remove a feed; its articles stay."""
    feed = _feed_or_404(feed_id)
    try:
        kept = feed_service.remove_feed(feed)
    except feed_service.FeedRefused as exc:
        db.session.rollback()
        flash(_("The feed was not removed: %(reason)s", reason=feed_refusal(exc)), "error")
        return redirect(url_for("admin.feeds"), 303)
    audit.record("feed.remove", f"feed:{feed_id}", articles_kept=kept)
    flash(_("The feed was removed; its %(count)d articles stay.", count=kept), "success")
    return redirect(url_for("admin.feeds"), 303)


def _feed_or_404(feed_id: int) -> Feed:
    feed = db.session.get(Feed, feed_id)
    if feed is None:
        abort(404)
    return feed


def _feed_form(form: FeedForm) -> FeedForm:
    form = _with_topics(form)
    form.topic.choices = [("", _("By the feed's categories"))] + list(form.topic.choices)
    return form


@bp.post("/feeds/<int:feed_id>/fetch")
@role_required("editor")
def feeds_fetch(feed_id: int):
    """Fetch one feed now, in the background: the feeds page shows how it went."""
    feed = db.session.get(Feed, feed_id)
    if feed is None:
        abort(404)
    feed_polls.poll_in_background([feed.id])
    audit.record("feed.fetch", f"feed:{feed.id}")
    flash(_("The feed is being fetched. Reload the page in a moment to see the result."), "success")
    return redirect(url_for("admin.feeds"), 303)


@bp.post("/feeds/fetch")
@role_required("editor")
def feeds_fetch_all():
    """Fetch every feed now, in the background."""
    feeds = article_service.ensure_configured_feeds()
    feed_polls.poll_in_background([feed.id for feed in feeds if not feed.paused])
    audit.record("feed.fetch_all", "feeds", feeds=len(feeds))
    flash(_("The feeds are being fetched. Reload the page in a moment to see the results."), "success")
    return redirect(url_for("admin.feeds"), 303)


def _refresh_draft() -> None:
    draft = digests.current_draft()
    if draft is not None:
        digests.refresh_draft(draft)


def _flash_result(results) -> None:
    added = sum(r.added for r in results)
    updated = sum(r.updated for r in results)
    failed = [r for r in results if not r.ok]
    flash(_("Fetched: %(added)d new and %(updated)d updated articles.", added=added, updated=updated),
          "success")
    for result in failed:
        flash(_("%(url)s could not be fetched: %(error)s", url=result.url, error=feed_problem(result.error)),
              "error")
