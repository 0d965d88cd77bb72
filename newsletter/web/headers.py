"""Security headers on every response, by Flask-Talisman: a CSP with default-src 'self' and no
inline script, frame-ancestors 'self' (with X-Frame-Options for old browsers), nosniff, a
Referrer-Policy, and HSTS on https when PUBLIC_URL is https.

Not Talisman's https redirect: TLS ends at the reverse proxy, and a redirect here would loop
behind one that does not say so. A view with a page of its own kind (an email shown as a page,
the preview in its sandboxed frame) declares its policy with `@talisman(...)`.
"""

from __future__ import annotations

from flask import Flask
from flask_talisman import Talisman

# For `@talisman(...)` on views only: Talisman keeps its settings on the instance, so each app
# gets an instance of its own (init_app), and tests may build apps with different settings.
talisman = Talisman()

CSP = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self' data:",
    "object-src": "'none'",
    "base-uri": "'self'",
    "form-action": "'self'",
    "frame-ancestors": "'self'",
}

# An email as a web page (the archive): its inline styles and its images from the articles'
# sites, never a script; only this site may frame it.
EMAIL_PAGE_CSP = {
    "default-src": "'none'",
    "script-src": "'none'",
    "style-src": "'unsafe-inline'",
    "img-src": "https: http: data:",
    "object-src": "'none'",
    "base-uri": "'none'",
    "form-action": "'none'",
    "frame-ancestors": "'self'",
}


def init_app(app: Flask) -> None:
    https = app.config["PUBLIC_URL"].startswith("https://")
    app.extensions["talisman"] = Talisman(
        app,
        force_https=False,
        strict_transport_security=https,
        strict_transport_security_max_age=365 * 24 * 3600,
        strict_transport_security_include_subdomains=False,
        content_security_policy=CSP,
        frame_options="SAMEORIGIN",
        referrer_policy="same-origin",
        session_cookie_secure=bool(app.config.get("SESSION_COOKIE_SECURE")),
        session_cookie_http_only=True,
        session_cookie_samesite=app.config.get("SESSION_COOKIE_SAMESITE") or "Lax",
        x_xss_protection=False,  # obsolete; it can open holes in old browsers
        permissions_policy={"interest-cohort": "()"},
    )
