"""Schema migration by the owner role, and the least-privilege grants of the roles the platform runs as.

The pipeline connects as a *publisher* role that reads and writes the platform's tables and creates
the per-run score tables and views, but owns none of the base tables, cannot alter or drop them, and
creates no roles. The schema is created and upgraded by an *owner* role, once per release::

    python -m churn.migrate --publisher churn_publisher [--reader churn_reader]

as the owner: ``CHURN_POSTGRES_MIGRATION_URL``, else the Airflow connection ``churn_postgres_owner``.
Tasks then find the schema at its version and run no DDL; a publisher that meets an older schema stops
with the command above instead of trying to alter what it does not own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import argparse
import logging
import os
import re
import sys

from psycopg2 import sql

if TYPE_CHECKING:
    from churn.db import PgConnection

log = logging.getLogger(__name__)

OWNER_CONN_ID = "churn_postgres_owner"
_ROLE = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class MigrationError(RuntimeError):
    """The migration cannot run as configured; the message says what to set."""


def _role(name: str, what: str) -> sql.Identifier:
    if not _ROLE.fullmatch(name):
        raise MigrationError(f"{what} role {name!r} must be a lower-case SQL identifier")
    return sql.Identifier(name)


def migrate(conn: PgConnection, publisher: str | None = None, reader: str | None = None) -> dict:
    """Create or upgrade schema ``churn`` as the connected (owner) role and grant the publisher and reader."""
    from churn.data.outbox import ensure_outbox
    from churn.db import SCHEMA_VERSION, ensure_schema

    ensure_schema(conn, migrate=True)
    ensure_outbox(conn)  # tables; the trigger function is secured by whoever may create roles (install)
    granted: list[str] = []
    with conn.cursor() as cur:
        cur.execute("SELECT current_user")
        owner = cur.fetchone()[0]
        if publisher:
            who = _role(publisher, "publisher")
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (publisher,))
            if cur.fetchone() is None:
                raise MigrationError(f"role {publisher!r} does not exist: have a DBA run 'CREATE ROLE {publisher} "
                                     "LOGIN PASSWORD ...' (no SUPERUSER, CREATEDB or CREATEROLE)")
            statements = [
                "GRANT USAGE, CREATE ON SCHEMA churn TO {who}",  # per-run score tables and the views over them
                "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA churn TO {who}",
                "GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA churn TO {who}",
                "ALTER DEFAULT PRIVILEGES IN SCHEMA churn GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {who}",
                "ALTER DEFAULT PRIVILEGES IN SCHEMA churn GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {who}",
            ]
            for statement in statements:
                cur.execute(sql.SQL(statement).format(who=who))
            cur.execute("SELECT to_regclass('churn.promotions') IS NOT NULL")
            if cur.fetchone()[0]:  # the champion's history is append-only, for the publisher too
                cur.execute(sql.SQL("REVOKE UPDATE, DELETE ON churn.promotions FROM {}").format(who))
            granted.append(publisher)
        if reader:
            who = _role(reader, "reader")
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (reader,))
            if cur.fetchone() is not None:
                cur.execute(sql.SQL("GRANT USAGE ON SCHEMA churn TO {}").format(who))  # SELECT: on the views only
                granted.append(reader)
            else:
                log.warning("reader role %s does not exist: consumers get no access until a DBA creates it", reader)
    conn.commit()
    log.info("schema churn at version %s, owned by %s; granted to %s", SCHEMA_VERSION, owner, granted or "nobody")
    return {"version": SCHEMA_VERSION, "owner": owner, "granted": granted}


def migration_url() -> str:
    """The owner's URL: CHURN_POSTGRES_MIGRATION_URL, else the Airflow connection ``churn_postgres_owner``."""
    url = os.environ.get("CHURN_POSTGRES_MIGRATION_URL") or os.environ.get(f"AIRFLOW_CONN_{OWNER_CONN_ID.upper()}")
    if url:
        return url
    from churn.connections import airflow_connection

    conn = airflow_connection(OWNER_CONN_ID)
    if conn is not None:
        return conn.get_uri().replace("postgres://", "postgresql://", 1)
    raise MigrationError("no owner role configured: set CHURN_POSTGRES_MIGRATION_URL (or the Airflow connection "
                         f"'{OWNER_CONN_ID}') to the URL of the role that owns schema churn")


def build_parser() -> argparse.ArgumentParser:
    """The CLI's parser (also read by the docs' CLI reference)."""
    parser = argparse.ArgumentParser(prog="python -m churn.migrate", description=__doc__.splitlines()[0])
    parser.add_argument("--publisher", default=os.environ.get("CHURN_PG_PUBLISHER_ROLE", ""),
                        help="role the pipeline connects as (default CHURN_PG_PUBLISHER_ROLE)")
    parser.add_argument("--reader", default=os.environ.get("CHURN_PG_READER_ROLE", "churn_reader"),
                        help="read-only consumer role (default CHURN_PG_READER_ROLE)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m churn.migrate [--publisher ROLE] [--reader ROLE]``."""
    from churn.connections import pg_connect

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        conn = pg_connect(migration_url())
    except MigrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        migrate(conn, args.publisher or None, args.reader or None)
    except MigrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
