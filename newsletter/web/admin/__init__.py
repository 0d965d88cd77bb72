"""The admin blueprint (/admin): login, dashboard, subscribers, and the pages of other areas.

Every module in this package is imported when the blueprint is created, so a new
page is a new module (e.g. `articles.py`) that does `from . import bp` and
registers its views: no edit here is needed. Pages extend
templates/admin/base.html (`{% block content %}`) and are protected with
`auth.role_required("editor")` (either role) or `role_required("admin")`.

The navigation (NAV below) shows an item only once its endpoint exists. Endpoint
names agreed with the other areas: admin.articles, admin.feeds, admin.digest,
admin.sends, admin.api_tokens.
"""

from __future__ import annotations

import importlib
import pkgutil

from flask import Blueprint, request, url_for
from flask_babel import lazy_gettext as _l

bp = Blueprint("admin", __name__)

# (endpoint, label, role needed): the order of the navigation.
NAV = [
    ("admin.dashboard", _l("Dashboard"), "editor"),
    ("admin.subscribers", _l("Subscribers"), "editor"),
    ("admin.articles", _l("Articles"), "editor"),
    ("admin.feeds", _l("Feeds"), "editor"),
    ("admin.digest", _l("Digest"), "editor"),
    ("admin.sends", _l("Sends"), "editor"),
    ("admin.api_tokens", _l("API tokens"), "admin"),
    ("admin.audit", _l("Audit"), "admin"),
    ("admin.privacy", _l("Privacy"), "admin"),
    ("admin.admins", _l("Admins"), "admin"),
]


@bp.app_context_processor
def admin_template_helpers():
    from flask_login import current_user

    def nav_items():
        """The navigation items this user may see."""
        role = getattr(current_user, "role", None)
        items = []
        for endpoint, label, needed in NAV:
            if role is None:
                continue
            if needed == "admin" and role != "admin":
                continue
            here = request.endpoint or ""
            current = here == endpoint or here.startswith(endpoint + "_")
            items.append({"url": url_for(endpoint), "label": label, "current": current})
        return items

    def lang_url(code: str) -> str:
        """This page in another language (keeping its query: search and filters)."""
        view_args = request.view_args or {}
        # Only plain query parameters: not url_for's own (_external, _scheme…) nor the view's.
        args = {key: values for key, values in request.args.lists()
                if not key.startswith("_") and key != "endpoint" and key not in view_args}
        args["lang"] = [code]
        if request.endpoint and request.method == "GET":
            return url_for(request.endpoint, **view_args, **args)
        return f"?lang={code}"

    return {"admin_nav_items": nav_items, "admin_lang_url": lang_url}


def _import_views() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_import_views()
