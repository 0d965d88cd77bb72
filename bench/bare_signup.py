"""The baseline of bench/signups.py: a bare Flask app that validates nothing and inserts the
address into a one-table database, one statement and a commit per request.

    DATABASE_URL=postgresql://… gunicorn -w 2 bench.bare_signup:app
"""

from __future__ import annotations

import os

from flask import Flask, jsonify, request
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, insert

metadata = MetaData()
people = Table("bare_signup", metadata, Column("id", Integer, primary_key=True),
               Column("email", String(320), unique=True), Column("language", String(8)))
engine = create_engine(os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://", 1),
                       pool_size=4)
app = Flask(__name__)


@app.post("/subscribe")
def subscribe():
    data = request.get_json()
    with engine.begin() as connection:
        connection.execute(insert(people).values(email=data["email"], language=data.get("language", "sv")))
    return jsonify(ok=True, message="Check your inbox.")


def create_table() -> None:
    metadata.drop_all(engine)
    metadata.create_all(engine)
