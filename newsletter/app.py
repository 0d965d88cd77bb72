"""The app factory: config, extensions, blueprints, CLI."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from config import Config
from newsletter.engine import logformat
from newsletter.extensions import MigrationsGroup, babel, csrf, db, limiter, login
from newsletter.i18n import compile_catalogs, select_locale, select_timezone

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def create_app(overrides: dict | None = None, config_class: type | None = None) -> Flask:
    """Build the app: config (`Config` unless another class is given), extensions, blueprints, CLI."""
    app = Flask(
        "newsletter",  # the package: its static/ folder, its name in logs
        template_folder=str(PROJECT_ROOT / "templates"),
        static_folder="static",
        instance_path=(overrides or {}).get("INSTANCE_PATH")
        or os.environ.get("INSTANCE_PATH")
        or str(PROJECT_ROOT / "instance"),
    )
    app.config.from_object(config_class or Config)
    if overrides:
        app.config.update(overrides)
    _instance_defaults(app)
    _template_cache(app)
    from newsletter.mail.compose import check_dkim_settings

    check_dkim_settings(app)  # a bad DKIM key stops the start with a clear error
    logformat.configure(app.config.get("LOG_LEVEL", "INFO"), app.config.get("LOG_FORMAT", "text"))
    if os.environ.get("PROXY_FIX"):  # behind a reverse proxy that sets X-Forwarded-*
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)  # type: ignore[method-assign]

    from newsletter.web import headers, limits

    limits.init_app(app)  # before the blueprints: their <int:…> routes use its converter
    headers.init_app(app)
    db.init_app(app)
    app.cli.add_command(MigrationsGroup())  # Flask-Migrate, imported when `flask db` runs
    csrf.init_app(app)
    limiter.init_app(app)
    babel.init_app(app, locale_selector=select_locale, timezone_selector=select_timezone,
                   default_translation_directories=str(Path(__file__).parent / "translations"))
    login.init_app(app)
    compile_catalogs()

    from newsletter import models  # noqa: F401  (registers the tables with the metadata)
    from newsletter.cli import register_cli
    from newsletter.i18n import register_template_helpers
    from newsletter.web import ops
    from newsletter.web.admin import bp as admin_bp
    from newsletter.web.api import bp as api_bp
    from newsletter.web.errors import register_error_pages
    from newsletter.web.hooks import bp as hooks_bp
    from newsletter.web.public import bp as public_bp

    register_error_pages(app)  # before the blueprints: the API wraps these with its JSON errors
    app.register_blueprint(public_bp)
    app.register_blueprint(admin_bp, url_prefix="/admin")
    app.register_blueprint(api_bp, url_prefix="/api/v1")
    app.register_blueprint(hooks_bp, url_prefix="/hooks")
    ops.init_app(app)
    register_template_helpers(app)
    register_cli(app)
    _wire_services(app)
    _one_transaction_per_unit_of_work(app)
    return app


def _one_transaction_per_unit_of_work(app: Flask) -> None:
    """A request, a command or a job commits once, at its end: the services only flush, so a
    change and its consent event, audit row and queued email are one transaction. A request
    answered with an error, or a command or job that raised an error, writes nothing."""
    from flask import has_request_context
    from sqlalchemy import event

    @app.after_request
    def commit_or_roll_back(response):
        if response.status_code < 400:
            db.session.commit()
        else:
            db.session.rollback()
        return response

    @app.teardown_appcontext
    def commit_the_rest(exc: BaseException | None) -> None:
        """A command, a job, a test's context: what it wrote (nothing if it only read). A
        command that exits with a status it chose (SystemExit) keeps its work; an error does not."""
        session = db.session
        wrote = session.info.get("wrote") or session.new or session.dirty or session.deleted
        if (exc is None or isinstance(exc, SystemExit)) and wrote and not has_request_context():
            session.commit()

    @event.listens_for(db.session, "after_flush")
    def remember_a_write(session, _context) -> None:
        session.info["wrote"] = True

    @event.listens_for(db.session, "after_commit")
    @event.listens_for(db.session, "after_rollback")
    def forget_the_write(session) -> None:
        session.info.pop("wrote", None)


def _wire_services(app: Flask) -> None:
    """What the domain packages reach through the app: the outbox's email renderers, the
    SQLite settings of the app's engine, and Celery for sends when BROKER_URL is set."""
    from newsletter.sqlite_tuning import tune_engine
    from newsletter.subscriptions import emails  # noqa: F401  (registers the subscription emails)

    with app.app_context():
        tune_engine(db.engine)
    from newsletter.extensions import AFTER_UPGRADE
    from newsletter.subscriptions.topics import seed_topics

    app.extensions[AFTER_UPGRADE] = [seed_topics]  # the configured topics: never seeded by a request
    if app.config.get("BROKER_URL"):
        from newsletter.tasks import celery_init_app

        celery_init_app(app)


def _template_cache(app: Flask) -> None:
    """Compiled templates kept in the instance folder: every process (a `digest send`, the
    scheduler, each web worker) would otherwise compile the digest's templates again before
    its first message (about 30 ms)."""
    from jinja2 import FileSystemBytecodeCache

    folder = Path(app.instance_path) / "template-cache"
    try:
        folder.mkdir(exist_ok=True)
    except OSError:
        return
    if os.access(folder, os.W_OK):
        app.jinja_env.bytecode_cache = FileSystemBytecodeCache(str(folder))


def _instance_defaults(app: Flask) -> None:
    """Defaults that live in the instance folder: database, outbox, a generated SECRET_KEY."""
    instance = Path(app.instance_path)
    instance.mkdir(parents=True, exist_ok=True)
    if not app.config.get("SQLALCHEMY_DATABASE_URI"):
        app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{instance / 'newsletter.db'}"
    uri = app.config["SQLALCHEMY_DATABASE_URI"]
    if uri.startswith("postgres://"):  # the old Heroku-style scheme
        uri = "postgresql://" + uri[len("postgres://"):]
    if uri.startswith("postgresql://"):  # psycopg 3 is the driver we ship
        uri = "postgresql+psycopg://" + uri[len("postgresql://"):]
    app.config["SQLALCHEMY_DATABASE_URI"] = uri
    if uri.startswith("sqlite"):
        # Several processes (web, scheduler, a manual `digest send`) share the file: wait for
        # a write lock instead of failing at once with "database is locked".
        options = dict(app.config.get("SQLALCHEMY_ENGINE_OPTIONS") or {})
        options["connect_args"] = {"timeout": 30, **options.get("connect_args", {})}
        app.config["SQLALCHEMY_ENGINE_OPTIONS"] = options
    if not app.config.get("MAIL_URL"):
        app.config["MAIL_URL"] = f"outbox://{instance / 'outbox'}"
    if not app.config.get("SECRET_KEY"):
        key_file = instance / "secret_key"
        if not key_file.exists():
            # Written once and kept, so tokens in sent emails stay valid across restarts.
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(48))
        app.config["SECRET_KEY"] = key_file.read_text().strip()
