"""End to end: churn_nightly runs through real Airflow against real Postgres and Redis.

Scores then read back from Postgres (``churn.scores_current``) and from Redis
(the documented key contract) must agree for every customer.
"""

from __future__ import annotations

import json
from datetime import date

import psycopg2
import pytest
import redis

from churn.publish.redis_store import lookup_score
from tests.support.airflow_env import airflow_env, run_airflow
from tests.support.servers import fresh_stores

RUN_DATE = date(2026, 11, 20)


@pytest.fixture(scope="module")
def nightly_run(services, tmp_path_factory, pg_admin_url):
    tmp = tmp_path_factory.mktemp("e2e")
    pg_url, redis_url = fresh_stores(services, pg_admin_url, "e2e", 3, customers=5000, as_of=RUN_DATE, seed=21)
    # budgets with room for the e2e tier's two workers beside the search: at 0.3 / 0.1 min a loaded CI run once timed
    # out every pipeline of the first generation (no TPOT candidate)
    env = airflow_env(tmp, pg_url, redis_url, train_budget_minutes="0.6", max_eval_minutes="0.25",
                      tpot_population_size="8", tpot_cv="2")
    migrate = run_airflow(["db", "migrate"], env, tmp / "migrate.log")
    assert migrate.returncode == 0, (tmp / "migrate.log").read_text()[-3000:]
    proc = run_airflow(["dags", "test", "churn_nightly", RUN_DATE.isoformat()], env, tmp / "dags-test.log")
    log = (tmp / "dags-test.log").read_text()
    assert proc.returncode == 0 and "state=success" in log, log[-5000:]
    return {"pg_url": pg_url, "redis_url": redis_url, "state": tmp / "state", "log": log, "env": env, "tmp": tmp}


def test_scores_agree_between_postgres_and_redis_for_every_customer(nightly_run):
    conn = psycopg2.connect(nightly_run["pg_url"])
    with conn.cursor() as cur:
        cur.execute("SELECT customer_id, churn_probability, risk_band, risk_decile, model_version, run_id "
                    "FROM churn.scores_current")
        rows = cur.fetchall()
        cur.execute("SELECT count(*) FROM src.customers c LEFT JOIN src.churn_events e USING (customer_id) "
                    "WHERE c.signup_date <= %s AND (e.churn_date IS NULL OR e.churn_date > %s)", (RUN_DATE, RUN_DATE))
        active = cur.fetchone()[0]
    conn.close()
    assert len(rows) == active > 1000
    client = redis.Redis.from_url(nightly_run["redis_url"])
    for row in rows:  # the default layout (compact), read the way the documented clients read it
        record = lookup_score(client, row[0])
        assert record is not None, f"{row[0]} missing in Redis"
        assert record["customer_id"] == row[0]
        assert abs(record["churn_probability"] - row[1]) < 1e-6  # rounded to millionths
        assert (record["risk_band"], record["risk_decile"], record["model_version"], record["run_id"]) == row[2:]
    meta = {k.decode(): v.decode() for k, v in client.hgetall("churn:meta").items()}
    assert meta["layout"] == "compact"
    buckets = [k for k in client.scan_iter("churn:c:*")]
    assert {k.decode().split(":")[2] for k in buckets} == {meta["buckets"]}
    assert sum(client.hlen(k) for k in buckets) == len(rows)  # one field per served customer, nothing else
    assert client.dbsize() == len(buckets) + 1  # the buckets plus the churn:meta marker
    assert lookup_score(client, rows[0][0])["run_id"] == RUN_DATE.isoformat()
    assert client.hget("churn:meta", "run_id") == RUN_DATE.isoformat().encode()


def test_model_was_trained_gated_and_registered(nightly_run):
    conn = psycopg2.connect(nightly_run["pg_url"])
    with conn.cursor() as cur:
        cur.execute("SELECT version, status, model_name, (metrics->>'roc_auc')::float FROM churn.model_registry")
        models = {row[0]: row[1:] for row in cur.fetchall()}
        cur.execute("SELECT version FROM churn.model_champion")
        champion = cur.fetchone()[0]
    conn.close()
    assert {m[1] for m in models.values()} == {"tpot", "logistic_baseline", "hist_gradient_boosting"}
    assert models[champion][0] == "champion"
    assert 0.6 < models[champion][2] < 1.0
    assert "TPOT search done" in nightly_run["log"]


def test_summary_and_export_are_written(nightly_run):
    summary = json.loads((nightly_run["state"] / "runs" / RUN_DATE.isoformat() / "summary.json").read_text())
    assert summary["published_postgres"] == summary["published_redis"] == summary["scored"] > 0
    assert 0.5 < summary["champion_test_roc_auc"] < 1.0  # the champion's own test metric, found by its version
    assert summary["sample_lookup"]["record"]["customer_id"] == summary["sample_lookup"]["customer_id"]
    export = nightly_run["state"] / "exports" / f"churn_high_risk_{RUN_DATE.isoformat()}.csv"
    assert export.exists() and str(export) == summary["export_path"]
    header = export.read_text().splitlines()[0]
    assert header.startswith("customer_id,churn_probability,risk_band")
