"""The hooks blueprint: webhooks that mail providers call (bounces, complaints).

No session, no cookies, no CSRF token: each request is authenticated by a secret in
the URL (BOUNCE_WEBHOOK_SECRET) or by its SNS signature.
"""

from flask import Blueprint

from newsletter.extensions import csrf

bp = Blueprint("hooks", __name__)
csrf.exempt(bp)

from newsletter.web.hooks import views  # noqa: E402, F401  (registers the routes)
