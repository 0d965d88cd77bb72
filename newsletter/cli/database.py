"""`flask --app wsgi copy-database SOURCE_URL`: move every row from another database into this one
(DATABASE_URL), e.g. from the SQLite file of a first installation to PostgreSQL.

Both databases must be at the same migration (`flask db upgrade` on each), and this one empty.
The copy is one transaction: it is all there, or nothing is.
"""

from __future__ import annotations

import click
from flask.cli import with_appcontext
from sqlalchemy import Engine, create_engine, func, inspect, select, text

from newsletter.extensions import db

CHUNK = 2000


def sqlalchemy_url(url: str) -> str:
    """The URL as the app uses it (psycopg 3 for PostgreSQL)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def migration_of(engine: Engine) -> set[str]:
    if not inspect(engine).has_table("alembic_version"):
        return set()
    with engine.connect() as conn:
        return set(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())


def copy_rows(source: Engine, target: Engine) -> dict[str, int]:
    """Every table's rows from `source` into the empty `target`, in one transaction; the counts."""
    tables = db.metadata.sorted_tables  # parents before children
    with target.connect() as conn:
        filled = [t.name for t in tables if conn.execute(select(func.count()).select_from(t)).scalar()]
    if filled:
        raise click.ClickException(f"this database is not empty ({', '.join(filled)}): nothing copied")
    counts: dict[str, int] = {}
    with source.connect() as read, target.begin() as write:
        for table in tables:
            counts[table.name] = 0
            rows = read.execution_options(yield_per=CHUNK).execute(select(table))
            for chunk in rows.mappings().partitions(CHUNK):
                write.execute(table.insert(), [dict(row) for row in chunk])
                counts[table.name] += len(chunk)
        if target.dialect.name == "postgresql":  # the id sequences go on after the copied ids
            for table in tables:
                key = table.c.get("id")
                if key is not None and key.primary_key and key.autoincrement in (True, "auto"):
                    write.execute(text(
                        f"SELECT setval(pg_get_serial_sequence('\"{table.name}\"', 'id'), "
                        f"COALESCE(MAX(id), 1), MAX(id) IS NOT NULL) FROM \"{table.name}\""))
    return counts


@click.command("copy-database")
@click.argument("source_url")
@with_appcontext
def group(source_url: str) -> None:
    """Copy every row of SOURCE_URL's database into this one (DATABASE_URL), which must be empty."""
    source = create_engine(sqlalchemy_url(source_url))
    try:
        here, there = migration_of(db.engine), migration_of(source)
        if not here or here != there:
            raise click.ClickException(
                f"the databases are at different migrations (source {sorted(there) or 'none'}, "
                f"this one {sorted(here) or 'none'}): run `flask --app wsgi db upgrade` on both first")
        counts = copy_rows(source, db.engine)
    finally:
        source.dispose()
    for name, count in counts.items():
        click.echo(f"{name}: {count}")
    click.echo(f"copied {sum(counts.values())} rows", err=True)
