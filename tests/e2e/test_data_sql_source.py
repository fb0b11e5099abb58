"""SQL source (CHURN_SOURCE=sql), end to end: ``airflow dags test churn_nightly`` on a team's database.

The "team's database" is a second Postgres database whose schema is nothing like the demo's: accounts
(``acct_no``, ``opened_on``, ``tier`` ...), support tickets with serial numbers, and a status history in
which the label is a status change to ``closed``. The extraction and the leakage check are tested in
tests/integration/test_data_sql_source.py.
"""

from __future__ import annotations

import json

import psycopg2
import pytest

from tests.support.airflow_env import airflow_env, run_airflow
from tests.support.crm import CORRECT_QUERY, RUN_DATE, WINDOW, load_team_database, write_query
from tests.support.servers import fresh_databases, fresh_stores


@pytest.fixture(scope="module")
def crm_url(services, pg_admin_url) -> str:
    """A database of its own with the crm schema and data (the team's database, not the platform's)."""
    fresh_databases(pg_admin_url, "team_crm")
    url = services.pg_url("team_crm")
    load_team_database(url)
    return url


def test_nightly_dag_runs_on_a_team_database_with_a_query_file_and_the_connection_only(
        services, pg_admin_url, crm_url, tmp_path):
    pg_url, redis_url = fresh_stores(services, pg_admin_url, "e2e_sql_source", 5)
    query_file = write_query(tmp_path, CORRECT_QUERY)
    env = airflow_env(tmp_path, pg_url, redis_url, train_tpot="false", source="sql", source_query=str(query_file),
                      file_id_column="acct_no", file_label_column="closed", label_window_days=str(WINDOW),
                      file_suite="crm_accounts")
    env["AIRFLOW_CONN_CHURN_SOURCE"] = crm_url
    assert run_airflow(["db", "migrate"], env, tmp_path / "migrate.log").returncode == 0
    proc = run_airflow(["dags", "test", "churn_nightly", RUN_DATE.isoformat()], env, tmp_path / "dags-test.log")
    log = (tmp_path / "dags-test.log").read_text()
    assert proc.returncode == 0 and "state=success" in log, log[-5000:]
    crm = psycopg2.connect(crm_url)
    with crm.cursor() as cur:
        cur.execute("SELECT count(*) FROM crm.accounts a WHERE opened_on < %s AND NOT EXISTS (SELECT 1 FROM "
                    "crm.status_changes s WHERE s.acct_no = a.acct_no AND new_status = 'closed' AND changed_at < %s)",
                    (RUN_DATE, RUN_DATE))
        open_accounts = cur.fetchone()[0]
    crm.close()
    platform = psycopg2.connect(pg_url)
    with platform.cursor() as cur:
        cur.execute("SELECT count(*), count(DISTINCT customer_id) FROM churn.scores_current")
        assert cur.fetchone() == (open_accounts, open_accounts)
        cur.execute("SELECT signature->>'id_column' FROM churn.model_registry")
        assert {row[0] for row in cur.fetchall()} == {"acct_no"}
        cur.execute("SELECT name, version, suite->'meta'->>'auto_from_run' IS NOT NULL FROM churn.suites")
        assert cur.fetchall() == [("crm_accounts", 1, True)]  # proposed by the first good run, enforced from the next
        cur.execute("SELECT to_regclass('src.customers')")
        assert cur.fetchone()[0] is None  # nothing was read from (or created as) the demo's tables
    platform.close()
    spec = json.loads((tmp_path / "state" / "runs" / RUN_DATE.isoformat() / "dataset_spec.json").read_text())
    assert spec["source"] == "sql" and spec["boolean"] == ["autopay"]
    assert sorted(spec["categorical"]) == ["region_code", "tier"] and "email" in spec["inference"]["ignored"]
