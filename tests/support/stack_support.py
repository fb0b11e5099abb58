"""Real Airflow deployments for tests: the same ``churn.dev.stack`` that ``make demo`` / ``make cluster`` use.

Each stack gets its own databases on the session's embedded Postgres (churn data and Airflow
metadata), its own Redis databases, a free API port and a private state folder.
"""

from __future__ import annotations

import contextlib
from datetime import date
from pathlib import Path
from typing import Iterator

import psycopg2

from churn.dev.services import PUBLISHER_ROLE
from churn.dev.stack import AirflowStack
from tests.support.net import free_port
from tests.support.servers import fresh_databases, fresh_stores

# A short search that still evaluates pipelines on 2 cores (the default search space and local cluster).
SHORT_SEARCH = {"train_budget_minutes": "0.3", "max_eval_minutes": "0.1", "tpot_population_size": "8",
                "tpot_cv": "2"}
# A Feb-29 cron: unpausing the DAG creates no scheduled run of its own, so the test's run is the only one.
NO_SCHEDULED_RUN = "0 2 29 2 *"


@contextlib.contextmanager
def running_stack(services, pg_admin_url: str, tmp: Path, name: str, executor: str, redis_db: int,
                  as_of: date, customers: int = 5000, **churn: str) -> Iterator[AirflowStack]:
    """Load a synthetic population as of ``as_of``, start every component, yield, and stop everything."""
    fresh_databases(pg_admin_url, f"{name}_airflow")
    fresh_stores(services, pg_admin_url, name, redis_db, customers, as_of, seed=21)
    # Least privilege as in production: the owner role migrates, the pipeline runs as the publisher.
    services.provision(name)
    pg_url, redis_url = services.role_url(PUBLISHER_ROLE, name), services.redis_url_db(redis_db)
    stack = AirflowStack(
        state_dir=tmp / "state", churn_pg_url=pg_url, redis_url=redis_url,
        metadata_url=services.pg_url(f"{name}_airflow", driver="postgresql+psycopg2"),
        api_port=free_port(), executor=executor,
        celery_broker_url=services.redis_url_db(redis_db + 1),
        dask_scheduler_port=free_port(), churn_env=dict(churn),
        # A killed worker's task is noticed in seconds, not the default 5 minutes.
        extra_env={"AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
                   "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5"},
    )
    try:
        stack.start(timeout=300)
        yield stack
    finally:
        stopped = stack.stop()
        print(f"stopped {stopped}")


def scores_by_customer(pg_url: str) -> dict[str, tuple]:
    """churn.scores_current as {customer_id: (probability, band, decile, model_version, run_id)}."""
    conn = psycopg2.connect(pg_url)
    with conn.cursor() as cur:
        cur.execute("SELECT customer_id, churn_probability, risk_band, risk_decile, model_version, run_id "
                    "FROM churn.scores_current")
        rows = {r[0]: r[1:] for r in cur.fetchall()}
    conn.close()
    return rows


def failure_details(stack: AirflowStack, run_id: str) -> str:
    """The failed task instances of a run and the tail of each component log (assertion messages)."""
    failed = [t for t in stack.task_instances(run_id) if t.get("state") not in ("success", "skipped")]
    logs = []
    for log_file in sorted(stack.run_dir.glob("*.log")):
        logs.append(f"--- {log_file.name}\n" + "\n".join(log_file.read_text(errors="replace").splitlines()[-15:]))
    task_logs = []
    for path in sorted((stack.home / "logs").rglob("*.log"))[-200:]:
        if any(f"task_id={t['task_id']}" in str(path) for t in failed):
            task_logs.append(f"--- {path}\n" + path.read_text(errors="replace")[-3000:])
    return f"failed: {[(t['task_id'], t.get('map_index'), t.get('state')) for t in failed]}\n" + \
        "\n".join(task_logs + logs)


def complaint_reaches_both_stores(stack: AirflowStack, pg_url: str, redis_url: str, timeout: float = 240) -> float:
    """Install the outbox, turn churn_rescore on, commit complaints for one customer as an application would,
    and wait until Redis and Postgres serve that customer's event score; returns the lag in seconds."""
    import time
    from datetime import datetime, timezone

    import redis

    from churn.data.outbox import DEMO_TABLES, install_triggers
    from churn.publish.redis_store import lookup_score

    conn = psycopg2.connect(pg_url)
    install_triggers(conn, DEMO_TABLES, "customer_id")
    stack.unpause("churn_rescore")
    with conn.cursor() as cur:
        cur.execute("SELECT customer_id, churn_probability FROM churn.scores_current WHERE churn_probability "
                    "BETWEEN 0.02 AND 0.4 ORDER BY customer_id LIMIT 1")
        customer, before = cur.fetchone()
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        cur.executemany("INSERT INTO src.support_contacts VALUES (%s, %s, 'complaint', false)", [(customer, now)] * 4)
    conn.commit()
    committed = time.monotonic()
    client = redis.Redis.from_url(redis_url)
    record = None
    while time.monotonic() - committed < timeout:
        record = lookup_score(client, customer)
        if record and record.get("source") == "event":
            break
        time.sleep(0.5)
    lag = time.monotonic() - committed
    assert record and record.get("source") == "event", (record, stack.dag_runs("churn_rescore"))
    with conn.cursor() as cur:
        cur.execute("SELECT churn_probability, source FROM churn.scores_current WHERE customer_id = %s", (customer,))
        proba, source = cur.fetchone()
    conn.close()
    assert source == "event" and abs(record["churn_probability"] - proba) < 1e-6 and proba > before
    deadline = time.monotonic() + 120  # the task still marks its events done after writing Redis
    runs: list[dict] = []
    while time.monotonic() < deadline:
        runs = stack.dag_runs("churn_rescore")
        if any(r["state"] == "success" and r["run_type"] == "asset_triggered" for r in runs):
            break
        time.sleep(1)
    assert any(r["state"] == "success" and r["run_type"] == "asset_triggered" for r in runs), runs
    return lag
