"""Configuration from the environment (12-factor), with a `.env` file honoured.

Every setting of the contract table in DESIGN.md is here. `create_app` fills in
the two defaults that depend on the instance folder (SECRET_KEY, DATABASE_URL,
and the outbox directory of MAIL_URL).
"""

from __future__ import annotations

import os

from dotenv import load_dotenv

load_dotenv()


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def _int(name: str, default: int) -> int:
    return int(_env(name, str(default)))


def _float(name: str, default: float) -> float:
    return float(_env(name, str(default)))


def _bool(name: str, default: bool = False) -> bool:
    return _env(name, "1" if default else "0").lower() in {"1", "true", "yes", "on"}


def _list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in _env(name, default).split(",") if item.strip()]


class Config:
    """Settings read from the environment once, when the class is created."""

    SECRET_KEY: str | None = _env("SECRET_KEY") or None
    SQLALCHEMY_DATABASE_URI: str | None = _env("DATABASE_URL") or None
    SQLALCHEMY_ENGINE_OPTIONS: dict = {"pool_pre_ping": True}
    SITE_NAME: str = _env("SITE_NAME")  # shown in page headers and emails; default "Nyhetsbrev"
    PUBLIC_URL: str = _env("PUBLIC_URL", "http://127.0.0.1:5000").rstrip("/")
    MAIL_URL: str | None = _env("MAIL_URL") or None  # default: outbox://<instance>/outbox
    MAIL_FROM: str = _env("MAIL_FROM", "Nyhetsbrev <nyhetsbrev@localhost>")
    LIST_ID: str = _env("LIST_ID")  # default derived from MAIL_FROM's domain
    UNSUBSCRIBE_MAILTO: str = _env("UNSUBSCRIBE_MAILTO")
    FEED_URLS: list[str] = _list("FEED_URLS")
    DIGEST_SCHEDULE: str = _env("DIGEST_SCHEDULE", "0 7 * * mon")
    DIGEST_MAX_AGE_DAYS: int = _int("DIGEST_MAX_AGE_DAYS", 7)
    DIGEST_REQUIRE_APPROVAL: bool = _bool("DIGEST_REQUIRE_APPROVAL")
    FEED_POLL_MINUTES: int = _int("FEED_POLL_MINUTES", 60)  # 0 = poll only before each digest
    # Limits of one feed's poll: bytes of body read, entries taken (the newest), seconds in all.
    FEED_MAX_BYTES: int = _int("FEED_MAX_BYTES", 5 * 1024 * 1024)
    FEED_MAX_ITEMS: int = _int("FEED_MAX_ITEMS", 100)
    FEED_TIMEOUT_SECONDS: float = _float("FEED_TIMEOUT_SECONDS", 20)
    # Address ranges (CIDR) that feeds added by editors may reach besides public addresses;
    # the operator's FEED_URLS are trusted as given.
    FEED_ALLOW_NETWORKS: list[str] = _list("FEED_ALLOW_NETWORKS")
    # Articles in one digest at most (the oldest first; the rest wait for the next one).
    DIGEST_MAX_ARTICLES: int = _int("DIGEST_MAX_ARTICLES", 100)
    # `digest send`, `digest preview` and the admin's preview and "send now" poll the feeds first,
    # for at most this many seconds in all; a feed not reached in time is reported, not waited for.
    DIGEST_FETCH_SECONDS: int = _int("DIGEST_FETCH_SECONDS", 30)
    # At most this many articles a section in the email (0: all); the rest are behind an
    # "N more on the website" link to the digest's archive page, so a busy week is not clipped.
    DIGEST_SECTION_MAX: int = _int("DIGEST_SECTION_MAX", 8)
    # A weekly run missed (scheduler down) is still made if the scheduler is back within this;
    # later, it is skipped and the articles go into the next week's digest.
    DIGEST_MISFIRE_GRACE_MINUTES: int = _int("DIGEST_MISFIRE_GRACE_MINUTES", 360)
    TIMEZONE: str = _env("TIMEZONE", "Europe/Stockholm")
    DEFAULT_LOCALE: str = _env("DEFAULT_LOCALE", "sv")
    LANGUAGES: tuple[str, ...] = ("sv", "en")
    # slug=Swedish name|English name, in the order they are shown.
    TOPICS: list[str] = _list(
        "TOPICS",
        "nyheter=Nyheter|News,pressmeddelanden=Pressmeddelanden|Press releases,"
        "blogg=Blogg|Blog",
    )
    # Feed category (case-insensitive) = topic slug; unknown categories go to DEFAULT_TOPIC.
    TOPIC_CATEGORIES: list[str] = _list(
        "TOPIC_CATEGORIES",
        "nyheter=nyheter,krönikor=nyheter,pressmeddelanden=pressmeddelanden,"
        "pressmeddelande=pressmeddelanden,blogg=blogg",
    )
    DEFAULT_TOPIC: str = _env("DEFAULT_TOPIC", "nyheter")
    CONSENT_VERSION: str = _env("CONSENT_VERSION", "2026-11-01")
    CONFIRM_MAX_AGE: int = _int("CONFIRM_MAX_AGE", 7 * 24 * 3600)  # seconds
    CONFIRM_RESEND_MINUTES: int = _int("CONFIRM_RESEND_MINUTES", 15)
    # Confirmation emails to one mailbox (lower-cased, +tag removed) in 24 hours, however spelt.
    CONFIRM_MAX_PER_MAILBOX: int = _int("CONFIRM_MAX_PER_MAILBOX", 3)
    SIGNUP_MIN_SECONDS: float = _float("SIGNUP_MIN_SECONDS", 2.0)
    # A signup is answered no sooner than this after it came in, whatever the address's state
    # (its time would tell the state otherwise); above the slowest signup's own time.
    SIGNUP_RESPONSE_SECONDS: float = _float("SIGNUP_RESPONSE_SECONDS", 0.1)
    SIGNUP_RATE_PER_IP: str = _env("SIGNUP_RATE_PER_IP", "10 per minute;60 per hour")
    SIGNUP_RATE_PER_ADDRESS: str = _env("SIGNUP_RATE_PER_ADDRESS", "3 per hour;10 per day")
    ALLOWED_EMBED_ORIGINS: list[str] = _list("ALLOWED_EMBED_ORIGINS")
    BROKER_URL: str = _env("BROKER_URL")
    RATELIMIT_STORAGE_URI: str = _env("RATELIMIT_STORAGE_URI", "memory://")
    RATELIMIT_HEADERS_ENABLED: bool = True
    SEND_RATE: float = _float("SEND_RATE", 0)  # messages per second; 0 = unlimited
    SEND_CONNECTIONS: int = _int("SEND_CONNECTIONS", 4)
    SEND_BATCH_SIZE: int = _int("SEND_BATCH_SIZE", 500)  # ledger rows per Celery task
    SEND_MAX_ATTEMPTS: int = _int("SEND_MAX_ATTEMPTS", 5)
    SEND_MAX_ERROR_RATE: float = _float("SEND_MAX_ERROR_RATE", 0.2)
    SEND_WINDOW: str = _env("SEND_WINDOW")  # e.g. "07:00-21:00" in TIMEZONE; empty = any time
    # --- delivery: the send engine; see newsletter/delivery/ and newsletter/engine/
    # Sending processes, each with its share of SEND_CONNECTIONS: the one that sends, plus
    # send workers (newsletter/send_worker.py, ~25-40 MB each: no Flask, no SQLAlchemy) for SMTP;
    # 0 = one per CPU for large sends, 1 = only the process that sends.
    SEND_PROCESSES: int = _int("SEND_PROCESSES", 0)
    # Messages per connection that may be out without the ledger knowing: the most that a
    # kill -9 can duplicate is SEND_INFLIGHT x SEND_CONNECTIONS (a clean stop duplicates none).
    # Each chunk costs a transaction: 50 sends 100,000 a sixth faster than 20 (bench/README.md).
    SEND_INFLIGHT: int = _int("SEND_INFLIGHT", 50)
    SEND_RETRY_SECONDS: float = _float("SEND_RETRY_SECONDS", 60)  # back-off: x2 per attempt
    SEND_RETRY_MAX_SECONDS: float = _float("SEND_RETRY_MAX_SECONDS", 3600)
    SEND_ERROR_WINDOW: int = _int("SEND_ERROR_WINDOW", 200)  # SEND_MAX_ERROR_RATE of the last N
    SEND_POLL_SECONDS: float = _float("SEND_POLL_SECONDS", 0.5)  # how soon pause/cancel is obeyed
    # Claims of a sender on another host that show no change for this long are taken over.
    SEND_CLAIM_TIMEOUT: int = _int("SEND_CLAIM_TIMEOUT", 600)
    # Celery (BROKER_URL): a batch a dead worker took is delivered again after this (Redis).
    CELERY_VISIBILITY_TIMEOUT: int = _int("CELERY_VISIBILITY_TIMEOUT", 3600)
    CELERY_QUEUE: str = _env("CELERY_QUEUE", "newsletter")  # workers: celery … worker -Q <this>
    # `digest send` with BROKER_URL: fail when no worker has started the send within this.
    SEND_PICKUP_SECONDS: float = _float("SEND_PICKUP_SECONDS", 120)
    DKIM_SELECTOR: str = _env("DKIM_SELECTOR")
    DKIM_PRIVATE_KEY: str = _env("DKIM_PRIVATE_KEY")  # PEM text or a path to it
    # A second signature, ed25519-sha256 (RFC 8463), beside the RSA one: both or neither.
    DKIM_ED25519_SELECTOR: str = _env("DKIM_ED25519_SELECTOR")
    DKIM_ED25519_PRIVATE_KEY: str = _env("DKIM_ED25519_PRIVATE_KEY")  # PEM text or a path to it
    BOUNCE_WEBHOOK_SECRET: str = _env("BOUNCE_WEBHOOK_SECRET")
    # --- bounces, complaints and DKIM ---
    DKIM_DOMAIN: str = _env("DKIM_DOMAIN")  # d= of the signature; default: the domain of MAIL_FROM
    # SNS topics whose notifications /hooks/ses accepts (comma-separated ARNs). Without it, only
    # the secret form /hooks/ses/<BOUNCE_WEBHOOK_SECRET> is open: any AWS account can make SNS
    # sign a message, so the signature alone does not say the message is about *our* mail.
    SNS_TOPIC_ARNS: list[str] = _list("SNS_TOPIC_ARNS")
    # Host (regular expression, whole name) that SigningCertURL and SubscribeURL must be on (https).
    SNS_CERT_HOST_PATTERN: str = _env("SNS_CERT_HOST_PATTERN", r"sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?")
    SNS_CA_BUNDLE: str = _env("SNS_CA_BUNDLE")  # CA file for fetching those URLs; empty = the system's
    SNS_MAX_AGE_SECONDS: int = _int("SNS_MAX_AGE_SECONDS", 24 * 3600)  # older messages refused; 0 = any
    # VERP: bulk mail leaves with the envelope sender local+<signed token>@domain of this address,
    # so a bounce names its send and recipient. Empty: MAIL_FROM's address, as before.
    BOUNCE_ADDRESS: str = _env("BOUNCE_ADDRESS")
    # The mailbox bounces, complaints and mailto unsubscribes arrive in: imaps://user:pass@host/INBOX,
    # imap://…, pop3s://…, pop3://… (user and password URL-encoded). Empty: not polled.
    BOUNCE_MAILBOX_URL: str = _env("BOUNCE_MAILBOX_URL")
    BOUNCE_MAILBOX_MINUTES: float = _float("BOUNCE_MAILBOX_MINUTES", 5)  # how often the scheduler reads it
    # Mail that is sent outside the request (confirmations): a thread in-process by default.
    MAIL_QUEUE_THREAD: bool = _bool("MAIL_QUEUE_THREAD", True)
    # The queue worker also wakes this often on its own, to retry what failed earlier.
    MAIL_QUEUE_POLL_SECONDS: float = _float("MAIL_QUEUE_POLL_SECONDS", 30)
    # Temporary (4xx) refusals of one message before it is given up; a dead server never gives up.
    MAIL_QUEUE_MAX_ATTEMPTS: int = _int("MAIL_QUEUE_MAX_ATTEMPTS", 10)
    # --- JSON API (/api/v1) ---
    API_RATE_LIMIT: str = _env("API_RATE_LIMIT", "300 per minute")  # per token (Flask-Limiter syntax)
    API_MAX_BODY_BYTES: int = _int("API_MAX_BODY_BYTES", 1024 * 1024)  # larger bodies get a 413
    # Request bodies: any route (413 before the body is read); public pages and the embedded form
    # less; the admin's CSV import more (the file is spooled to disk and read line by line).
    MAX_CONTENT_LENGTH: int = _int("MAX_CONTENT_LENGTH", 1024 * 1024)
    PUBLIC_MAX_BODY_BYTES: int = _int("PUBLIC_MAX_BODY_BYTES", 64 * 1024)
    IMPORT_MAX_BYTES: int = _int("IMPORT_MAX_BYTES", 50 * 1024 * 1024)
    SESSION_COOKIE_HTTPONLY: bool = True
    SESSION_COOKIE_SAMESITE: str = "Lax"
    SESSION_COOKIE_SECURE: bool = PUBLIC_URL.startswith("https://")
    REMEMBER_COOKIE_SECURE: bool = PUBLIC_URL.startswith("https://")
    REMEMBER_COOKIE_HTTPONLY: bool = True
    WTF_CSRF_TIME_LIMIT: int | None = None  # a subscribe page left open all day still works
    BABEL_DEFAULT_TIMEZONE: str = TIMEZONE
    # --- admin area ---
    ADMIN_PASSWORD_MIN_LENGTH: int = _int("ADMIN_PASSWORD_MIN_LENGTH", 12)
    # Failed login attempts (POST /admin/login) per client IP, and per address tried from one IP.
    ADMIN_LOGIN_RATE: str = _env("ADMIN_LOGIN_RATE", "10 per minute;50 per hour")
    ADMIN_LOGIN_RATE_PER_ADDRESS: str = _env("ADMIN_LOGIN_RATE_PER_ADDRESS", "10 per hour")
    ADMIN_SETUP_TOKEN_MAX_AGE: int = _int("ADMIN_SETUP_TOKEN_MAX_AGE", 24 * 3600)  # seconds
    ADMIN_PAGE_SIZE: int = _int("ADMIN_PAGE_SIZE", 50)
    # The admin list counts exactly up to this many matches; beyond, it shows an estimate.
    ADMIN_COUNT_EXACT_LIMIT: int = _int("ADMIN_COUNT_EXACT_LIMIT", 10000)
    # The dashboard's counts and weekly trend (a scan of the list) are reused for this long.
    ADMIN_STATS_CACHE_SECONDS: float = _float("ADMIN_STATS_CACHE_SECONDS", 60)
    # argon2id cost of admin password hashes (argon2-cffi's defaults: RFC 9106 low-memory).
    ARGON2_TIME_COST: int = _int("ARGON2_TIME_COST", 3)
    ARGON2_MEMORY_COST: int = _int("ARGON2_MEMORY_COST", 65536)  # KiB
    LOG_LEVEL: str = _env("LOG_LEVEL", "INFO")
    # --- privacy: retention (days; 0 = keep) and statistics without tracking ---
    # A pending address that never confirmed is deleted (an anonymous ledger trace stays).
    RETENTION_PENDING_DAYS: int = _int("RETENTION_PENDING_DAYS", 30)
    # Unsubscribed, bounced and complained people are reduced to a suppression entry (a keyed
    # hash) after a year: long enough to answer a question about a withdrawal or a complaint.
    RETENTION_INACTIVE_DAYS: int = _int("RETENTION_INACTIVE_DAYS", 365)
    # Per-recipient delivery rows are rolled up into per-send totals after 90 days: long enough
    # to look into a send's bounces and complaints, short enough not to grow without end.
    RETENTION_DELIVERIES_DAYS: int = _int("RETENTION_DELIVERIES_DAYS", 90)
    RETENTION_BATCH_SIZE: int = _int("RETENTION_BATCH_SIZE", 5000)  # rows per purge transaction
    # Count clicks per article through a signed /r/… redirect that carries no reader identifier.
    STATS_CLICKS: bool = _bool("STATS_CLICKS")
    # --- what the operator sees (newsletter/monitoring) ---
    LOG_FORMAT: str = _env("LOG_FORMAT", "text")  # "json": one JSON object per line
    # The dashboard and /readyz call the scheduler stale after this long without a heartbeat.
    SCHEDULER_STALE_SECONDS: int = _int("SCHEDULER_STALE_SECONDS", 180)
    # The admins get one email when it has been gone this long, and one when it is back.
    SCHEDULER_ALERT_MINUTES: int = _int("SCHEDULER_ALERT_MINUTES", 15)
    READY_DB_DEADLINE_SECONDS: float = _float("READY_DB_DEADLINE_SECONDS", 2.0)
    READY_MAIL_QUEUE_MAX_AGE: int = _int("READY_MAIL_QUEUE_MAX_AGE", 900)  # seconds
    METRICS_TOKEN: str = _env("METRICS_TOKEN")  # bearer token of /metrics; empty = no /metrics


class TestConfig(Config):
    """Settings for the test suite: fast, deterministic, no background threads."""

    TESTING = True
    SECRET_KEY = "test-secret-key"
    PUBLIC_URL = "http://newsletter.test"
    MAIL_URL = "memory://"
    MAIL_FROM = "Föreningen Norrsken <nyhetsbrev@norrsken.example>"
    SIGNUP_MIN_SECONDS = 0.0
    SIGNUP_RESPONSE_SECONDS = 0.0  # the timing tests and bench/signups_timing.py set their own
    RATELIMIT_ENABLED = True
    RATELIMIT_STORAGE_URI = "memory://"
    MAIL_QUEUE_THREAD = False
    FEED_URLS: list[str] = []
    FEED_ALLOW_NETWORKS = ["127.0.0.0/8"]  # the tests serve their feeds on loopback
    BROKER_URL = ""
    SEND_PROCESSES = 1  # delivery: tests fork only where they say so
    ADMIN_STATS_CACHE_SECONDS = 0.0  # every page shows what the test just changed
    SESSION_COOKIE_SECURE = False
    REMEMBER_COOKIE_SECURE = False
    ARGON2_TIME_COST = 1  # fast hashes: the tests log in many times
    ARGON2_MEMORY_COST = 1024
