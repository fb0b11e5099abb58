"""Least privilege for the platform itself (issue 26 item 9): the owner migrates, the pipeline runs as a publisher
that owns no base table and creates no role, consumers read the served views only. Real Postgres."""

from __future__ import annotations

import uuid
from datetime import date

import psycopg2
import pytest

from churn.config import ChurnConfig
from churn.connections import Resources
from churn.db import SchemaNotMigrated, ensure_schema
from churn.migrate import migrate
from tests.support.servers import url_as
from tests.support.field_data import bank_churn, write_csv
from tests.support.nightly import run_nightly

RUN_DATE = date(2026, 11, 20)


@pytest.fixture
def roles(pg_admin_url, fresh_pg_url):
    """An owner and a publisher role (fresh names), the test database owned by the owner."""
    suffix = uuid.uuid4().hex[:8]
    names = {"owner": f"own_{suffix}", "publisher": f"pub_{suffix}", "reader": f"read_{suffix}"}
    admin = psycopg2.connect(pg_admin_url)
    admin.autocommit = True
    database = fresh_pg_url.rsplit("/", 1)[1]
    with admin.cursor() as cur:
        for name in names.values():
            cur.execute(f"CREATE ROLE {name} LOGIN PASSWORD 'pw-{name}' NOSUPERUSER NOCREATEDB NOCREATEROLE")
        cur.execute(f"ALTER DATABASE {database} OWNER TO {names['owner']}")
    urls = {k: url_as(fresh_pg_url, v, f"pw-{v}") for k, v in names.items()}
    yield {**names, "urls": urls}
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        for name in names.values():
            cur.execute(f"DROP ROLE IF EXISTS {name}")
    admin.close()


def test_a_publisher_meets_an_unmigrated_schema_with_the_command_to_run(roles):
    conn = psycopg2.connect(roles["urls"]["publisher"])
    with pytest.raises(SchemaNotMigrated, match="python -m churn.migrate"):
        ensure_schema(conn)
    conn.close()


def test_the_pipeline_runs_as_a_publisher_that_can_alter_nothing_it_does_not_own(roles, tmp_path, redis_url):
    owner = psycopg2.connect(roles["urls"]["owner"])
    result = migrate(owner, roles["publisher"], roles["reader"])
    owner.close()
    assert result["granted"] == [roles["publisher"], roles["reader"]]
    path = write_csv(bank_churn(2_000, dirty=False), tmp_path / "bank.csv")
    cfg = ChurnConfig.from_env({"CHURN_SOURCE": "file", "CHURN_FILE_PATH": str(path),
                                "CHURN_ID_COLUMN": "CustomerId", "CHURN_LABEL_COLUMN": "Exited",
                                "CHURN_STATE_DIR": str(tmp_path / "state"), "CHURN_TRAIN_TPOT": "false",
                                "CHURN_EXPORT_PMML": "false", "CHURN_PG_READER_ROLE": roles["reader"]})
    res = Resources.from_urls(roles["urls"]["publisher"], redis_url)
    published = run_nightly(cfg, res, RUN_DATE)["pg_published"]  # every stage, as the publisher
    assert published["is_current"] and published["rows"] == 2_000
    assert published["reader_role"] == roles["reader"]  # the publisher granted its new views to the reader

    publisher = psycopg2.connect(roles["urls"]["publisher"])
    publisher.autocommit = True
    with publisher.cursor() as cur:
        for statement in ("DROP TABLE churn.model_registry", "ALTER TABLE churn.quarantine ADD COLUMN x int",
                          "TRUNCATE churn.validation_results", f"CREATE ROLE x_{roles['publisher']}"):
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute(statement)
        cur.execute("SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user")
        assert cur.fetchone() == (False, False, False)
    publisher.close()
    reader = psycopg2.connect(roles["urls"]["reader"])
    with reader.cursor() as cur:
        cur.execute("SELECT count(*) FROM churn.scores_current")
        assert cur.fetchone()[0] == 2_000
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("SELECT count(*) FROM churn.model_registry")
    reader.close()
