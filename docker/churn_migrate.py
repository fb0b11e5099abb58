"""Schema migration of the compose stack: the platform's tables, created by their owner before the pipeline runs.

Run by the one-shot ``churn-migrate`` service as ``churn_owner`` (docker/init-churn-db.sh), after Postgres is
healthy and before any Airflow component starts. Creating the tables here, rather than on the pipeline's first
task, is what makes the role split real: churn_owner owns every table of schema ``churn``, and the pipeline's
role (churn_publisher) gets only SELECT/INSERT/UPDATE/DELETE on them through default privileges, so a task can
never ALTER or DROP the registry, the runs or the outbox. It calls the same idempotent functions the tasks call
(``churn.migrate.migrate``: the schema at its version, then the grants), so a newer image migrates on ``compose up``.

It wraps the platform's own migration (``churn.migrate.migrate``, the ``python -m churn.migrate`` CLI) with the
compose checks below (never as a superuser or a role other than the schema's owner), and reads
``CHURN_POSTGRES_MIGRATION_URL``.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import psycopg2

from churn.migrate import migrate

log = logging.getLogger("churn-migrate")


def connect(url: str, attempts: int = 10):
    """Connect, retrying briefly: healthy in compose is "accepts logins", not yet "done with a restart"."""
    for attempt in range(1, attempts + 1):
        try:
            return psycopg2.connect(url, connect_timeout=10, application_name="churn-migrate")
        except psycopg2.OperationalError as exc:
            if attempt == attempts:
                raise
            log.warning("Postgres not reachable yet (%s); retrying", " ".join(str(exc).split()))
            time.sleep(3)
    raise AssertionError("unreachable")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    url = os.environ.get("CHURN_POSTGRES_MIGRATION_URL")
    if not url:
        log.error("CHURN_POSTGRES_MIGRATION_URL is not set (the churn_owner URL, see docker-compose.yaml)")
        return 2
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_user, rolsuper, (SELECT nspowner::regrole::text FROM pg_namespace "
                        "WHERE nspname = 'churn') FROM pg_roles WHERE rolname = current_user")
            user, superuser, schema_owner = cur.fetchone()
        conn.rollback()
        # Tables created by any other role would be owned by it: the publisher's grants come from churn_owner's
        # default privileges, and a superuser-owned table would be one the pipeline cannot write.
        if superuser or (schema_owner is not None and schema_owner != user):
            log.error("refusing to migrate as %s: connect as the owner of schema churn (%s), not %s", user,
                      schema_owner, "a superuser" if superuser else "another role")
            return 2
        # The platform's migration (python -m churn.migrate): tables at SCHEMA_VERSION, the publisher's grants.
        migrate(conn, publisher=os.environ.get("CHURN_PG_PUBLISHER_ROLE", "churn_publisher"),
                reader=os.environ.get("CHURN_PG_READER_ROLE") or "churn_reader")
        log.info("schema churn is up to date (owner %s)", user)
        return 0
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
