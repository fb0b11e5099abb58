"""Shared by every stage: per-run overrides, the run reference, timing, and opening a run."""

from __future__ import annotations

import logging
import time
from datetime import date
from typing import Any

from churn.config import ChurnConfig
from churn.connections import Resources
from churn.db import ensure_schema
from churn.stages.records import RunRef

log = logging.getLogger(__name__)

# Per-run overrides accepted from the Airflow trigger form (param name -> config field).
PARAM_FIELDS = {"train_budget_minutes": "train_budget_minutes", "max_eval_minutes": "max_eval_minutes",
                "min_roc_auc": "min_roc_auc", "score_partitions": "score_partitions"}


class NoChampionError(RuntimeError):
    """There is no promoted model to score with."""


def cfg_for(cfg: ChurnConfig, run: dict) -> ChurnConfig:
    """The configuration with the run's trigger-form overrides applied."""
    overrides = {field: run["params"][param] for param, field in PARAM_FIELDS.items()
                 if run.get("params", {}).get(param) is not None}
    return cfg.replace(**overrides) if overrides else cfg


def is_dry_run(run: dict) -> bool:
    """True when the trigger asked to score and report but publish nothing."""
    return bool(run.get("params", {}).get("dry_run"))


def timed(run: dict, stage: str, started: float, result: Any) -> dict:
    """Set the stage's own ``stage_seconds`` on its typed result and return the serialized form (XCom)."""
    seconds = round(time.monotonic() - started, 3)
    log.info("stage %s of run %s took %.2f s", stage, run["run_key"], seconds)
    if isinstance(result, dict):  # the re-score's totals: a free-form dict
        result["stage_seconds"] = seconds
        return result
    result.stage_seconds = seconds
    return result.as_dict()


def start_run(cfg: ChurnConfig, res: Resources, as_of: date, airflow_run_id: str, params: dict | None = None) -> dict:
    """Open (or re-open) the run for ``as_of`` and return its reference."""
    run_key = as_of.isoformat()
    run_dir = cfg.runs_dir / run_key
    run_dir.mkdir(parents=True, exist_ok=True)
    with res.pg_session() as conn:
        ensure_schema(conn)
        with conn.cursor() as cur:
            cur.execute(
                """INSERT INTO churn.pipeline_runs (run_key, airflow_run_id, status) VALUES (%s, %s, 'running')
                   ON CONFLICT (run_key) DO UPDATE SET airflow_run_id = EXCLUDED.airflow_run_id,
                   status = 'running', started_at = now(), finished_at = NULL""",
                (run_key, airflow_run_id),
            )
        conn.commit()
    return RunRef(run_key=run_key, as_of=run_key, run_dir=str(run_dir), airflow_run_id=airflow_run_id,
                  params=dict(params or {})).as_dict()
