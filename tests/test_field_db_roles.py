"""The user's database and roles (issue 26 items 7, 8, 10): least-privilege writers, a confined feature query,
and a publish switch that never stalls readers.

Real PostgreSQL (the session server of tests/conftest.py, SCRAM passwords over TCP); each role a test creates
has a unique name and is dropped at the end (roles are cluster-wide).
"""

from __future__ import annotations

import threading
import time
import uuid
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Iterator

import psycopg2
import pytest

from churn.data import outbox
from tests.conftest import url_as

pytestmark = pytest.mark.integration


@contextmanager
def login_role(admin_url: str, grants: str = "") -> Iterator[tuple[str, str]]:
    """A fresh LOGIN role with a password (and ``grants``, ``{role}`` filled in); yields (name, URL); dropped after."""
    name, password = f"app_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    admin = psycopg2.connect(admin_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE ROLE {name} LOGIN PASSWORD %s", (password,))
        if grants:
            cur.execute(grants.format(role=name))
    try:
        yield name, url_as(admin_url, name, password)
    finally:
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,))
            cur.execute(f"DROP OWNED BY {name}")
            cur.execute(f"DROP ROLE {name}")
        admin.close()


def _run(url: str, statements: str) -> None:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(statements)
        conn.commit()
    finally:
        conn.close()


def _one(url: str, query: str, params=()) -> tuple:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(query, params or None)
            row = cur.fetchone()
        conn.commit()
        return row
    finally:
        conn.close()


# --- item 7: the outbox trigger never breaks the application's writes --------------------------------------

APP_TABLE_DDL = "CREATE SCHEMA app; CREATE TABLE app.tickets (ticket_no serial PRIMARY KEY, customer_id text, note text)"
INSERT_ONLY = ("GRANT USAGE ON SCHEMA app TO {role}; GRANT INSERT ON app.tickets TO {role}; "
               "GRANT USAGE ON SEQUENCE app.tickets_ticket_no_seq TO {role}")


def test_a_role_that_may_only_insert_into_its_table_keeps_writing_with_triggers_installed(fresh_pg_url):
    _run(fresh_pg_url, APP_TABLE_DDL)
    with login_role(fresh_pg_url, INSERT_ONLY) as (role, app_url):
        admin = psycopg2.connect(fresh_pg_url)
        assert outbox.install_triggers(admin, ["app.tickets"], "customer_id") == ["app.tickets:insert",
                                                                                   "app.tickets:update"]
        app = psycopg2.connect(app_url)
        with app.cursor() as cur:  # no right on schema churn at all
            cur.execute("SELECT has_schema_privilege('churn', 'USAGE')")
            assert cur.fetchone()[0] is False
            cur.execute("INSERT INTO app.tickets (customer_id, note) VALUES ('C1', 'x'), ('C2', 'y'), ('C1', 'z')")
        app.commit()
        app.close()
        with admin.cursor() as cur:
            cur.execute("SELECT customer_id, kind, source_table FROM churn.rescore_outbox ORDER BY customer_id")
            assert cur.fetchall() == [("C1", "tickets", "app.tickets"), ("C2", "tickets", "app.tickets")]
        admin.close()


def test_the_trigger_function_is_security_definer_owned_by_the_writer_role_and_checked_at_install(fresh_pg_url):
    _run(fresh_pg_url, APP_TABLE_DDL)
    admin = psycopg2.connect(fresh_pg_url)
    outbox.install_triggers(admin, ["app.tickets"], "customer_id")
    with admin.cursor() as cur:
        cur.execute("SELECT p.prosecdef, pg_get_userbyid(p.proowner), p.proconfig, "
                    "has_function_privilege('public', p.oid, 'EXECUTE'), r.rolcanlogin, r.rolsuper "
                    "FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner "
                    "WHERE p.oid = 'churn.record_rescore_events()'::regprocedure")
        assert cur.fetchone() == (True, "churn_outbox_writer", ["search_path=pg_catalog, pg_temp"], False, False,
                                  False)
        # The writer may insert into the outbox and do nothing else there.
        cur.execute("SELECT has_table_privilege('churn_outbox_writer', 'churn.rescore_outbox', 'INSERT'), "
                    "has_table_privilege('churn_outbox_writer', 'churn.rescore_outbox', 'SELECT,UPDATE,DELETE')")
        assert cur.fetchone() == (True, False)
        # An install on an old (invoker) function puts the secured one back.
        cur.execute("ALTER FUNCTION churn.record_rescore_events() OWNER TO postgres")
        cur.execute("ALTER FUNCTION churn.record_rescore_events() SECURITY INVOKER RESET search_path")
    admin.commit()
    assert len(outbox.trigger_function_problems(admin)) == 3
    outbox.install_triggers(admin, ["app.tickets"], "customer_id")
    assert outbox.trigger_function_problems(admin) == []
    # A role that may not create roles or own the function is told what a DBA must run, and nothing is left half-done.
    with admin.cursor() as cur:
        cur.execute("ALTER FUNCTION churn.record_rescore_events() OWNER TO postgres")
        cur.execute("ALTER FUNCTION churn.record_rescore_events() SECURITY INVOKER")
    admin.commit()
    with login_role(fresh_pg_url, "GRANT USAGE ON SCHEMA app, churn TO {role}; "
                                  "ALTER TABLE app.tickets OWNER TO {role}") as (_, installer_url):
        installer = psycopg2.connect(installer_url)
        with pytest.raises(outbox.OutboxError, match="not SECURITY DEFINER.*CREATE ROLE churn_outbox_writer NOLOGIN"):
            outbox.install_triggers(installer, ["app.tickets"], "customer_id")
        installer.close()
        with admin.cursor() as cur:
            cur.execute("SELECT prosecdef, pg_get_userbyid(proowner) FROM pg_proc "
                        "WHERE oid = 'churn.record_rescore_events()'::regprocedure")
            assert cur.fetchone() == (False, "postgres")
            cur.execute("ALTER TABLE app.tickets OWNER TO postgres")
        admin.commit()
    admin.close()


def test_a_failing_outbox_insert_warns_and_never_fails_the_source_write(fresh_pg_url):
    _run(fresh_pg_url, APP_TABLE_DDL)
    with login_role(fresh_pg_url, INSERT_ONLY) as (_, app_url):
        admin = psycopg2.connect(fresh_pg_url)
        outbox.install_triggers(admin, ["app.tickets"], "customer_id")
        with admin.cursor() as cur:  # the outbox insert now fails (as a dropped grant or a full outbox would)
            cur.execute("REVOKE INSERT ON churn.rescore_outbox FROM churn_outbox_writer")
        admin.commit()
        app = psycopg2.connect(app_url)
        with app.cursor() as cur:
            cur.execute("INSERT INTO app.tickets (customer_id, note) VALUES ('C9', 'kept')")
        app.commit()
        assert any("re-score event of app.tickets not recorded" in n for n in app.notices), app.notices
        app.close()
        assert _one(fresh_pg_url, "SELECT count(*) FROM app.tickets WHERE customer_id = 'C9'") == (1,)
        assert _one(fresh_pg_url, "SELECT count(*) FROM churn.rescore_outbox") == (0,)
        # The next install (or consumer run) sees the missing grant and restores it.
        assert any("may not insert" in p for p in outbox.trigger_function_problems(admin))
        outbox.install_triggers(admin, ["app.tickets"], "customer_id")
        assert outbox.trigger_function_problems(admin) == []
        admin.close()
