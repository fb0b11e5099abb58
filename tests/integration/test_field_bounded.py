"""Bounded in time (issue 26 item 15): every Postgres statement, SFTP channel and DAG task has a limit."""

from __future__ import annotations

import ast
import time

import psycopg2
import pytest

from churn.connections import Resources, pg_connect
from tests.support import REPO_ROOT


def test_every_task_of_every_dag_has_an_execution_timeout():
    """Unit: with max_active_runs=1 a task without a limit that hangs blocks every later night."""
    for dag_file in sorted((REPO_ROOT / "dags").glob("*.py")):
        tree = ast.parse(dag_file.read_text())
        defaults = [kw for node in ast.walk(tree) if isinstance(node, ast.keyword) and node.arg == "default_args"
                    for kw in ([node.value] if isinstance(node.value, ast.Dict) else [])]
        keys = {k.value for d in defaults for k in d.keys if isinstance(k, ast.Constant)}
        assert "execution_timeout" in keys, f"{dag_file.name}: default_args lacks execution_timeout"


@pytest.mark.integration
def test_platform_connections_cancel_a_hung_statement(fresh_pg_url, redis_url):
    res = Resources.from_urls(fresh_pg_url, redis_url, statement_timeout_s=1)
    with res.pg_session() as conn, conn.cursor() as cur:
        cur.execute("SHOW statement_timeout")
        assert cur.fetchone()[0] == "1s"
        started = time.monotonic()
        with pytest.raises(psycopg2.errors.QueryCanceled):
            cur.execute("SELECT pg_sleep(30)")
        assert time.monotonic() - started < 10
    # a URL's own options survive: the bound is appended, not substituted
    with pg_connect(fresh_pg_url + "?options=-c%20work_mem%3D8MB", statement_timeout_s=5) as conn, \
            conn.cursor() as cur:
        cur.execute("SHOW work_mem")
        assert cur.fetchone()[0] == "8MB"
        cur.execute("SHOW statement_timeout")
        assert cur.fetchone()[0] == "5s"
        conn.rollback()
