"""Admin accounts: create, authenticate, change password, deactivate; the first-run setup token.

Passwords are argon2id hashes (argon2-cffi). `Admin.session_version` is part of
the login session id (see admin/auth.py): bumping it ends every session of
that admin, which a password change does for all but the current one.
"""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask import current_app
from itsdangerous import BadData, URLSafeTimedSerializer
from sqlalchemy import func, select, update

from newsletter.engine.clock import utcnow
from newsletter.extensions import db
from newsletter.models import ADMIN_ROLES, Admin, ApiToken

SETUP_SALT = "newsletter.web.admin-setup"


class AccountError(ValueError):
    """An account operation that cannot be done; the message (English) says why."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def _hasher() -> PasswordHasher:
    return PasswordHasher(time_cost=current_app.config["ARGON2_TIME_COST"],
                          memory_cost=current_app.config["ARGON2_MEMORY_COST"])


def normalise_admin_email(raw: str) -> str:
    from email_validator import EmailNotValidError, validate_email  # see subscriptions.normalise_email

    try:
        return validate_email((raw or "").strip(), check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        raise AccountError("email", f"invalid email address: {exc}") from exc


def check_password_strength(password: str, email: str = "") -> None:
    minimum = current_app.config["ADMIN_PASSWORD_MIN_LENGTH"]
    if len(password or "") < minimum:
        raise AccountError("password_short", f"the password must be at least {minimum} characters")
    if email and password.strip().lower() == email.lower():
        raise AccountError("password_email", "the password must not be the email address")


def hash_password(password: str) -> str:
    return _hasher().hash(password)


def admin_by_email(email: str) -> Admin | None:
    return db.session.execute(
        select(Admin).where(Admin.email == (email or "").strip().lower())
    ).scalar_one_or_none()


def admin_count() -> int:
    return db.session.execute(select(func.count()).select_from(Admin)).scalar_one()


def create_admin(email: str, password: str, *, role: str = "admin", language: str | None = None) -> Admin:
    """A new active admin or editor; AccountError for a bad address, role, password or duplicate."""
    address = normalise_admin_email(email)
    if role not in ADMIN_ROLES:
        raise AccountError("role", f"unknown role {role!r} (admin or editor)")
    check_password_strength(password, address)
    if admin_by_email(address) is not None:
        raise AccountError("exists", f"{address} already has an account")
    admin = Admin(email=address, password_hash=hash_password(password), role=role,
                  language=language or current_app.config["DEFAULT_LOCALE"], active=True, session_version=0)
    db.session.add(admin)
    db.session.flush()
    return admin


# A hash to verify against when the address is unknown, so that a wrong address
# takes as long as a wrong password (no account enumeration by timing).
_DUMMY: dict[tuple[int, int], str] = {}


def _dummy_hash() -> str:
    key = (current_app.config["ARGON2_TIME_COST"], current_app.config["ARGON2_MEMORY_COST"])
    if key not in _DUMMY:
        _DUMMY[key] = hash_password("not a password of anyone")
    return _DUMMY[key]


def authenticate(email: str, password: str) -> Admin | None:
    """The active admin with this address and password, or None (whatever was wrong)."""
    admin = admin_by_email(email) if email else None
    hasher = _hasher()
    try:
        hasher.verify(admin.password_hash if admin else _dummy_hash(), password or "")
    except (VerificationError, InvalidHashError):
        return None
    if admin is None or not admin.active:
        return None
    if hasher.check_needs_rehash(admin.password_hash):  # the cost settings were raised
        admin.password_hash = hasher.hash(password)
    mark_logged_in(admin)
    return admin


def mark_logged_in(admin: Admin) -> None:
    """The admin's last login is now (a password login, or the set-up link's first session)."""
    admin.last_login_at = utcnow()
    db.session.flush()


def change_password(admin: Admin, current: str, new: str) -> None:
    """Set a new password (the current one must be right) and end every other session."""
    try:
        _hasher().verify(admin.password_hash, current or "")
    except (VerificationError, InvalidHashError) as exc:
        raise AccountError("wrong_password", "the current password is wrong") from exc
    check_password_strength(new, admin.email)
    admin.password_hash = hash_password(new)
    admin.session_version = (admin.session_version or 0) + 1
    db.session.flush()


def set_active(admin: Admin, active: bool) -> None:
    """Deactivate (ends its sessions) or reactivate an account; the last active admin stays."""
    if not active and admin.role == "admin" and admin.active:
        others = db.session.execute(
            select(func.count()).select_from(Admin).where(
                Admin.role == "admin", Admin.active.is_(True), Admin.id != admin.id)
        ).scalar_one()
        if not others:
            raise AccountError("last_admin", "the last active admin cannot be deactivated")
    admin.active = active
    admin.session_version = (admin.session_version or 0) + 1
    if not active:  # the API tokens this admin made stop with the account
        db.session.execute(update(ApiToken).where(ApiToken.created_by_id == admin.id,
                                                  ApiToken.revoked_at.is_(None)).values(revoked_at=utcnow()))
    db.session.flush()


def end_sessions(admin: Admin) -> None:
    """Log out: every session of this admin ends on the server (a copied cookie opens nothing)."""
    admin.session_version = (admin.session_version or 0) + 1
    db.session.flush()


def list_admins() -> list[Admin]:
    return list(db.session.execute(select(Admin).order_by(Admin.email)).scalars())


# --- first-run setup -----------------------------------------------------------------------
#
# The setup token is signed with SECRET_KEY (not stored), so every worker process
# accepts the token any of them logged. It is "one-time" because it works only
# while no admin exists: the first admin it creates ends it.


def _setup_serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt=SETUP_SALT)


def make_setup_token() -> str:
    import secrets

    return _setup_serializer().dumps({"nonce": secrets.token_hex(8)})


def setup_token_valid(token: str | None) -> bool:
    """True when `token` is a genuine, unexpired setup token and no admin exists yet."""
    if not token:
        return False
    try:
        _setup_serializer().loads(token, max_age=current_app.config["ADMIN_SETUP_TOKEN_MAX_AGE"])
    except BadData:
        return False
    return admin_count() == 0


def setup_url(token: str) -> str:
    return f"{current_app.config['PUBLIC_URL']}/admin/setup?token={token}"
