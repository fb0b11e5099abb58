"""Unit: how churn.dev.stack names runs and configures components (no processes started)."""

from __future__ import annotations

from datetime import date, datetime, timezone
from pathlib import Path

from churn.dev.stack import AirflowStack, _cron_time, _logical_date


def test_demo_run_takes_the_nightly_tick_of_its_date_unless_that_is_still_ahead():
    assert _cron_time("0 2 * * *") == "02:00:00" and _cron_time("30 23 * * 1-5") == "23:30:00"
    assert _cron_time("@daily") == "00:00:00"
    after = datetime(2026, 11, 25, 11, 0, tzinfo=timezone.utc)
    assert _logical_date(date(2026, 11, 25), "0 2 * * *", after) == "2026-11-25T02:00:00Z"
    # before 02:00 the tick is in the future, and the scheduler never starts a future logical date
    before = datetime(2026, 11, 25, 1, 30, 5, 123, tzinfo=timezone.utc)
    assert _logical_date(date(2026, 11, 25), "0 2 * * *", before) == "2026-11-25T01:30:05Z"
    assert _logical_date(date(2026, 11, 20), "0 2 * * *", before) == "2026-11-20T02:00:00Z"


def test_celery_stack_keeps_the_broker_off_the_score_keyspace_and_shares_dask(tmp_path: Path):
    stack = AirflowStack(state_dir=tmp_path, churn_pg_url="postgresql://u@127.0.0.1:1/churn",
                         redis_url="redis://127.0.0.1:2/0", metadata_url="postgresql+psycopg2://u@127.0.0.1:1/af",
                         api_port=8123, executor="celery", celery_broker_url="redis://127.0.0.1:2/1",
                         dask_scheduler_port=8799, churn_env={"score_partitions": "3"})
    env = stack.env(worker_name="celery-worker-2")
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"] != env["AIRFLOW_CONN_CHURN_REDIS"]
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+postgresql://u@127.0.0.1:1/af"
    assert env["CHURN_DASK_SCHEDULER_ADDRESS"] == "tcp://127.0.0.1:8799"
    assert env["CHURN_SCORE_PARTITIONS"] == "3" and env["CHURN_WORKER_NAME"] == "celery-worker-2"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:8123/execution/"
    local = AirflowStack(state_dir=tmp_path, churn_pg_url="x", redis_url="y", metadata_url="z")
    assert local.env()["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert "CHURN_DASK_SCHEDULER_ADDRESS" not in local.env()  # default: TPOT's own local cluster
