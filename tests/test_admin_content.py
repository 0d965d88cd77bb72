"""Admin content pages: articles, feeds, the coming digest, sends (test client, both databases)."""

from __future__ import annotations

import pytest
from content_helpers import XSS, add_article, add_subscribers, csrf, injected, log_in


def test_smoke_pages_render(app, client):
    log_in(client, app)
    with app.app_context():
        add_article(XSS)
        add_subscribers(3)
    for url in ["/admin/articles", "/admin/articles/new", "/admin/feeds", "/admin/digest", "/admin/digest/send",
                "/admin/sends", "/admin/digest/preview/sv.html", "/admin/digest/preview/en.txt"]:
        response = client.get(url)
        assert response.status_code == 200, (url, response.get_data(as_text=True)[:2000])
        assert not injected(response.get_data(as_text=True), ("admin-progress.js",)), url
