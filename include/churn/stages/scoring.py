"""Scoring stages: pin the champion for the batch, score hash partitions, merge them with global deciles."""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from pathlib import Path

from churn.config import ChurnConfig, ConfigError
from churn.connections import Resources
from churn.stages.common import NoChampionError, timed
from churn.stages.results import (
    ExperimentsResult, PartitionPlan, PartitionResult, ScoredResult, ValidationResult, parse,
)


def plan_scoring(cfg: ChurnConfig, res: Resources, run: dict, validated: dict, registered: dict,
                 assigned: dict | None = None) -> list[dict]:
    """The champion to score with (pinned for every partition), the experiment arms' models and served arms, and
    one reference per hash partition."""
    from churn.model import registry

    with res.pg_session() as conn:
        champ = registry.champion(conn)
        onnx = registry.onnx_export(conn, champ.version) if champ is not None else None
    if champ is None:
        raise NoChampionError(
            "no champion model to score with: the first challenger was refused by the gate "
            f"({registered['registered']}); lower CHURN_MIN_ROC_AUC or retrain with more data"
        )
    if cfg.score_partitions < 1:
        raise ConfigError(f"CHURN_SCORE_PARTITIONS={cfg.score_partitions} must be at least 1")
    experiments = parse(ExperimentsResult, assigned) if assigned else ExperimentsResult()
    models = experiments.models
    if models and models[0]["version"] != champ.version:
        raise RuntimeError(f"the champion changed from {models[0]['version']} to {champ.version} between the "
                           "experiment assignment and scoring: clear assign_experiments so both use one champion")
    if len(models) > 1 and cfg.redis_layout == "hash":
        raise ConfigError("an experiment serves several models tonight, and CHURN_REDIS_LAYOUT=hash holds one model "
                          "per run: use CHURN_REDIS_LAYOUT=compact (the default) or json")
    # The plan pins its model versions: a promotion while partitions run cannot mix two champions in one batch.
    features = parse(ValidationResult, validated).score.clean_path
    scored_at = datetime.now(timezone.utc).isoformat()
    return [PartitionPlan(partition=p, partitions=cfg.score_partitions, features_path=features,
                          model_version=champ.version, artifact_path=champ.artifact_path,
                          artifact_sha256=champ.artifact_sha256, scored_at=scored_at,
                          onnx_path=(onnx or {}).get("path"), onnx_sha256=(onnx or {}).get("sha256"),
                          runtime=cfg.score_runtime, onnx_tolerance=cfg.onnx_parity_tolerance,
                          models=models, arms_path=experiments.arms_path).as_dict()
            for p in range(cfg.score_partitions)]


def score_partition(cfg: ChurnConfig, res: Resources, run: dict, part: dict) -> dict:
    """Score one hash partition of the scoring snapshot with the planned (verified) champion."""
    import socket

    from churn.experiments.serving import ArmLookup
    from churn.model.runtime import scorer_for
    from churn.model.score import score_partition as score_one_partition

    started = time.monotonic()
    part = parse(PartitionPlan, part)
    # verified by sha256 and deserialized once per process (a worker scoring several partitions loads once)
    scorer, signature = scorer_for(part.artifact_path, part.artifact_sha256, onnx_path=part.onnx_path,
                                   onnx_sha256=part.onnx_sha256, runtime=part.runtime, tolerance=part.onnx_tolerance)
    # Experiments: every other model an arm is served scores the partition too (the champion is models[0]).
    arm_models = [scorer_for(m["artifact_path"], m["artifact_sha256"], onnx_path=m.get("onnx_path"),
                             onnx_sha256=m.get("onnx_sha256"), runtime=part.runtime, tolerance=part.onnx_tolerance)[0]
                  for m in part.models[1:]]
    arms = ArmLookup(part.arms_path, part.partition, part.partitions) if part.arms_path else None
    load_seconds = time.monotonic() - started  # imports, hash check and unpickle: a fixed cost per partition
    result = score_one_partition(scorer, signature, part.features_path, Path(run["run_dir"]) / "score_parts",
                                 partition=part.partition, partitions=part.partitions,
                                 chunk_rows=cfg.score_chunk_rows, arm_models=arm_models, arms=arms)
    # Which worker scored it: shown in the run's XCom, and how the Celery test sees both workers at work.
    worker = f"{socket.gethostname()}:{os.environ.get('CHURN_WORKER_NAME') or os.getpid()}"
    return timed(run, f"score_partition[{part.partition}]", started, PartitionResult(
        **result.as_dict(), model_version=part.model_version, scored_at=part.scored_at,
        model_versions=[m["version"] for m in part.models] or [part.model_version],
        worker=worker, load_seconds=round(load_seconds, 3),
        rows_per_second=round(result.rows / max(result.inference_seconds, 1e-9), 1)))


def merge_scores(cfg: ChurnConfig, res: Resources, run: dict, parts: list[dict]) -> dict:
    """Global exact deciles over every partition and the run's one score file (what publish reads)."""
    from churn.model.score import merge_partitions

    started = time.monotonic()
    parts = [parse(PartitionResult, p) for p in parts]  # Airflow hands a reduce step a lazy sequence
    plans = {(p.model_version, *p.model_versions) for p in parts}  # the champion, then every model served
    if len(plans) != 1:
        raise RuntimeError(f"partitions were scored by different models {sorted(plans)}: clear the run's "
                           "plan_scoring task so every partition is re-scored with one plan")
    served_versions = list(parts[0].model_versions) or [parts[0].model_version]
    result = merge_partitions(parts, Path(run["run_dir"]) / "scores.parquet",
                              model_version=served_versions, run_id=run["run_key"],
                              scored_at=datetime.fromisoformat(parts[0].scored_at),
                              band_cuts=cfg.band_cuts, chunk_rows=cfg.score_chunk_rows)
    return timed(run, "score", started, ScoredResult(
        path=result.path, rows=result.rows, model_version=parts[0].model_version,
        inference_seconds=round(result.inference_seconds, 3), other_seconds=round(result.other_seconds, 3),
        rows_per_second=round(result.rows_per_second, 1), partitions=len(parts),
        workers=sorted({p.worker for p in parts}), runtimes=sorted({p.runtime for p in parts if p.rows}),
        model_versions=served_versions))


def score(cfg: ChurnConfig, res: Resources, run: dict, validated: dict, registered: dict,
          assigned: dict | None = None) -> dict:
    """Plan, score every partition and merge, in this process (the DAG maps the partitions over workers)."""
    parts = [score_partition(cfg, res, run, part)
             for part in plan_scoring(cfg, res, run, validated, registered, assigned)]
    return merge_scores(cfg, res, run, parts)
