"""The user's database and roles (issue 26 items 7, 8, 10): least-privilege writers, a confined feature query,
and a publish switch that never stalls readers.

Real PostgreSQL (the session server of tests/support/servers.py, SCRAM passwords over TCP); each role a test creates
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
from tests.support.servers import url_as


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


# --- item 8: the feature query is one READ ONLY statement with a timeout ------------------------------------

VICTIM_DDL = ("CREATE TABLE public.victim (customer_id text PRIMARY KEY, seen_on date NOT NULL, fee float8); "
              "INSERT INTO public.victim VALUES ('C1', '2026-01-01', 1), ('C2', '2026-01-02', 2), "
              "('C3', '2026-01-03', 3); "
              # a function with a side effect, callable from a single SELECT
              "CREATE FUNCTION public.purge() RETURNS float8 LANGUAGE sql VOLATILE AS "
              "'DELETE FROM public.victim; SELECT 1::float8'")
AS_OF = date(2026, 11, 20)
# Written to break out of the platform's "SELECT * FROM (<query>) AS feature_query" wrapping.
INJECTION = ("SELECT 'C1' AS customer_id, %(as_of)s::date AS seen_on ) AS q; DROP TABLE public.victim; COMMIT; "
             "SELECT * FROM ( SELECT 1")

def _spec():
    from churn.data.spec import DatasetSpec

    return DatasetSpec("victims", "sql", "customer_id", "churned", numeric=["fee"], suite="victims")


def _query(tmp_path: Path, text: str) -> str:
    from churn.data.sql_source import load_query

    path = tmp_path / f"q_{uuid.uuid4().hex[:6]}.sql"
    path.write_text(text)
    return load_query(path)


def _victims(url: str) -> int | None:
    return _one(url, "SELECT CASE WHEN to_regclass('public.victim') IS NULL THEN NULL "
                     "ELSE (SELECT count(*) FROM public.victim) END")[0]


def test_a_feature_query_with_extra_statements_is_refused_and_runs_nothing(fresh_pg_url, tmp_path):
    from churn.data.leakage import check_leakage
    from churn.data.sql_source import SqlSourceError, bind, extract_query_snapshot, read_sample

    _run(fresh_pg_url, VICTIM_DDL)
    query = _query(tmp_path, INJECTION)
    conn = psycopg2.connect(fresh_pg_url)
    with pytest.raises(SqlSourceError, match="more than one SQL statement.*exactly one SELECT"):
        read_sample(conn, bind(conn, query, AS_OF, 30), 10)
    with pytest.raises(SqlSourceError, match="more than one SQL statement"):
        extract_query_snapshot(conn, query, AS_OF, tmp_path / "s.parquet", _spec(), labelled=False)
    with pytest.raises(SqlSourceError):  # the event re-score wraps it once more: a syntax error, nothing runs
        extract_query_snapshot(conn, query, AS_OF, tmp_path / "s.parquet", _spec(), labelled=False, ids=["C1"])
    # The leakage CLI runs the text as it is: the same injection without the parentheses.
    plain = _query(tmp_path, "SELECT 'C1' AS customer_id, %(as_of)s::date AS seen_on; DROP TABLE public.victim")
    with pytest.raises(SqlSourceError, match="more than one SQL statement"):
        check_leakage(conn, plain, AS_OF, 30, id_column="customer_id", label_column="churned")
    with pytest.raises(SqlSourceError):  # unbalanced on its own: a syntax error, nothing run either
        check_leakage(conn, query, AS_OF, 30, id_column="customer_id", label_column="churned")
    assert not (tmp_path / "s.parquet").exists()
    conn.close()
    assert _victims(fresh_pg_url) == 3


def test_a_single_statement_that_writes_is_refused_by_the_read_only_transaction(fresh_pg_url, tmp_path):
    from churn.data.leakage import check_leakage
    from churn.data.sql_source import SqlSourceError, bind, extract_query_snapshot, read_sample

    _run(fresh_pg_url, VICTIM_DDL)
    query = _query(tmp_path, "SELECT customer_id, seen_on, public.purge() AS fee FROM public.victim "
                             "WHERE seen_on < %(as_of)s")
    conn = psycopg2.connect(fresh_pg_url)
    with pytest.raises(SqlSourceError, match="(?s)read-only transaction.*may not write"):
        read_sample(conn, bind(conn, query, AS_OF, 30), 10)
    with pytest.raises(SqlSourceError, match="(?s)read-only transaction.*may not write"):
        extract_query_snapshot(conn, query, AS_OF, tmp_path / "s.parquet", _spec(), labelled=False)
    with pytest.raises(SqlSourceError, match="read-only transaction"):
        check_leakage(conn, query, AS_OF, 30, id_column="customer_id", label_column="churned")
    # A data-modifying WITH at the top level: refused too (the wrapping or READ ONLY, whichever comes first).
    cte = _query(tmp_path, "WITH d AS (DELETE FROM public.victim RETURNING *) SELECT customer_id, seen_on, fee "
                           "FROM d WHERE seen_on < %(as_of)s")
    with pytest.raises(SqlSourceError):
        read_sample(conn, bind(conn, cte, AS_OF, 30), 10)
    # The connection stays usable, and the next transaction on it may write (the event consumer's claims).
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE public.after (x int)")
    conn.commit()
    conn.close()
    assert _victims(fresh_pg_url) == 3


def test_the_feature_query_stops_at_the_statement_timeout(fresh_pg_url, tmp_path, monkeypatch):
    from churn.data.sql_source import SqlSourceError, bind, extract_query_snapshot, read_sample

    _run(fresh_pg_url, VICTIM_DDL)
    slow = _query(tmp_path, "SELECT customer_id, seen_on, fee + pg_sleep(5)::text::float8 * 0 AS fee "
                            "FROM public.victim WHERE seen_on < %(as_of)s")
    conn = psycopg2.connect(fresh_pg_url)
    started = time.monotonic()
    with pytest.raises(SqlSourceError, match="CHURN_SOURCE_STATEMENT_TIMEOUT_SECONDS"):
        read_sample(conn, bind(conn, slow, AS_OF, 30), 10, timeout_seconds=0.3)
    assert time.monotonic() - started < 3
    monkeypatch.setenv("CHURN_SOURCE_STATEMENT_TIMEOUT_SECONDS", "0.3")  # the setting, as the stages run it
    started = time.monotonic()
    with pytest.raises(SqlSourceError, match="statement timeout"):
        extract_query_snapshot(conn, slow, AS_OF, tmp_path / "s.parquet", _spec(), labelled=False)
    assert time.monotonic() - started < 3
    conn.close()


def test_a_read_only_source_role_runs_the_query_and_a_superuser_is_warned_about(fresh_pg_url, tmp_path, caplog):
    from churn.data import sql_source

    _run(fresh_pg_url, VICTIM_DDL)
    query = _query(tmp_path, "SELECT customer_id, seen_on, fee FROM public.victim WHERE seen_on < %(as_of)s")
    sql_source._checked_roles.clear()
    with login_role(fresh_pg_url, "GRANT SELECT ON public.victim TO {role}") as (_, reader_url):
        reader = psycopg2.connect(reader_url)
        with caplog.at_level("WARNING", logger="churn.data.sql_source"):
            sample = sql_source.read_sample(reader, sql_source.bind(reader, query, AS_OF, 30), 10)
        reader.close()
    assert sorted(sample["customer_id"]) == ["C1", "C2", "C3"]
    assert not caplog.records
    admin = psycopg2.connect(fresh_pg_url)
    with caplog.at_level("WARNING", logger="churn.data.sql_source"):
        sql_source.read_sample(admin, sql_source.bind(admin, query, AS_OF, 30), 10)
        sql_source.read_sample(admin, sql_source.bind(admin, query, AS_OF, 30), 10)
    admin.close()
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "superuser" in warnings[0] and "CHURN_SOURCE_CONN_ID" in warnings[0], warnings


# --- item 10: the publish switch never stalls readers -----------------------------------------------------

RUN_A, RUN_B = "2026-11-20", "2026-11-21"


def _wait_for(url: str, query: str, seconds: float = 30.0) -> None:
    ends = time.monotonic() + seconds
    while not _one(url, query)[0]:
        assert time.monotonic() < ends, f"timed out waiting for: {query}"
        time.sleep(0.05)


def test_an_open_reader_transaction_never_stalls_new_readers_and_the_switch_completes_after_it(
        fresh_pg_url, tmp_path):
    from churn.publish import postgres as pgpub
    from tests.support.scores import write_scores

    first = psycopg2.connect(fresh_pg_url)
    pgpub.publish_scores(first, write_scores(tmp_path / "a.parquet", RUN_A, 0, 3000, seed=1), RUN_A, "m1")
    first.close()
    holder = psycopg2.connect(fresh_pg_url)  # a consumer that read and left its transaction open
    with holder.cursor() as cur:
        cur.execute("SELECT count(*) FROM churn.scores_current")
    outcome: dict = {}

    def publish() -> None:
        conn = psycopg2.connect(fresh_pg_url)
        try:
            outcome["published"] = pgpub.publish_scores(
                conn, write_scores(tmp_path / "b.parquet", RUN_B, 500, 3000, seed=2), RUN_B, "m2",
                switch_lock_timeout_seconds=1.0, switch_deadline_seconds=120)
        except Exception as exc:  # noqa: BLE001 - asserted below
            outcome["error"] = exc
        finally:
            conn.close()

    switcher = threading.Thread(target=publish, daemon=True)
    switcher.start()
    _wait_for(fresh_pg_url, "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE NOT granted AND relation IS NOT NULL)")
    # New readers while the switch tries again and again: none waits much longer than the 1 s budget.
    reader = psycopg2.connect(fresh_pg_url, options="-c statement_timeout=8000")  # old code: 60 s, this fails
    reader.autocommit = True
    latencies = []
    ends = time.monotonic() + 5
    with reader.cursor() as cur:
        while time.monotonic() < ends:
            started = time.monotonic()
            cur.execute("SELECT count(*), min(run_id) FROM churn.scores_current")
            latencies.append(time.monotonic() - started)
            assert cur.fetchone() == (3000, RUN_A)
            time.sleep(0.05)
    reader.close()
    assert max(latencies) < 1.6, latencies
    assert switcher.is_alive() and not outcome  # still retrying around the open transaction
    holder.rollback()  # the consumer ends its transaction: the next attempt goes through
    switcher.join(30)
    assert "error" not in outcome, outcome
    assert outcome["published"].is_current
    assert _one(fresh_pg_url, "SELECT count(*), min(run_id) FROM churn.scores_current") == (3000, RUN_B)
    holder.close()


def test_the_switch_gives_up_at_its_deadline_naming_the_reader_that_holds_it(fresh_pg_url, tmp_path):
    from churn.publish import postgres as pgpub
    from tests.support.scores import write_scores

    conn = psycopg2.connect(fresh_pg_url)
    pgpub.publish_scores(conn, write_scores(tmp_path / "a.parquet", RUN_A, 0, 1000, seed=1), RUN_A, "m1")
    holder = psycopg2.connect(fresh_pg_url)
    with holder.cursor() as cur:
        cur.execute("SELECT count(*) FROM churn.scores_current")
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
    started = time.monotonic()
    with pytest.raises(pgpub.PublishError, match=f"(?s)no moment without readers.*pid {pid} .*idle in transaction"
                                                 ".*CHURN_PUBLISH_SWITCH_DEADLINE_SECONDS"):
        pgpub.publish_scores(conn, write_scores(tmp_path / "b.parquet", RUN_B, 0, 1000, seed=2), RUN_B, "m2",
                             switch_lock_timeout_seconds=0.3, switch_deadline_seconds=2)
    assert time.monotonic() - started < 10
    holder.rollback()
    holder.close()
    assert _one(fresh_pg_url, "SELECT min(run_id) FROM churn.scores_current") == (RUN_A,)
    # The retry (the holder gone) publishes the run.
    assert pgpub.publish_scores(conn, tmp_path / "b.parquet", RUN_B, "m2").is_current
    conn.close()


def test_the_reader_role_ends_sessions_left_idle_in_a_transaction(fresh_pg_url, tmp_path):
    from churn.publish import postgres as pgpub
    from tests.support.scores import write_scores

    role = f"churn_reader_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(fresh_pg_url)
    pgpub.publish_scores(conn, write_scores(tmp_path / "a.parquet", RUN_A, 0, 100, seed=1), RUN_A, "m1")
    pgpub.ensure_reader_role(conn, role, "reader-secret", idle_in_transaction_seconds=0.5)
    try:
        reader = psycopg2.connect(url_as(fresh_pg_url, role, "reader-secret"))
        with reader.cursor() as cur:
            cur.execute("SHOW idle_in_transaction_session_timeout")
            assert cur.fetchone() == ("500ms",)
            cur.execute("SELECT count(*) FROM churn.scores_current")  # the transaction stays open, idle
        time.sleep(1.5)
        with pytest.raises(psycopg2.OperationalError):  # the server ended the session
            with reader.cursor() as cur:
                cur.execute("SELECT 1")
        reader.close()
        # The default comes from the setting.
        pgpub.ensure_reader_role(conn, role, "reader-secret")
        with conn.cursor() as cur:
            cur.execute("SELECT setconfig FROM pg_db_role_setting WHERE setrole = %s::regrole", (role,))
            assert "idle_in_transaction_session_timeout=30000ms" in cur.fetchone()[0]
        conn.commit()
    finally:
        conn.rollback()
        with conn.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
            cur.execute(f"DROP OWNED BY {role}")
            cur.execute(f"DROP ROLE {role}")
        conn.commit()
        conn.close()
