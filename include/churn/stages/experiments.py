"""Experiment stage: assign tonight's scored customers to the arms of the active experiments, check each split."""

from __future__ import annotations

import logging
import time
from datetime import date, timedelta
from pathlib import Path

from churn.config import ChurnConfig
from churn.connections import Resources
from churn.stages.common import is_dry_run, timed
from churn.stages.results import ExperimentSplit, ExperimentsResult, ValidationResult, parse

log = logging.getLogger(__name__)


def assign_experiments(cfg: ChurnConfig, res: Resources, run: dict, validated: dict, registered: dict) -> dict:
    """Store the arm of every newly seen customer of tonight's scoring snapshot in each active experiment, record
    each split's check, and write tonight's served arm and model of every enrolled customer.

    Runs before scoring (each customer is served its arm's model's score) and the export (which leaves the
    customers of holdout arms, ``contact: false``, out of every file). A malformed experiments file, or an arm
    naming a model the registry does not hold, fails this task with the line and the fix: the night publishes
    nothing and readers keep the previous batch (serving the champion to a challenger arm would spoil the
    experiment without anyone noticing).
    """
    from churn.experiments.assignment import IdsFile, assign, record_split, sample_ratio_check
    from churn.experiments.decisions import effective, ended_on
    from churn.experiments.definitions import load_experiments
    from churn.experiments.serving import served_models, write_served_arms
    from churn.model import registry

    started = time.monotonic()
    if not cfg.experiments_file:
        return timed(run, "assign_experiments", started, ExperimentsResult(
            skipped=True, reason="CHURN_EXPERIMENTS_FILE is not set: no experiment"))
    if is_dry_run(run):
        return timed(run, "assign_experiments", started, ExperimentsResult(
            skipped=True, reason="dry run: nobody assigned"))
    night = date.fromisoformat(run["as_of"])
    with res.pg_session() as conn:  # a person's stop or promotion ends an experiment early
        experiments = effective(load_experiments(cfg.experiments_file).experiments, ended_on(conn))
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
    snapshot = parse(ValidationResult, validated).score.clean_path
    splits = []
    with res.pg_session() as conn:
        champion = registry.champion(conn)
        if champion is None:
            return timed(run, "assign_experiments", started, ExperimentsResult(
                skipped=True, ended_holdouts=kept, reason=f"no champion yet ({registered.get('registered')}): nothing "
                                                          "is scored tonight, nobody assigned"))
        models, arm_models = served_models(conn, active, champion)
        # tonight's scoring population, by the id column the champion scores with, streamed to the database
        ids = IdsFile(snapshot, champion.signature.get("id_column", "customer_id"))
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
        arms_path = Path(run["run_dir"]) / "experiment_arms.parquet"
        enrolled = write_served_arms(conn, active, arm_models, arms_path, cfg.score_partitions)
    return timed(run, "assign_experiments", started, ExperimentsResult(
        experiments=splits, ended_holdouts=kept, arms_path=str(arms_path), enrolled=enrolled,
        models=[m.as_dict() for m in models] if len(models) > 1 else []))


def find_decision(cfg: ChurnConfig, res: Resources) -> dict | None:
    """The experiment awaiting a person's decision (a ``DecisionRequest``), or None: nothing to ask tonight."""
    from churn.experiments.decisions import ready_for_decision
    from churn.experiments.definitions import load_experiments

    if not cfg.experiments_file:
        log.info("CHURN_EXPERIMENTS_FILE is not set: no experiment to decide")
        return None
    experiments = load_experiments(cfg.experiments_file).experiments
    with res.pg_session() as conn:
        request = ready_for_decision(conn, experiments)
    if request is None:
        log.info("no experiment of %s has reached its sample size without a decision", cfg.experiments_file)
        return None
    log.info("experiment %s reached its sample size (%s per arm needed, %s): asking for a decision",
             request.experiment_id, request.needed_per_arm, request.customers)
    return request.as_dict()


def apply_experiment_decision(cfg: ChurnConfig, res: Resources, request: dict, response: dict) -> dict:
    """Carry out the person's answer (the human-in-the-loop task's result): promote, stop or extend."""
    from datetime import datetime, timezone

    from churn.experiments.decisions import apply_decision

    who = response.get("responded_by_user") or {}
    # no responder: the question timed out and Airflow took the default answer (extend)
    decided_by = (str(who.get("name") or who.get("id")) if isinstance(who, dict) and (who.get("name") or who.get("id"))
                  else str(who) if who and not isinstance(who, dict) else "timeout (no answer)")
    with res.pg_session() as conn:
        return apply_decision(conn, request, list(response.get("chosen_options") or []), decided_by,
                              datetime.now(timezone.utc).date())
