"""Bounded in time (issue 26 item 15): every Postgres statement, SFTP channel and DAG task has a limit."""

from __future__ import annotations

import time

import psycopg2
import pytest

from churn.connections import Resources, pg_connect


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
