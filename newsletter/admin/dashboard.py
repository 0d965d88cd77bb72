"""The dashboard: subscriber counts and trend, the next digest, the last sends."""

from __future__ import annotations

from flask import render_template

from .. import stats
from . import bp
from .auth import role_required


@bp.get("/")
@role_required("editor")
def dashboard():
    """Counts by state, their trend, the coming digest and the last sends."""
    return render_template("admin/dashboard.html", counts=stats.subscriber_counts())
