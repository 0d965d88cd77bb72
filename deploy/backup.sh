#!/bin/sh
# Back up or restore the newsletter's database, SQLite or PostgreSQL, from DATABASE_URL.
#
#   deploy/backup.sh backup  FILE     # while the services run (SQLite: the online backup API;
#                                     # PostgreSQL: pg_dump, a consistent snapshot)
#   deploy/backup.sh restore FILE     # stop the services first: systemctl stop 'newsletter-*'
#
# DATABASE_URL comes from the environment, else from /etc/newsletter/newsletter.env (ENV_FILE),
# else it is the default SQLite file $INSTANCE_PATH/newsletter.db. A restore replaces the whole
# database (subscribers, digests, the send ledger, the consent ledger) with the backup's.
# PYTHON is the interpreter used for SQLite (the app's own: /opt/newsletter/.venv/bin/python).
set -eu

usage() { echo "usage: $0 backup|restore FILE" >&2; exit 2; }
[ $# -eq 2 ] || usage
action=$1
file=$2

if [ -z "${DATABASE_URL:-}" ] && [ -r "${ENV_FILE:-/etc/newsletter/newsletter.env}" ]; then
    DATABASE_URL=$(sed -n 's/^DATABASE_URL=//p' "${ENV_FILE:-/etc/newsletter/newsletter.env}" | tail -n 1)
fi
url=${DATABASE_URL:-sqlite:///${INSTANCE_PATH:-instance}/newsletter.db}
python=${PYTHON:-python3}

case "$url" in
postgres://* | postgresql://* | postgresql+psycopg://*)
    # libpq wants postgresql://; SQLAlchemy's driver name is dropped.
    libpq_url=$(printf '%s' "$url" | sed -e 's|^postgresql+psycopg://|postgresql://|' -e 's|^postgres://|postgresql://|')
    case "$action" in
    backup)
        pg_dump --format=custom --no-owner --no-privileges --file="$file.partial" "$libpq_url"
        mv "$file.partial" "$file"
        ;;
    restore)
        [ -r "$file" ] || { echo "$0: cannot read $file" >&2; exit 1; }
        pg_restore --clean --if-exists --no-owner --no-privileges --single-transaction \
            --exit-on-error --dbname="$libpq_url" "$file"
        ;;
    *) usage ;;
    esac
    ;;
sqlite:*)
    path=${url#sqlite:///}
    case "$action" in
    backup) source=$path; target=$file.partial ;;
    restore) [ -r "$file" ] || { echo "$0: cannot read $file" >&2; exit 1; }; source=$file; target=$path ;;
    *) usage ;;
    esac
    # sqlite3's backup API copies page by page under a read lock: the writers (web, scheduler)
    # wait at most a moment, and the copy is one consistent state, WAL included.
    "$python" - "$source" "$target" <<'PY'
import sqlite3
import sys

source, target = sys.argv[1:3]
src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
dst = sqlite3.connect(target, timeout=30)
with dst:
    src.backup(dst)
problems = dst.execute("PRAGMA integrity_check").fetchone()[0]
src.close()
dst.close()
if problems != "ok":
    sys.exit(f"integrity check of {target} failed: {problems}")
PY
    [ "$action" = restore ] || mv "$file.partial" "$file"
    ;;
*)
    echo "$0: DATABASE_URL is neither SQLite nor PostgreSQL" >&2
    exit 1
    ;;
esac
echo "$action: done ($file)" >&2
