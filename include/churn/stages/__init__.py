"""The nightly job's stages as plain functions: ``stage(cfg, resources, run, *inputs) -> reference dict``.

One module per part of the job, each next to the domain code it orchestrates:
:mod:`~churn.stages.common` (opening a run, per-run overrides), :mod:`~churn.stages.data` (ingest,
profile and validate, drift, split), :mod:`~churn.stages.model` (retrain decision, train, gate,
register), :mod:`~churn.stages.scoring` (plan, partitions, merge), :mod:`~churn.stages.publish`
(Postgres, Redis, exports) and :mod:`~churn.stages.reporting` (summary, report).

Airflow tasks call a stage through :func:`run_task` with the function itself (the DAG file names
every stage it runs, so a reader and ``grep`` can follow a task to its code); tests call the stages
directly. Inputs and outputs are small JSON-able dicts of references (paths, table names,
versions, counts), never data. Every stage is idempotent for a run key (the logical date):
re-running it replaces its own outputs.
"""

from __future__ import annotations

from typing import Any, Callable

from churn.config import ChurnConfig
from churn.connections import Resources


def run_task(stage: Callable[..., Any], *args: Any) -> Any:
    """Entry point for Airflow tasks: config from the environment, clients from Airflow connections."""
    from churn.stages.common import cfg_for

    cfg = ChurnConfig.from_env()
    res = Resources.from_airflow(cfg)
    if args and isinstance(args[0], dict) and "run_key" in args[0]:
        cfg = cfg_for(cfg, args[0])  # per-run overrides from the trigger form apply to every stage
    return stage(cfg, res, *args)


def start_run_from_airflow() -> dict:
    """``start_run`` for the current Airflow task: as-of date from the run's logical date (or run_after)."""
    from airflow.sdk import get_current_context

    from churn.stages.common import start_run

    context = get_current_context()
    dag_run = context["dag_run"]
    moment = context.get("logical_date") or dag_run.run_after
    params = dict(context.get("params") or {})
    cfg = ChurnConfig.from_env()
    return start_run(cfg, Resources.from_airflow(cfg), moment.date(), dag_run.run_id, params)
