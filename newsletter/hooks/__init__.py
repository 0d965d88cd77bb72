"""The hooks blueprint."""

from flask import Blueprint

bp = Blueprint("hooks", __name__)
