"""Experiment stage: assign tonight's scored customers to the arms of the active experiments, check each split."""

from __future__ import annotations

import logging
import time
from datetime import date, timedelta

from churn.config import ChurnConfig
from churn.connections import Resources
from churn.stages.common import is_dry_run, timed
from churn.stages.results import ExperimentSplit, ExperimentsResult, ScoredResult, parse

log = logging.getLogger(__name__)


def assign_experiments(cfg: ChurnConfig, res: Resources, run: dict, scored: dict) -> dict:
    """Store the arm of every newly seen scored customer in each active experiment; record each split's check.

    Runs before the export, which leaves the customers of holdout arms (``contact: false``) out of every file.
    A malformed experiments file fails this task (and so the export) with the line and the fix; the scores are
    published regardless.
    """
    import pyarrow.parquet as pq

    from churn.experiments.assignment import assign, record_split, sample_ratio_check
    from churn.experiments.definitions import load_experiments

    started = time.monotonic()
    if not cfg.experiments_file:
        return timed(run, "assign_experiments", started, ExperimentsResult(
            skipped=True, reason="CHURN_EXPERIMENTS_FILE is not set: no experiment"))
    if is_dry_run(run):
        return timed(run, "assign_experiments", started, ExperimentsResult(
            skipped=True, reason="dry run: nobody assigned"))
    night = date.fromisoformat(run["as_of"])
    experiments = load_experiments(cfg.experiments_file).experiments
    active = [e for e in experiments if e.active_on(night)]
    # Holdouts stay out of contact lists until the outcomes of the experiment's last night are in (end + the
    # label lag): contacting them the day after the end would spoil the nights still being judged.
    lag = timedelta(days=cfg.realized_lag_days)
    judged = [e for e in experiments if e.end is not None and e.end < night <= e.end + lag]
    kept = [[e.id, a.name] for e in judged for a in e.arms if not a.contact]
    if not active:
        return timed(run, "assign_experiments", started, ExperimentsResult(
            skipped=not kept, ended_holdouts=kept,
            reason=f"no experiment of {cfg.experiments_file} is active on {night}"))
    ids = pq.read_table(parse(ScoredResult, scored).path, columns=["customer_id"]).column(0).to_pylist()
    splits = []
    with res.pg_session() as conn:
        for experiment, counts in zip(active, assign(conn, experiments, ids, run["run_key"], night)):
            check = sample_ratio_check(experiment, counts.per_arm)
            record_split(conn, experiment, night, run["run_key"], counts, check)
            if check.flagged:
                log.warning("experiment %s: sample ratio mismatch (chi2 %.1f, p %.2g) for counts %s against the "
                            "weights: its results are withheld until the cause is found (weights changed mid-run? "
                            "a filter applied to one arm?)", experiment.id, check.chi2, check.p_value, check.counts)
            splits.append(ExperimentSplit(
                experiment_id=experiment.id, counts=check.counts, new=counts.new, p_value=check.p_value,
                flagged=check.flagged, holdout_arms=[a.name for a in experiment.arms if not a.contact]))
    return timed(run, "assign_experiments", started, ExperimentsResult(experiments=splits, ended_holdouts=kept))
