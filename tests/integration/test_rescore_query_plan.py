"""Integration: an event re-score reads only the event's customers in every table (issue 24 item 7).

A million customers in the demo's source tables (built with generate_series: 1M customers, 3M usage months,
500k support contacts); the demo feature query bound for two customers, wrapped exactly as the re-score runs
it, must plan an index scan on every table and a sequential scan on none. The nightly binding (ids NULL)
keeps the whole population. Re-score triggers on a table without an id index print the DDL to add.
"""

from __future__ import annotations

import json
from datetime import date

import psycopg2
import pytest

from churn.data import outbox, sql_source
from churn.data.generate import SOURCE_DDL
from tests.support.servers import fresh_databases

AS_OF = date(2026, 11, 20)
CUSTOMERS = 1_000_000
TABLES = ("src.customers", "src.churn_events", "src.usage_monthly", "src.support_contacts")

POPULATE = """
INSERT INTO src.customers
SELECT 'C' || lpad(i::text, 8, '0'), DATE '2024-01-01' + (i %% 600), 'monthly', 'basic', 20 + i %% 50, 'north',
       'card', i %% 2 = 0, i %% 7 = 0, 1 + i %% 3, NULL
FROM generate_series(1, %(n)s) AS i;
INSERT INTO src.churn_events
SELECT 'C' || lpad(i::text, 8, '0'), DATE '2026-06-01' + (i %% 300) FROM generate_series(1, %(n)s, 10) AS i;
INSERT INTO src.usage_monthly
SELECT 'C' || lpad(i::text, 8, '0'), (DATE '2026-10-01' - make_interval(months => m))::date, 100 + i %% 400,
       1.5, i %% 4
FROM generate_series(1, %(n)s) AS i, generate_series(0, 2) AS m;
INSERT INTO src.support_contacts
SELECT 'C' || lpad(i::text, 8, '0'), TIMESTAMP '2026-10-01' + make_interval(hours => i %% 1000), 'complaint',
       i %% 3 = 0
FROM generate_series(1, %(n)s, 2) AS i;
ANALYZE src.customers, src.churn_events, src.usage_monthly, src.support_contacts;
"""


@pytest.fixture(scope="module")
def million(services, pg_admin_url):
    """A database with the demo's source tables holding a million customers."""
    fresh_databases(pg_admin_url, "plan_1m")
    url = services.pg_url("plan_1m")
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute(SOURCE_DDL)
        cur.execute(POPULATE, {"n": CUSTOMERS})
    conn.commit()
    yield conn
    conn.close()


def _plan(conn, ids, settings: str = ""):
    query = sql_source.load_query(sql_source.DEMO_QUERY)
    if ids is not None:  # what extract_query_snapshot runs for a re-score
        query = (f"SELECT * FROM ({query}\n) AS customers_to_rescore "
                 f"WHERE \"customer_id\"::text = ANY(%(ids)s::text[])")
    bound = sql_source.bind(conn, query, AS_OF, 30, **({"ids": ids} if ids is not None else {}))
    with conn.cursor() as cur:
        if settings:
            cur.execute(settings)
        cur.execute("EXPLAIN (FORMAT JSON) " + sql_source.wrapped(bound))
        plan = cur.fetchone()[0]
    conn.rollback()
    nodes = []

    def walk(node):
        nodes.append((node["Node Type"], node.get("Relation Name"), node.get("Plan Rows")))
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return nodes


def test_a_rescore_of_two_customers_reads_each_table_through_its_id_index(million):
    nodes = _plan(million, ["C00000042", "C00777777"])
    scans = {(kind, relation) for kind, relation, _ in nodes if relation}
    assert not [s for s in scans if s[0] == "Seq Scan"], json.dumps(nodes)
    touched = {relation for _, relation in scans}
    assert {"customers", "usage_monthly", "support_contacts", "churn_events"} <= touched, scans
    assert all("Index" in kind for kind, _ in scans), scans
    # ... and an index scan that walks the whole index is no better: each reads a handful of rows
    assert all(rows <= 100 for _, relation, rows in nodes if relation), json.dumps(nodes)


def test_a_burst_of_ten_thousand_customers_joins_without_nested_loops_and_extracts_the_same_rows(million, services,
                                                                                               tmp_path):
    """A burst's query is run with nested loops off (their cost grows with the square of the batch when the
    planner underestimates the rows kept: 13 s for 10,000 customers at 10M); the rows are those of the query."""
    from churn.data.spec import synthetic_spec

    ids = [f"C{i:08d}" for i in range(7, 1_000_000, 100)]  # 10,000 customers spread over the population
    assert len(ids) == 10_000 and len(ids) >= sql_source._MANY_IDS
    nodes = _plan(million, ids, sql_source._MANY_IDS_SETTINGS)
    assert not [n for n in nodes if n[0] == "Nested Loop"], json.dumps(nodes)
    # the extraction itself sets it for a burst, and not for a single event (a logging connection sees it)
    import logging

    from psycopg2.extras import LoggingConnection

    logged = psycopg2.connect(services.pg_url("plan_1m"), connection_factory=LoggingConnection)
    statements: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            statements.append(record.getMessage())

    sink = logging.getLogger("test.sql")
    sink.addHandler(Collect())
    sink.setLevel(logging.DEBUG)
    logged.initialize(sink)
    query = sql_source.load_query(sql_source.DEMO_QUERY)
    sql_source.extract_query_snapshot(logged, query, AS_OF, tmp_path / "one.parquet", synthetic_spec(),
                                      labelled=False, label_window_days=30, ids=ids[:2])
    assert not [s for s in statements if "enable_nestloop" in s]
    snapshot = sql_source.extract_query_snapshot(logged, query, AS_OF, tmp_path / "burst.parquet", synthetic_spec(),
                                                 labelled=False, label_window_days=30, ids=ids)
    assert [s for s in statements if sql_source._MANY_IDS_SETTINGS in s]
    logged.close()
    import pyarrow.parquet as pq

    extracted = pq.read_table(snapshot.path).to_pydict()
    with million.cursor() as cur:
        bound = sql_source.bind(million, sql_source.load_query(sql_source.DEMO_QUERY), AS_OF, 30)
        cur.execute(f"SELECT customer_id, tenure_days, usage_months, contacts_90d FROM ({bound}\n) AS q "
                    "WHERE customer_id = ANY(%s) ORDER BY customer_id", (ids,))
        expected = cur.fetchall()
    million.rollback()
    got = sorted(zip(extracted["customer_id"], extracted["tenure_days"], extracted["usage_months"],
                     extracted["contacts_90d"]))
    assert got == [tuple(r) for r in expected] and len(got) > 5_000


def test_the_nightly_binding_keeps_the_whole_population(million):
    bound = sql_source.bind(million, sql_source.load_query(sql_source.DEMO_QUERY), AS_OF, 30)
    assert "NULL::text[] IS NULL" in bound  # the ids filter folds away for the nightly snapshot
    with million.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM ({bound}\n) AS q")
        rows = cur.fetchone()[0]
        cur.execute("SELECT count(*) FROM src.customers c LEFT JOIN src.churn_events e USING (customer_id) "
                    "WHERE c.signup_date <= %s AND (e.churn_date IS NULL OR e.churn_date > %s)", (AS_OF, AS_OF))
        population = cur.fetchone()[0]
    million.rollback()
    assert rows == population > CUSTOMERS * 0.5


def test_installing_triggers_on_a_table_without_an_id_index_prints_the_ddl(million, caplog):
    with million.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS src.plan_changes (customer_id text NOT NULL, changed_at timestamp)")
    million.commit()
    assert outbox.missing_id_indexes(million, TABLES, "customer_id") == []
    missing = outbox.missing_id_indexes(million, ["src.plan_changes"], "customer_id")
    assert missing == ['CREATE INDEX CONCURRENTLY IF NOT EXISTS "plan_changes_customer_id_idx" ON src.plan_changes '
                       '("customer_id");']
    with caplog.at_level("WARNING", logger="churn.data.outbox"):
        outbox.install_triggers(million, ["src.plan_changes"], "customer_id")
    assert missing[0] in caplog.text
    million.autocommit = True
    with million.cursor() as cur:
        cur.execute(missing[0])  # the printed statement runs as printed
    million.autocommit = False
    assert outbox.missing_id_indexes(million, ["src.plan_changes"], "customer_id") == []
