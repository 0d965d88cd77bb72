"""The JSON API under /api/v1: bearer tokens, subscribers, articles, feeds, digests, its OpenAPI document.

CSRF-exempt: a request is authenticated by its Authorization header, never by a cookie,
so a cross-site form cannot act with anyone's rights. Rate-limited per token (API_RATE_LIMIT).
"""

from flask import Blueprint

from newsletter.extensions import csrf, limiter

bp = Blueprint("api", __name__)

from newsletter.web.api import articles, auth, digests, feeds, openapi, subscribers  # noqa: E402,F401  (register the views)
from newsletter.web.api.auth import rate_limit, rate_limit_key  # noqa: E402
from newsletter.web.api.errors import register_error_handlers  # noqa: E402

csrf.exempt(bp)
limiter.limit(rate_limit, key_func=rate_limit_key, scope="api")(bp)
bp.record_once(lambda state: register_error_handlers(state.app))
