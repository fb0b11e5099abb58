"""SQL source (CHURN_SOURCE=sql): your own database and feature query, and the leakage check.

The "team's database" is a second Postgres database whose schema is nothing like the demo's: accounts
(``acct_no``, ``opened_on``, ``tier`` ...), support tickets with serial numbers, and a status history in
which the label is a status change to ``closed``. The nightly run on it is in tests/e2e/test_data_sql_source.py.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pandas as pd
import psycopg2
import pytest

from churn.config import ChurnConfig
from churn.data.generate import generate, load_source_tables
from churn.data.ingest import extract_snapshot
from churn.data.spec import DatasetSpec, spec_from_config
from churn.data.leakage import check_leakage
from churn.data.sql_source import (DEMO_QUERY, SqlSourceError, bind, extract_query_snapshot,
                                   load_query, read_sample)
from tests.support.crm import CORRECT_QUERY, RUN_DATE, WINDOW, crm_tables, load_team_database, write_query
from tests.support.servers import fresh_databases

TRAIN_AS_OF = RUN_DATE - timedelta(days=WINDOW)

# Reads the future: tickets are counted up to today, not up to as_of.
LEAKY_FEATURE_QUERY = CORRECT_QUERY.replace("WHERE opened_at < %(as_of)s::date AND opened_at", "WHERE opened_at")
# Reads the future through the label: "ever closed after as_of", not "closed within the window".
LEAKY_LABEL_QUERY = CORRECT_QUERY.replace("AND s.changed_at < %(as_of)s::date + %(label_window_days)s::int)", ")")


@pytest.fixture(scope="module")
def crm_url(services, pg_admin_url) -> str:
    """A database of its own with the crm schema and data (the team's database, not the platform's)."""
    fresh_databases(pg_admin_url, "team_crm")
    url = services.pg_url("team_crm")
    load_team_database(url)
    return url


@pytest.fixture
def crm(crm_url):
    conn = psycopg2.connect(crm_url)
    yield conn
    conn.close()


CRM_SPEC = DatasetSpec("crm", "sql", "acct_no", "closed", numeric=["monthly_fee", "tenure_days", "tickets_60d",
                                                                 "worst_severity"],
                       boolean=["autopay"], categorical=["tier", "region_code"], suite="crm")


def test_extraction_is_point_in_time_with_the_label_from_the_window_only(crm, tmp_path):
    query = load_query(write_query(tmp_path, CORRECT_QUERY))
    train = extract_query_snapshot(crm, query, TRAIN_AS_OF, tmp_path / "train.parquet", CRM_SPEC, labelled=True,
                                   label_window_days=WINDOW)
    frame = pd.read_parquet(train.path)
    with crm.cursor() as cur:
        cur.execute("SELECT count(*) FROM crm.accounts a WHERE opened_on < %s AND NOT EXISTS (SELECT 1 FROM "
                    "crm.status_changes s WHERE s.acct_no = a.acct_no AND new_status = 'closed' AND changed_at < %s)",
                    (TRAIN_AS_OF, TRAIN_AS_OF))
        population = cur.fetchone()[0]
        cur.execute("SELECT count(*) FROM crm.status_changes WHERE new_status = 'closed' AND changed_at >= %s "
                    "AND changed_at < %s", (TRAIN_AS_OF, RUN_DATE))
        closed_in_window = cur.fetchone()[0]
    assert train.rows == len(frame) == population and frame["acct_no"].is_unique
    assert int(frame["closed"].sum()) == closed_in_window > 50
    assert list(frame.columns) == ["acct_no", *CRM_SPEC.numeric, "autopay", "tier", "region_code", "closed"]
    assert frame["autopay"].dtype == bool and frame["closed"].dtype == "int8"
    assert train.ignored_columns == ["email"]  # returned by the query, not in the spec: not read
    score = extract_query_snapshot(crm, query, RUN_DATE, tmp_path / "score.parquet", CRM_SPEC, labelled=False)
    assert "closed" not in pd.read_parquet(score.path).columns and score.rows > 0


def test_a_query_that_does_not_fit_the_spec_says_what_to_fix(crm, tmp_path):
    query = load_query(write_query(tmp_path, CORRECT_QUERY))
    renamed = DatasetSpec(**{**CRM_SPEC.as_dict(), "numeric": ["monthly_fee", "fee_per_line"]})
    with pytest.raises(SqlSourceError, match=r"returns no column\(s\) \['fee_per_line'\]"):
        extract_query_snapshot(crm, query, RUN_DATE, tmp_path / "s.parquet", renamed, labelled=False)
    wrong_kind = DatasetSpec(**{**CRM_SPEC.as_dict(), "numeric": [*CRM_SPEC.numeric, "tier"], "categorical":
                                ["region_code"]})
    with pytest.raises(SqlSourceError, match="does not match the dataset spec's types.*Cast the column"):
        extract_query_snapshot(crm, query, RUN_DATE, tmp_path / "s.parquet", wrong_kind, labelled=False)
    assert not (tmp_path / "s.parquet").exists() and not (tmp_path / "s.parquet.tmp").exists()
    broken = load_query(write_query(tmp_path, CORRECT_QUERY.replace("crm.tickets", "crm.ticket"), "broken.sql"))
    with pytest.raises(SqlSourceError, match='(?s)relation "crm.ticket" does not exist.*Is CHURN_SOURCE_CONN_ID'):
        extract_query_snapshot(crm, broken, RUN_DATE, tmp_path / "s.parquet", CRM_SPEC, labelled=False)
    # an error while rows stream (planning succeeded): surfaces from the COPY thread, no file, usable connection
    failing = load_query(write_query(tmp_path, CORRECT_QUERY.replace(
        "a.monthly_fee::float8 AS monthly_fee", "(1 / (a.monthly_fee::int - a.monthly_fee::int))::float8 AS monthly_fee"),
        "failing.sql"))
    with pytest.raises(SqlSourceError, match="(?s)could not read the feature query's result.*division by zero"):
        extract_query_snapshot(crm, failing, RUN_DATE, tmp_path / "s.parquet", CRM_SPEC, labelled=False)
    assert sorted(p.name for p in tmp_path.glob("s.parquet*")) == []
    with crm.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)


def test_kinds_of_a_sql_source_are_inferred_from_the_query_result(crm, tmp_path):
    query_file = write_query(tmp_path, CORRECT_QUERY)
    cfg = ChurnConfig.from_env({"CHURN_SOURCE": "sql", "CHURN_SOURCE_QUERY": str(query_file),
                                "CHURN_ID_COLUMN": "acct_no", "CHURN_LABEL_COLUMN": "closed"})
    sample = read_sample(crm, bind(crm, load_query(query_file), TRAIN_AS_OF, WINDOW), cfg.infer_sample_rows)
    spec = spec_from_config(cfg, sample=sample)
    assert spec.source == "sql"
    assert (sorted(spec.numeric), spec.boolean, sorted(spec.categorical)) == (
        sorted(CRM_SPEC.numeric), ["autopay"], ["region_code", "tier"])
    assert spec.inference["ignored"] == {"email": "id-like (%s distinct of %s)" % (len(sample), len(sample))}
    assert spec.inference["query"] == str(query_file)


def test_leakage_check_passes_the_point_in_time_query_and_refuses_reads_of_the_future(crm, tmp_path):
    def check(text: str):
        return check_leakage(crm, load_query(write_query(tmp_path, text, "q.sql")), TRAIN_AS_OF, WINDOW,
                             id_column="acct_no", label_column="closed")

    good = check(CORRECT_QUERY)
    assert good.status == "passed", good
    probed = {(p.table, p.probe) for p in good.probes}
    assert {("crm.tickets", "features"), ("crm.tickets", "label"), ("crm.status_changes", "features"),
            ("crm.status_changes", "label"), ("crm.accounts", "features")} <= probed
    assert all(p.rows_added > 0 and not p.changed for p in good.probes)

    leaky = check(LEAKY_FEATURE_QUERY)
    assert leaky.status == "failed"
    assert [(p.table, p.probe) for p in leaky.probes if p.changed] == [("crm.tickets", "features"),
                                                                       ("crm.tickets", "label")]
    assert "tickets_60d" in next(p.detail for p in leaky.probes if p.changed)

    label_leak = check(LEAKY_LABEL_QUERY)
    assert label_leak.status == "failed"
    assert [(p.table, p.probe) for p in label_leak.probes if p.changed] == [("crm.status_changes", "label")]
    # the check leaves nothing behind in the team's database
    with crm.cursor() as cur:
        cur.execute("SELECT (SELECT count(*) FROM crm.tickets), (SELECT count(*) FROM crm.status_changes)")
        counts = cur.fetchone()
    tables = crm_tables()
    assert counts == (len(tables["tickets"]), len(tables["status_changes"]))


def test_the_demo_source_is_one_such_query_and_passes_the_leakage_check(pg_conn, tmp_path):
    load_source_tables(pg_conn, generate(800, RUN_DATE, seed=3))
    report = check_leakage(pg_conn, load_query(DEMO_QUERY), TRAIN_AS_OF, WINDOW, id_column="customer_id",
                           label_column="churned")
    assert report.status == "passed", report
    assert {p.table for p in report.probes} >= {"src.usage_monthly", "src.support_contacts", "src.customers"}
    direct = extract_snapshot(pg_conn, TRAIN_AS_OF, tmp_path / "demo.parquet", WINDOW)  # the demo's entry point
    assert direct.rows == report.rows


def test_leakage_check_command_exits_by_its_verdict(crm_url, tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHURN_", "AIRFLOW"))}
    env.update(CHURN_SOURCE="sql", CHURN_SOURCE_URL=crm_url, CHURN_ID_COLUMN="acct_no",
               CHURN_LABEL_COLUMN="closed", CHURN_STATE_DIR=str(tmp_path / "state"))
    outcomes = {}
    for name, text in (("good", CORRECT_QUERY), ("leaky", LEAKY_FEATURE_QUERY)):
        env["CHURN_SOURCE_QUERY"] = str(write_query(tmp_path, text, f"{name}.sql"))
        proc = subprocess.run([sys.executable, "-m", "churn.data.leakage", "check-leakage", "--as-of",
                               TRAIN_AS_OF.isoformat()], env=env, capture_output=True, text=True, timeout=120)
        outcomes[name] = (proc.returncode, json.loads(proc.stdout)["status"], proc.stderr.strip().splitlines()[-1])
    assert outcomes["good"][:2] == (0, "passed") and outcomes["good"][2].endswith("no leakage found")
    assert outcomes["leaky"][:2] == (1, "failed") and "LEAKAGE" in outcomes["leaky"][2]
