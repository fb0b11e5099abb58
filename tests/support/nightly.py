"""Every stage of churn_nightly in this process, in DAG order (the re-score tests' served batch)."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import psycopg2
from psycopg2.extras import execute_values

from churn.config import ChurnConfig
from churn.connections import Resources
from churn.stages import data, experiments, model, publish, scoring
from churn.stages.common import start_run

RUN_DATE = date(2026, 11, 20)


def run_nightly(cfg: ChurnConfig, res: Resources, as_of: date) -> dict:
    """Every stage of churn_nightly in this process, in DAG order; returns the scored reference."""
    run = start_run(cfg, res, as_of, f"test-{as_of}")
    ingested = data.ingest(cfg, res, run)
    validated = data.profile_and_validate(cfg, res, run, ingested)
    drifted = data.drift(cfg, res, run, validated)
    splits = data.split(cfg, res, run, validated)
    trained = model.train(cfg, res, run, splits, drifted)
    evaluation = model.evaluate_and_gate(cfg, res, run, splits, trained)
    registered = model.register(cfg, res, run, splits, evaluation)
    assigned = experiments.assign_experiments(cfg, res, run, validated, registered)
    scored = scoring.score(cfg, res, run, validated, registered, assigned)
    pg_published = publish.publish_postgres(cfg, res, run, scored)
    redis_published = publish.publish_redis(cfg, res, run, scored, pg_published)
    return {"run": run, "scored": scored, "pg_published": pg_published, "assigned": assigned,
            "redis_published": redis_published, "validated": validated}


def complain(pg_url: str, customer_ids: list[str], complaints: int = 4) -> None:
    """What the support application does: unresolved complaints for these customers, committed now."""
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    rows = [(cid, now - timedelta(minutes=i), "complaint", False) for cid in customer_ids for i in range(complaints)]
    conn = psycopg2.connect(pg_url)
    with conn.cursor() as cur:
        execute_values(cur, "INSERT INTO src.support_contacts (customer_id, contact_ts, kind, resolved) VALUES %s",
                       rows)
    conn.commit()
    conn.close()
