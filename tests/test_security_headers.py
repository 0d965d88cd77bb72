"""Security headers on every page: CSP (default-src 'self', no inline script), frame-ancestors,
nosniff, Referrer-Policy; HSTS only with an https PUBLIC_URL."""

from __future__ import annotations

import pytest
from admin_helpers import logged_in

PUBLIC_PAGES = ["/", "/subscribe", "/privacy", "/archive", "/archive/1", "/healthz", "/confirm/bad",
                "/unsubscribe/bad", "/preferences/bad", "/subscribe/start", "/no-such-page",
                "/admin/login", "/api/v1/openapi.json", "/static/style.css"]
ADMIN_PAGES = ["/admin/", "/admin/subscribers", "/admin/articles", "/admin/feeds", "/admin/digest",
               "/admin/sends", "/admin/api-tokens", "/admin/admins", "/admin/audit", "/admin/account",
               "/admin/subscribers/import", "/admin/articles/new", "/admin/articles/2147483647"]


def _csp(response) -> dict[str, str]:
    policy = response.headers.get("Content-Security-Policy", "")
    parts = (part.strip().split(" ", 1) for part in policy.split(";") if part.strip())
    return {part[0]: part[1] if len(part) > 1 else "" for part in parts}


def _check(response, path: str) -> None:
    csp = _csp(response)
    assert csp.get("default-src") in ("'self'", "'none'"), (path, csp)
    assert "unsafe-inline" not in csp.get("script-src", csp["default-src"]), path
    assert csp.get("frame-ancestors") == "'self'", path
    assert response.headers["X-Content-Type-Options"] == "nosniff", path
    assert response.headers["Referrer-Policy"] == "same-origin", path
    assert response.headers.get("X-Frame-Options") == "SAMEORIGIN", path


def test_every_public_page_has_the_headers(app, client):
    for path in PUBLIC_PAGES:
        response = client.get(path)
        assert response.status_code < 500, path
        _check(response, path)
        assert "Strict-Transport-Security" not in response.headers  # http PUBLIC_URL
        response.close()  # a static file's handle
    post = client.post("/subscribe", json={"email": "x"}, headers={"Accept": "application/json"})
    _check(post, "POST /subscribe")


def test_every_admin_page_has_the_headers(app):
    client = logged_in(app, "admin")
    for path in ADMIN_PAGES:
        response = client.get(path)
        assert response.status_code in (200, 404), (path, response.status_code)
        _check(response, path)
        assert _csp(response)["script-src"] == "'self'", path
        assert response.headers["Cache-Control"] == "no-store"


def test_pages_that_are_emails_allow_their_styles_but_never_a_script(app):
    client = logged_in(app, "editor")
    preview = client.get("/admin/digest/preview/sv.html")
    csp = _csp(preview)
    assert "sandbox" in csp and csp["default-src"] == "'none'" and csp["frame-ancestors"] == "'self'"
    assert "script-src" not in csp or csp["script-src"] == "'none'"


@pytest.mark.parametrize("public_url", ["https://nyheter.example.se", "http://nyheter.example.se"])
def test_hsts_with_an_https_public_url(make_app, public_url):
    app = make_app(PUBLIC_URL=public_url)
    client = app.test_client()
    secure = client.get("/", base_url="https://nyheter.example.se")
    proxied = client.get("/", headers={"X-Forwarded-Proto": "https"})
    for response in (secure, proxied):
        if public_url.startswith("https"):
            assert response.headers["Strict-Transport-Security"].startswith("max-age=31536000")
        else:
            assert "Strict-Transport-Security" not in response.headers
    assert client.get("/").status_code == 200  # no redirect to https: the proxy's job
