"""Login, logout, first-run setup, and the access rules of the admin area.

- Flask-Login keeps "<admin id>:<session_version>" in the session; a password
  change bumps the version, so every other session of that admin ends.
- `role_required("editor")` lets either role in, `role_required("admin")` only admins.
- Every admin page needs a login, also one that forgets the decorator
  (the blueprint's before_request), except the login and setup pages.
"""

from __future__ import annotations

import logging
from functools import wraps
from urllib.parse import urlsplit

from flask import (
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_login import current_user, login_user, logout_user
from flask_wtf.csrf import CSRFError

from newsletter.admins import accounts, audit
from newsletter.extensions import client_ip, db, limiter, login
from newsletter.models import Admin
from newsletter.web.admin import bp
from newsletter.web.admin.forms import LoginForm, SetupForm

log = logging.getLogger(__name__)

OPEN_ENDPOINTS = {"admin.login", "admin.setup", "admin.static"}

login.login_view = "admin.login"
login.login_message = _l("Log in to see this page.")
login.login_message_category = "info"


@login.user_loader
def load_admin(session_id: str) -> Admin | None:
    """The admin of a session id "<id>:<version>", if active and the version is current."""
    try:
        admin_id, version = (int(part) for part in session_id.split(":", 1))
    except (ValueError, AttributeError):
        return None
    admin = db.session.get(Admin, admin_id)
    if admin is None or not admin.active or (admin.session_version or 0) != version:
        return None
    return admin


@login.unauthorized_handler
def unauthorized():
    """Admin pages send to the login page (nothing else); anything else gets a bare 401."""
    if request.blueprint == "admin":
        if request.method == "GET" and accounts.admin_count():  # before set-up, no login to ask for
            flash(login.login_message, "info")
            return redirect(url_for("admin.login", next=request.full_path.rstrip("?")))
        return redirect(url_for("admin.login"))
    abort(401)


def role_required(role: str):
    """Decorator: a logged-in admin (role "editor" = either role; "admin" = admins only), else 403."""
    if role not in ("admin", "editor"):
        raise ValueError(f"unknown role {role!r}")

    def decorator(view):
        @wraps(view)
        def wrapped(*args, **kwargs):
            if not current_user.is_authenticated:
                return login.unauthorized()
            if role == "admin" and current_user.role != "admin":
                abort(403)
            return view(*args, **kwargs)

        return wrapped

    return decorator


@bp.before_request
def require_login():
    if request.endpoint not in OPEN_ENDPOINTS and not current_user.is_authenticated:
        return login.unauthorized()
    return None


@bp.before_request
def refuse_nul_bytes():
    """A NUL in any field is never typed by a person, and PostgreSQL refuses it in text: 400."""
    for values in (request.args, request.form):
        if any("\x00" in key or "\x00" in value for key, value in values.items(multi=True)):
            abort(400)


@bp.after_request
def admin_headers(response):
    response.headers.setdefault("Cache-Control", "no-store")  # the other headers: web/headers.py
    return response


# --- errors ------------------------------------------------------------------------------


@bp.errorhandler(400)
def bad_request(error):
    return render_template("admin/error.html", title=_("Bad request"),
                           message=_("The request could not be understood. Nothing was changed.")), 400


@bp.errorhandler(403)
def forbidden(error):
    return render_template("admin/error.html", title=_("Not allowed"),
                           message=_("Your role does not allow this. Ask an admin.")), 403


@bp.errorhandler(404)
def not_found(error):
    return render_template("admin/error.html", title=_("Not found"),
                           message=_("There is nothing here.")), 404


@bp.errorhandler(429)
def too_many(error):
    return render_template("admin/error.html", title=_("Too many attempts"),
                           message=_("Too many attempts. Wait a while and try again.")), 429


@bp.errorhandler(CSRFError)
def csrf_failed(error):
    return render_template("admin/error.html", title=_("The form has expired"),
                           message=_("The form had expired or came from another site. Nothing was "
                                     "changed. Go back, reload the page and try again.")), 400


# --- login and logout ----------------------------------------------------------------------


def _safe_next(target: str | None) -> str:
    """Only a path inside the admin area: never an open redirect."""
    if target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc and target.startswith("/admin") and "\\" not in target:
            return target
    return url_for("admin.dashboard")


def _posted_email_key() -> str:
    """The address tried, from this client: failures from elsewhere never lock the real admin out."""
    return f'{(request.form.get("email") or "").strip().lower()[:320]}|{client_ip()}'


def _failed(response) -> bool:
    """Only failed attempts count against the login limits (an office behind one IP logs in fine)."""
    return response.status_code != 302


def _login_rate() -> str:
    return current_app.config["ADMIN_LOGIN_RATE"]


def _login_rate_per_address() -> str:
    return current_app.config["ADMIN_LOGIN_RATE_PER_ADDRESS"]


_setup_logged: dict[int, float] = {}  # app id -> when a link was last logged


def log_setup_link(app=None) -> str:
    """Log a setup link (once per process and app, again when half its validity has passed)."""
    import time

    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    url = accounts.setup_url(accounts.make_setup_token())
    max_age = app.config["ADMIN_SETUP_TOKEN_MAX_AGE"]
    last = _setup_logged.get(id(app))
    if last is None or time.monotonic() - last > max_age / 2:
        _setup_logged[id(app)] = time.monotonic()
        log.warning("No admin exists yet. Create the first one at: %s  (valid %s h, or use "
                    "`flask --app wsgi admin create EMAIL`)", url, max_age // 3600)
    return url


def _serving() -> bool:
    """True in a web server (gunicorn, `flask run`), not in other `flask` commands."""
    import click

    ctx = click.get_current_context(silent=True)
    return ctx is None or ctx.info_name == "run"


@bp.record_once
def _announce_setup(state) -> None:
    """At start, when no admin exists, the server logs a one-time setup link."""
    app = state.app
    if app.testing or not _serving():
        return
    try:
        with app.app_context():
            if accounts.admin_count() == 0:
                log_setup_link(app)
    except Exception:  # noqa: BLE001  (no tables yet, e.g. before `db upgrade`)
        log.debug("no admin table yet: no setup link", exc_info=True)


@bp.route("/login", methods=["GET", "POST"], endpoint="login")
@limiter.limit(_login_rate, methods=["POST"], scope="admin-login-ip", deduct_when=_failed)
@limiter.limit(_login_rate_per_address, key_func=_posted_email_key, methods=["POST"],
               scope="admin-login-address", deduct_when=_failed)
def login_page():
    """Log in with email and password; one error message whatever was wrong."""
    if current_user.is_authenticated:
        return redirect(_safe_next(request.args.get("next")))
    if accounts.admin_count() == 0:
        if not current_app.testing:
            log_setup_link()
        return render_template("admin/no_admin.html")
    form = LoginForm()
    if request.method == "GET":
        form.next.data = request.args.get("next", "")
    if form.validate_on_submit():
        admin = accounts.authenticate(form.email.data, form.password.data)
        if admin is not None:
            session.clear()  # a fresh session: nothing from before the login survives
            login_user(admin)
            audit.record("login", admin.email, actor=admin)
            return redirect(_safe_next(form.next.data))
        known = accounts.admin_by_email(form.email.data)
        if known is not None:
            audit.record("login_failed", known.email, actor="anonymous")
            db.session.commit()  # kept although the answer is 401 (which rolls a request back)
        flash(_("Wrong email address or password."), "error")
        return render_template("admin/login.html", form=form), 401
    return render_template("admin/login.html", form=form), (400 if form.errors else 200)


@bp.post("/logout")
def logout():
    """Log out (a POST with the CSRF token, so no other site can log anyone out)."""
    if current_user.is_authenticated:
        audit.record("logout", current_user.email)
        accounts.end_sessions(current_user)  # a copy of the session cookie opens nothing now
    logout_user()
    session.clear()
    flash(_("You have logged out."), "info")
    return redirect(url_for("admin.login"))


# --- first-run setup --------------------------------------------------------------------------


@bp.route("/setup", methods=["GET", "POST"])
@limiter.limit(_login_rate, methods=["POST"], scope="admin-setup-ip")
def setup():
    """Create the first admin: only with the logged setup token, only while no admin exists."""
    form = SetupForm()
    token = request.values.get("token") or form.token.data
    if not accounts.setup_token_valid(token):
        abort(404)
    if request.method == "GET":
        form.token.data = token
    if form.validate_on_submit():
        try:
            admin = accounts.create_admin(form.email.data, form.password.data, role="admin")
        except accounts.AccountError as exc:
            field = form.email if exc.code in ("email", "exists") else form.password
            field.errors = [*field.errors, _account_error(exc)]
        else:
            session.clear()
            login_user(admin)
            accounts.mark_logged_in(admin)
            audit.record("admin_setup", admin.email, actor=admin)
            flash(_("Welcome! Your admin account is ready."), "info")
            return redirect(url_for("admin.dashboard"))
    return render_template("admin/setup.html", form=form), (400 if form.errors else 200)


def _account_error(exc: accounts.AccountError) -> str:
    """A translated message for an AccountError."""
    messages = {
        "email": _("Enter a valid email address."),
        "exists": _("That address already has an account."),
        "role": _("Choose a role."),
        "password_short": _("The password must be at least %(num)s characters.",
                            num=current_app.config["ADMIN_PASSWORD_MIN_LENGTH"]),
        "password_email": _("The password must not be the email address."),
        "wrong_password": _("The current password is wrong."),
        "last_admin": _("The last active admin cannot be deactivated."),
    }
    return messages.get(exc.code, str(exc))
