"""Integration: atomic, idempotent publish to the real Postgres (COPY, one-transaction switch, reader role)."""

from __future__ import annotations

import threading
import time

import psycopg2
import pytest

from churn.publish import postgres as pgpub
from tests.support.scores import RUN_A, RUN_B, write_scores
from tests.support.servers import url_as
from tests.support.stage_refs import scored_ref


def current_state(url: str) -> tuple[int, set[str]]:
    """(rows, run ids) of churn.scores_current in one query."""
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*), array_agg(DISTINCT run_id) FROM churn.scores_current")
            count, runs = cur.fetchone()
        return count, set(runs or [])
    finally:
        conn.close()


class ConsistencyReader(threading.Thread):
    """Queries churn.scores_current in a loop; every answer must be a complete old or new batch."""

    def __init__(self, url: str, allowed: dict[str, int]):
        super().__init__(daemon=True)
        self.url, self.allowed = url, allowed
        self.stop = threading.Event()
        self.answers: list[tuple[int, tuple[str, ...]]] = []
        self.bad: list[object] = []

    def run(self) -> None:
        conn = psycopg2.connect(self.url)
        conn.autocommit = True
        with conn.cursor() as cur:
            while not self.stop.is_set():
                cur.execute("SELECT count(*), array_agg(DISTINCT run_id), count(DISTINCT customer_id) "
                            "FROM churn.scores_current")
                count, runs, distinct = cur.fetchone()
                runs = tuple(sorted(runs or []))
                self.answers.append((count, runs))
                if len(runs) != 1 or self.allowed.get(runs[0]) != count or distinct != count:
                    self.bad.append((count, runs, distinct))
        conn.close()


def test_republishing_the_same_run_gives_identical_rows_and_no_duplicates(pg_conn, fresh_pg_url, scores):
    first = pgpub.publish_scores(pg_conn, scores[RUN_A], RUN_A, "m1")
    with pg_conn.cursor() as cur:
        cur.execute("SELECT * FROM churn.scores_current ORDER BY customer_id")
        before = cur.fetchall()
    pg_conn.commit()
    again = pgpub.publish_scores(pg_conn, scores[RUN_A], RUN_A, "m1")
    with pg_conn.cursor() as cur:
        cur.execute("SELECT * FROM churn.scores_current ORDER BY customer_id")
        after = cur.fetchall()
        cur.execute("SELECT count(*), count(DISTINCT customer_id) FROM churn.scores_history")
        history = cur.fetchone()
        cur.execute("SELECT run_key, rows, is_current FROM churn.score_runs")
        runs = cur.fetchall()
        cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'churn' AND tablename LIKE 'scores_%'")
        tables = cur.fetchone()[0]
    assert first.rows == again.rows == 6000 and again.is_current
    assert before == after and len(after) == 6000
    assert history == (6000, 6000)
    assert runs == [(RUN_A, 6000, True)]
    assert tables == 1  # no leftover staging table


def test_second_run_switches_readers_atomically_under_a_concurrent_reader(pg_conn, fresh_pg_url, scores):
    pgpub.publish_scores(pg_conn, scores[RUN_A], RUN_A, "m1")
    reader = ConsistencyReader(fresh_pg_url, {RUN_A: 6000, RUN_B: 7000})
    reader.start()
    try:
        while len(reader.answers) < 3:
            time.sleep(0.01)
        pgpub.publish_scores(pg_conn, scores[RUN_B], RUN_B, "m2", copy_batch_rows=500)
        seen = len(reader.answers)
        while len(reader.answers) < seen + 3:
            time.sleep(0.01)
    finally:
        reader.stop.set()
        reader.join(10)
    assert not reader.bad, reader.bad[:5]
    runs_seen = [runs for _, runs in reader.answers]
    assert runs_seen[0] == (RUN_A,) and runs_seen[-1] == (RUN_B,)
    # once switched, never back
    first_b = runs_seen.index((RUN_B,))
    assert all(r == (RUN_B,) for r in runs_seen[first_b:])
    with pg_conn.cursor() as cur:
        cur.execute("SELECT run_id, count(*) FROM churn.scores_history GROUP BY run_id ORDER BY run_id")
        assert cur.fetchall() == [(RUN_A, 6000), (RUN_B, 7000)]
        cur.execute("SELECT churn_probability FROM churn.scores_history WHERE customer_id = 'C00000042' "
                    "ORDER BY run_id")
        assert len(cur.fetchall()) == 1  # C42 was dropped from run B: history by customer and date
    assert pgpub.current_run(pg_conn) == RUN_B


def test_backfilled_older_run_goes_to_history_only(pg_conn, scores):
    pgpub.publish_scores(pg_conn, scores[RUN_B], RUN_B, "m2")
    older = pgpub.publish_scores(pg_conn, scores[RUN_A], RUN_A, "m1")
    assert not older.is_current
    assert pgpub.current_run(pg_conn) == RUN_B
    with pg_conn.cursor() as cur:
        cur.execute("SELECT count(*), min(run_id) FROM churn.scores_current")
        assert cur.fetchone() == (7000, RUN_B)


def test_retention_keeps_the_configured_number_of_runs(pg_conn, tmp_path):
    for day in range(1, 6):
        run = f"2026-11-0{day}"
        pgpub.publish_scores(pg_conn, write_scores(tmp_path / f"{day}.parquet", run, 0, 100, seed=day), run, "m",
                             retention_runs=3)
    with pg_conn.cursor() as cur:
        cur.execute("SELECT run_key FROM churn.score_runs ORDER BY run_key")
        assert [r[0] for r in cur.fetchall()] == ["2026-11-03", "2026-11-04", "2026-11-05"]
        cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'churn' AND tablename LIKE 'scores_%'")
        assert cur.fetchone()[0] == 3
        cur.execute("SELECT count(DISTINCT run_id) FROM churn.scores_history")
        assert cur.fetchone()[0] == 3


def test_the_prediction_log_keeps_runs_of_its_days_beyond_the_score_history(pg_conn, tmp_path):
    for day in range(1, 8):
        run = f"2026-11-0{day}"
        pgpub.publish_scores(pg_conn, write_scores(tmp_path / f"{day}.parquet", run, 0, 100, seed=day), run, "m",
                             retention_runs=2, log_days=3)
        # a re-publish of the same run (a retry) replaces its log partition, never adds rows
        if day == 6:
            pgpub.publish_scores(pg_conn, tmp_path / f"{day}.parquet", run, "m", retention_runs=2, log_days=3)
    with pg_conn.cursor() as cur:
        cur.execute("SELECT DISTINCT run_id FROM churn.scores_history ORDER BY 1")
        assert [r[0] for r in cur.fetchall()] == ["2026-11-06", "2026-11-07"]
        cur.execute("SELECT run_id, count(*), count(DISTINCT customer_id) FROM churn.prediction_log GROUP BY 1 "
                    "ORDER BY 1")
        assert cur.fetchall() == [(f"2026-11-0{d}", 100, 100) for d in (5, 6, 7)]  # 7 - 3 days < run <= 7
        cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'churn' AND tablename LIKE 'scores_%'")
        assert cur.fetchone()[0] == 3  # runs 1-4 dropped whole
        cur.execute("SELECT count(*) FROM churn.prediction_log WHERE run_id = '2026-11-07' AND model_version = '2026-11-07-logreg' "
                    "AND churn_probability IS NOT NULL")
        assert cur.fetchone()[0] == 100
    pg_conn.rollback()


def test_a_long_query_on_the_prediction_log_never_holds_the_switch_up(pg_conn, fresh_pg_url, tmp_path):
    """Retention runs after the switch: an analyst's open transaction over the log delays only the drops."""
    def publish(day: int):
        run = f"2026-11-0{day}"
        return pgpub.publish_scores(pg_conn, write_scores(tmp_path / f"{day}.parquet", run, 0, 50, seed=day), run, "m",
                                    retention_runs=2, log_days=1, switch_lock_timeout_seconds=0.5,
                                    switch_deadline_seconds=5)

    for day in (1, 2):
        publish(day)
    analyst = psycopg2.connect(fresh_pg_url)
    try:
        with analyst.cursor() as cur:
            cur.execute("SELECT count(*) FROM churn.prediction_log")  # holds its tables until the transaction ends
            assert cur.fetchone()[0] == 100
        started = time.monotonic()
        assert publish(3).is_current  # run 1 leaves the log, but its table is in the analyst's query
        assert time.monotonic() - started < 5
        with pg_conn.cursor() as cur:
            cur.execute("SELECT to_regclass('churn.scores_2026_11_01') IS NOT NULL")
            assert cur.fetchone()[0]  # kept one night more
        pg_conn.rollback()
    finally:
        analyst.close()
    publish(4)
    with pg_conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'churn' AND tablename LIKE 'scores_%'")
        assert cur.fetchone()[0] == 2  # runs 1 and 2 dropped once nobody read them
        cur.execute("SELECT DISTINCT run_id FROM churn.prediction_log ORDER BY 1")
        assert [r[0] for r in cur.fetchall()] == ["2026-11-03", "2026-11-04"]
    pg_conn.rollback()


def test_a_file_of_another_run_is_refused_before_anything_switches(pg_conn, scores):
    pgpub.publish_scores(pg_conn, scores[RUN_A], RUN_A, "m1")
    with pytest.raises(pgpub.PublishError, match="not '2026-11-22'"):
        pgpub.publish_scores(pg_conn, scores[RUN_B], "2026-11-22", "m2")
    assert pgpub.current_run(pg_conn) == RUN_A
    with pg_conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'churn' AND tablename LIKE 'scores_%'")
        assert cur.fetchone()[0] == 1


def test_unreachable_postgres_fails_the_stage_with_a_clear_error(tmp_path, scores, redis_url):
    from churn.config import ChurnConfig
    from churn.connections import Resources
    from churn.stages.publish import publish_postgres
    from tests.support.servers import free_port

    res = Resources.from_urls(f"postgresql://postgres@127.0.0.1:{free_port()}/churn?connect_timeout=2", redis_url)
    run = {"run_key": RUN_A, "run_dir": str(tmp_path), "params": {}}
    with pytest.raises(pgpub.PublishError, match="cannot reach Postgres.*CHURN_POSTGRES_URL"):
        publish_postgres(ChurnConfig(state_dir=tmp_path), res, run, scored_ref(scores[RUN_A], "m"))


def test_connection_lost_before_the_switch_leaves_the_old_batch_served(pg_conn, fresh_pg_url, pg_admin_url, scores):
    pgpub.publish_scores(pg_conn, scores[RUN_A], RUN_A, "m1")
    admin = psycopg2.connect(pg_admin_url)
    admin.autocommit = True
    pid = pg_conn.get_backend_pid()

    def kill_backend(point: str) -> None:
        if point == "loaded":  # the load committed, the switch transaction has not started
            with admin.cursor() as cur:
                cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
            time.sleep(0.2)

    with pytest.raises(pgpub.PublishError, match="Readers still see the previous batch.*reachable"):
        pgpub.publish_scores(pg_conn, scores[RUN_B], RUN_B, "m2", hook=kill_backend)
    admin.close()
    assert current_state(fresh_pg_url) == (6000, {RUN_A})
    # the Airflow retry: a new connection completes the run
    conn = psycopg2.connect(fresh_pg_url)
    pgpub.publish_scores(conn, scores[RUN_B], RUN_B, "m2")
    conn.close()
    assert current_state(fresh_pg_url) == (7000, {RUN_B})


def test_reader_role_reads_the_score_views_and_nothing_else(pg_conn, fresh_pg_url, scores):
    with pg_conn.cursor() as cur:
        cur.execute("CREATE SCHEMA src; CREATE TABLE src.customers (customer_id text); "
                    "INSERT INTO src.customers VALUES ('C1')")
    pg_conn.commit()
    pgpub.publish_scores(pg_conn, scores[RUN_A], RUN_A, "m1")
    pgpub.ensure_reader_role(pg_conn, "churn_reader", "reader-secret")
    pgpub.ensure_reader_role(pg_conn, "churn_reader", "reader-secret")  # idempotent
    pgpub.publish_scores(pg_conn, scores[RUN_B], RUN_B, "m2")  # the grant survives view replacement
    reader = psycopg2.connect(url_as(fresh_pg_url, "churn_reader", "reader-secret"))
    reader.autocommit = True
    try:
        with reader.cursor() as cur:
            cur.execute("SELECT current_user, count(*) FROM churn.scores_current")
            assert cur.fetchone() == ("churn_reader", 7000)
            cur.execute("SELECT count(*) FROM churn.scores_history")
            assert cur.fetchone()[0] == 13000
            for forbidden in ("src.customers", "churn.model_registry", "churn.score_runs", "churn.scores_2026_11_21",
                              "churn.pipeline_runs"):
                with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                    cur.execute(f"SELECT * FROM {forbidden} LIMIT 1")
            with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
                cur.execute("CREATE TABLE public.x (a int)")
    finally:
        reader.close()
    # the embedded server checks passwords on TCP: a wrong one (or none) is refused
    for bad in ("wrong-secret", ""):
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed|no password supplied"):
            psycopg2.connect(url_as(fresh_pg_url, "churn_reader", bad), connect_timeout=5)
    # the password was sent as a SCRAM verifier computed client-side, never as cleartext
    with pg_conn.cursor() as cur:
        cur.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'churn_reader'")
        stored = cur.fetchone()[0]
    pg_conn.commit()
    assert stored.startswith("SCRAM-SHA-256$4096:") and "reader-secret" not in stored


def test_reader_password_never_appears_in_the_statement_sent(pg_conn, fresh_pg_url):
    """What Postgres would log on an error is the statement text: it must hold a verifier, not the password."""
    sent = []

    class Recording(psycopg2.extensions.cursor):
        def execute(self, query, params=None):
            sent.append(self.mogrify(query, params).decode())
            return super().execute(query, params)

    conn = psycopg2.connect(fresh_pg_url, cursor_factory=Recording)
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE SCHEMA IF NOT EXISTS churn")
        conn.commit()
        pgpub.ensure_reader_role(conn, "churn_reader_verifier", "cleartext-never-sent")
    finally:
        conn.close()
    password_statements = [q for q in sent if "PASSWORD" in q]
    assert password_statements and all("SCRAM-SHA-256$" in q for q in password_statements)
    assert not any("cleartext-never-sent" in q for q in sent)
    reader = psycopg2.connect(url_as(fresh_pg_url, "churn_reader_verifier", "cleartext-never-sent"))
    reader.close()


def test_embedded_superuser_needs_its_generated_password(services, fresh_pg_url):
    secret_file = services.pg_dir / "postgres.password"
    assert secret_file.stat().st_mode & 0o077 == 0  # only the owner can read it
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed|no password supplied"):
        psycopg2.connect(url_as(fresh_pg_url, "postgres"), connect_timeout=5)
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(url_as(fresh_pg_url, "postgres", "guess"), connect_timeout=5)
    psycopg2.connect(fresh_pg_url).close()  # the URL the services hand out carries it


def test_reader_role_name_must_be_an_identifier(pg_conn):
    with pytest.raises(pgpub.ReaderRoleError, match="CHURN_PG_READER_ROLE"):
        pgpub.ensure_reader_role(pg_conn, "x; DROP TABLE y")


def test_publisher_without_createrole_still_publishes_and_reports_the_role_fix(fresh_pg_url, pg_admin_url, scores,
                                                                               tmp_path, redis_url):
    from churn.config import ChurnConfig
    from churn.connections import Resources
    from churn.stages.publish import publish_postgres

    db = fresh_pg_url.rsplit("/", 1)[1]
    publisher = f"pub_{db}"
    admin = psycopg2.connect(pg_admin_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE ROLE {publisher} LOGIN NOCREATEROLE PASSWORD 'pub-secret'")
        cur.execute(f"ALTER DATABASE {db} OWNER TO {publisher}")
    try:
        res = Resources.from_urls(url_as(fresh_pg_url, publisher, "pub-secret"), redis_url)
        cfg = ChurnConfig(state_dir=tmp_path, pg_reader_role="churn_reader_nopriv")
        out = publish_postgres(cfg, res, {"run_key": RUN_A, "run_dir": str(tmp_path), "params": {}},
                               scored_ref(scores[RUN_A], "m1"))
        assert out["rows"] == 6000 and out["is_current"]
        assert out["reader_role"].startswith("not updated") and "have a DBA run" in out["reader_role"]
        assert current_state(fresh_pg_url) == (6000, {RUN_A})
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
            cur.execute(f"DROP ROLE IF EXISTS {publisher}")
        admin.close()
