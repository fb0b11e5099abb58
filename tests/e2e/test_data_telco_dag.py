"""End to end: churn_nightly runs the Telco CSV through real Airflow with configuration only (no code change).

Same DAG as the synthetic e2e test; only ``CHURN_*`` variables differ, and only the "bring your own data"
ones: the file, its id and its label (with the label's values). Column kinds are inferred, a suite is proposed
on this first run, and scores are published (``CHURN_TRAIN_TPOT=false`` keeps the run short: TPOT itself is
covered by tests/e2e/test_e2e_nightly.py). The hand-written Telco configuration runs in
tests/integration/test_data_telco.py.
"""

from __future__ import annotations

import csv
import json
from datetime import date

import psycopg2
import redis

from churn.publish.redis_keys import lookup_score

from tests.support.airflow_env import airflow_env, run_airflow
from tests.support.datasets import TELCO, TELCO_ENV, require_dataset
from tests.support.servers import fresh_stores

RUN_DATE = date(2026, 11, 20)
# Customer attributes of a file source come from the scored file itself (there is no src.customers).
TELCO_EXPORTS = ('[{"name": "high_risk", "band": "high", "columns": ["customer_id", "churn_probability", '
                 '"risk_band", "risk_decile", "model_version", "run_id", "Contract", "MonthlyCharges"]}]')


def test_telco_file_runs_through_the_nightly_dag(services, tmp_path, pg_admin_url):
    require_dataset(TELCO)
    pg_url, redis_url = fresh_stores(services, pg_admin_url, "e2e_telco", 4)
    env = airflow_env(tmp_path, pg_url, redis_url, train_tpot="false")
    env.update({key: TELCO_ENV[key] for key in ("CHURN_SOURCE", "CHURN_FILE_PATH", "CHURN_ID_COLUMN",
                                                "CHURN_LABEL_COLUMN", "CHURN_LABEL_VALUES",
                                                "CHURN_RISK_BAND_CUTS")})
    env["CHURN_EXPORTS"] = TELCO_EXPORTS
    assert run_airflow(["db", "migrate"], env, tmp_path / "migrate.log").returncode == 0
    proc = run_airflow(["dags", "test", "churn_nightly", RUN_DATE.isoformat()], env, tmp_path / "dags-test.log")
    log = (tmp_path / "dags-test.log").read_text()
    assert proc.returncode == 0 and "state=success" in log, log[-5000:]

    conn = psycopg2.connect(pg_url)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*), count(DISTINCT model_version) FROM churn.scores_current")
        assert cur.fetchone() == (7043, 1)
        cur.execute("SELECT churn_probability FROM churn.scores_current WHERE customer_id = '7590-VHVEG'")
        pg_proba = cur.fetchone()[0]
        cur.execute("SELECT dataset, rows_checked, rows_quarantined FROM churn.validation_results ORDER BY 1")
        assert cur.fetchall() == [("score", 7043, 0), ("train", 7043, 0)]
        cur.execute("SELECT signature->>'id_column' FROM churn.model_registry")
        assert {row[0] for row in cur.fetchall()} == {"customerID"}
    conn.close()
    record = lookup_score(redis.Redis.from_url(redis_url), "7590-VHVEG")
    assert abs(record["churn_probability"] - pg_proba) < 1e-6  # rounded to millionths
    # the export: the high band from Postgres, with the file's own Contract / MonthlyCharges per customer
    conn = psycopg2.connect(pg_url)
    with conn.cursor() as cur:
        cur.execute("SELECT customer_id FROM churn.scores_current WHERE risk_band = 'high'")
        high = {row[0] for row in cur.fetchall()}
    conn.close()
    export = tmp_path / "state" / "exports" / f"churn_high_risk_{RUN_DATE.isoformat()}.csv"
    with export.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["customer_id"] for row in rows} == high and len(high) > 100
    telco = {row["customerID"]: row for row in csv.DictReader(TELCO.open(newline="", encoding="utf-8"))}
    for row in rows:
        assert row["Contract"] == telco[row["customer_id"]]["Contract"]
        assert float(row["MonthlyCharges"]) == float(telco[row["customer_id"]]["MonthlyCharges"])
    run_dir = tmp_path / "state" / "runs" / RUN_DATE.isoformat()
    assert (run_dir / "data_docs" / "index.html").exists()
    spec = json.loads((run_dir / "dataset_spec.json").read_text())
    # kinds inferred from the file equal the README's hand-written Telco configuration
    for kind, variable in (("numeric", "CHURN_NUMERIC_COLUMNS"), ("boolean", "CHURN_BOOLEAN_COLUMNS"),
                           ("categorical", "CHURN_CATEGORICAL_COLUMNS")):
        assert set(spec[kind]) == set(TELCO_ENV[variable].split(",")), kind
    assert spec["inference"]["sample_rows"] == 7043
    conn = psycopg2.connect(pg_url)
    with conn.cursor() as cur:  # no suite existed: this first good run proposed one, enforced from the next run
        cur.execute("SELECT name, version FROM churn.suites")
        assert cur.fetchall() == [("file_source", 1)]
        cur.execute("SELECT DISTINCT suite_version FROM churn.validation_results")
        assert cur.fetchall() == [("baseline",)]
    conn.close()
