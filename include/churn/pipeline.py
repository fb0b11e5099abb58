"""The stages under their former names, for scripts and tests written against ``churn.pipeline``.

The stages live in :mod:`churn.stages` (one module per part of the job); this module only
re-exports them. New code imports from ``churn.stages.<part>``.
"""

from __future__ import annotations

from churn.stages import run_task, start_run_from_airflow
from churn.stages.common import PARAM_FIELDS, NoChampionError, start_run
from churn.stages.common import cfg_for as _cfg_for
from churn.stages.data import drift, ingest, profile_and_validate, split
from churn.stages.data import sample_snapshot as _sample_snapshot
from churn.stages.model import evaluate_and_gate, register, retrain_decision, train
from churn.stages.publish import export, publish_postgres, publish_redis
from churn.stages.reporting import report, summarize
from churn.stages.scoring import merge_scores, plan_scoring, score, score_partition

__all__ = [
    "PARAM_FIELDS", "NoChampionError", "_cfg_for", "_sample_snapshot", "drift", "evaluate_and_gate", "export",
    "ingest", "merge_scores", "plan_scoring", "profile_and_validate", "publish_postgres", "publish_redis",
    "register", "report", "retrain_decision", "run_task", "score", "score_partition", "split",
    "start_run", "start_run_from_airflow", "summarize", "train",
]
