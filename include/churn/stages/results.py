"""Typed results of every stage, passed between tasks as their serialized form (plain JSON dicts).

Each stage builds one of these and returns ``as_dict()`` (what XCom stores); a stage that reads another's
output parses it with ``from_dict`` (:func:`parse` for the domain records) and reads fields, so a renamed
or missing field fails where it is read, with its name. Nested records (a snapshot inside the ingest
result, the validation outcome of each dataset, the files of an export) are parsed into their types.
The domain modules own their records (``Snapshot``, ``ValidationOutcome``, ``DriftReport``,
``PartitionScores``, ``PostgresPublish``, ``RedisPublish``, ``ExportFile``, ``PurgeResult``); the stage
results here add what the stage itself knows. Every stage result carries its own duration in
``stage_seconds``; the run's per-stage timings are the summary's ``stage_timings``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from churn.data.drift import DriftReport
from churn.data.snapshot import Snapshot
from churn.data.validate import ValidationOutcome
from churn.model.score import PartitionScores
from churn.publish.files import ExportFile
from churn.publish.postgres import PostgresPublish
from churn.publish.redis_keys import RedisPublish
from churn.retention import PurgeResult
from churn.stages.records import JsonRecord, RunRef, StageResult, parse  # noqa: F401 - part of this module's API
__all__ = ["parse", "JsonRecord", "StageResult", "RunRef", "IngestResult", "ValidationResult", "DriftResult",
           "SplitResult", "PartitionPlan", "PartitionResult", "ScoredResult", "PostgresPublishResult",
           "RedisPublishResult", "ExportResult", "ExperimentSplit", "ExperimentsResult", "SummaryResult", "ReportResult", "PurgeStageResult",
           "Candidate", "TrainResult", "GateResult", "RegisterResult", "Snapshot", "ValidationOutcome",
           "DriftReport", "PartitionScores", "PostgresPublish", "RedisPublish", "ExportFile", "PurgeResult"]


@dataclass(kw_only=True)
class IngestResult(StageResult):
    """Output of ``ingest``: the two snapshots and the dataset spec's file."""

    train: Snapshot
    score: Snapshot
    dataset: str
    """The dataset spec's name (its GX suite)."""
    spec_path: str
    """``<run_dir>/dataset_spec.json``: split, train and validate read the spec from here."""
    detected_format: dict[str, str] | None = None
    """CSV settings detected from a file delivery (left at their defaults)."""
    inferred_kinds: dict[str, Any] | None = None
    """Column kinds inferred from the first rows (no kinds configured)."""


@dataclass(kw_only=True)
class ValidationResult(StageResult):
    """Output of ``profile_and_validate``: each dataset's outcome and the Data Docs index."""

    train: ValidationOutcome
    score: ValidationOutcome
    data_docs_path: str | None = None


@dataclass(kw_only=True)
class DriftResult(DriftReport):
    """Output of ``drift``: the drift report of the scoring snapshot against the champion's reference."""

    stage_seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The XCom value."""
        return dataclasses.asdict(self)


@dataclass(kw_only=True)
class SplitResult(StageResult):
    """Output of ``split``: the train/valid/test files of the clean training rows."""

    paths: dict[str, str]
    counts: dict[str, dict[str, int]]
    data_fingerprint: str
    """sha256 of the clean training snapshot (the registry records what a model was trained on)."""
    rows_available: int
    rows_used: int


@dataclass(kw_only=True)
class PartitionPlan(JsonRecord):
    """One mapped ``score_partition`` task's input: its hash partition and the pinned champion."""

    partition: int
    partitions: int
    features_path: str
    model_version: str
    artifact_path: str
    artifact_sha256: str
    scored_at: str
    onnx_path: str | None = None
    onnx_sha256: str | None = None
    runtime: str = "auto"
    onnx_tolerance: float = 1e-5
    models: list[dict[str, Any]] = field(default_factory=list)
    """Experiments: every ``ServedModel`` the partition scores with, the champion first (empty: the champion only)."""
    arms_path: str | None = None
    """Experiments: the served arm of every enrolled customer; each is served its arm's model's score."""


@dataclass(kw_only=True)
class PartitionResult(PartitionScores):
    """Output of ``score_partition``: the partition's raw scores (what ``merge_partitions`` reads) and who
    scored them."""

    model_version: str
    scored_at: str
    model_versions: list[str] = field(default_factory=list)
    """The versions by the raw file's model index (the champion first)."""
    worker: str = ""
    load_seconds: float = 0.0
    rows_per_second: float = 0.0
    stage_seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The XCom value."""
        return dataclasses.asdict(self)


@dataclass(kw_only=True)
class ScoredResult(StageResult):
    """Output of ``score`` (the merge): the run's one score file, what publish and export read."""

    path: str
    rows: int
    model_version: str
    inference_seconds: float = 0.0
    other_seconds: float = 0.0
    rows_per_second: float = 0.0
    partitions: int = 1
    workers: list[str] = field(default_factory=list)
    runtimes: list[str] = field(default_factory=list)  # what scored the partitions: sklearn, onnxruntime
    model_versions: list[str] = field(default_factory=list)
    """Every version whose scores are served (the champion first; more with an experiment's arms)."""


@dataclass(kw_only=True)
class PostgresPublishResult(StageResult):
    """Output of ``publish_postgres``: the run's table and whether it is the one served."""

    table: str | None
    rows: int
    is_current: bool
    load_seconds: float | None = None
    reader_role: str | None = None
    skipped: bool = False
    reason: str | None = None


@dataclass(kw_only=True)
class RedisPublishResult(StageResult):
    """Output of ``publish_redis``."""

    rows: int
    stale_deleted: int = 0
    seconds: float | None = None
    layout: str | None = None
    previous_run: str | None = None
    buckets: int | None = None
    skipped: bool = False
    reason: str | None = None


@dataclass(kw_only=True)
class ExportResult(StageResult):
    """Output of ``export``: the first file's fields (for readers of one export), every file, and where they went."""

    path: str | None
    rows: int
    manifest_path: str | None = None
    sha256: str | None = None
    name: str = ""
    bytes: int = 0
    columns: list[str] = field(default_factory=list)
    exports: list[ExportFile] = field(default_factory=list)
    delivered_to: str | None = None
    delivery: str | None = None
    """``sftp`` or ``local``."""
    remote_paths: list[str] = field(default_factory=list)
    skipped: bool = False
    reason: str | None = None


@dataclass(kw_only=True)
class ExperimentSplit(JsonRecord):
    """One experiment's split after a night: customers per arm, new tonight, the sample-ratio check."""

    experiment_id: str
    counts: dict[str, int]
    new: int
    p_value: float
    flagged: bool
    holdout_arms: list[str] = field(default_factory=list)
    """Arms declared ``contact: false``: their customers are left out of every export."""


@dataclass(kw_only=True)
class ExperimentsResult(StageResult):
    """Output of ``assign_experiments``: every active experiment's split (what ``export`` leaves out)."""

    experiments: list[ExperimentSplit] = field(default_factory=list)
    ended_holdouts: list[list[str]] = field(default_factory=list)
    """``[experiment id, arm]`` of holdout arms of experiments that ended less than the label lag ago."""
    skipped: bool = False
    reason: str | None = None
    arms_path: str | None = None
    """Tonight's served arm of every enrolled customer (``churn.experiments.serving``), what scoring reads."""
    models: list[dict[str, Any]] = field(default_factory=list)
    """``ServedModel`` dicts: the models the batch scores with, the champion first (empty: the champion only)."""
    enrolled: int = 0
    """Customers written to ``arms_path``."""

    def holdouts(self) -> list[tuple[str, str]]:
        """``(experiment id, arm)`` of every arm whose customers must not be contacted."""
        return [(e.experiment_id, arm) for e in self.experiments for arm in e.holdout_arms] + [
            (experiment_id, arm) for experiment_id, arm in self.ended_holdouts]


@dataclass(kw_only=True)
class SummaryResult(StageResult):
    """Output of ``summarize`` (also stored in ``churn.pipeline_runs.summary`` and ``summary.json``)."""

    run_key: str
    airflow_run_id: str = ""
    rows_ingested: dict[str, int] = field(default_factory=dict)
    rows_validated: dict[str, int] = field(default_factory=dict)
    rows_quarantined: dict[str, int] = field(default_factory=dict)
    retrained: bool = False
    retrain_reason: str = ""
    candidates: list[dict[str, Any]] = field(default_factory=list)
    gate: dict[str, Any] = field(default_factory=dict)
    champion: str | None = None
    champion_test_roc_auc: float | None = None
    scored: int = 0
    inference_seconds: float | None = None
    published_postgres: int = 0
    published_redis: int = 0
    export_path: str | None = None
    export_rows: int = 0
    export_delivered_to: str | None = None
    stage_timings: dict[str, float | None] = field(default_factory=dict)
    """Seconds per stage of the run (the stages' own ``stage_seconds``)."""
    sample_lookup: dict[str, Any] | None = None
    """One customer read back from Redis, timed."""
    summary_path: str | None = None


@dataclass(kw_only=True)
class ReportResult(StageResult):
    """Output of ``report``."""

    report_path: str
    report_url: str
    prediction_psi: float | None = None
    realized: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class PurgeStageResult(PurgeResult):
    """Output of ``purge``: what retention removed; ``skipped`` says why nothing was (a dry run)."""

    cutoff: str | None = None
    keep_days: int | None = None
    skipped: str | None = None
    stage_seconds: float | None = None


@dataclass(kw_only=True)
class Candidate(JsonRecord):
    """One trained candidate: its future registry version, the verified artifact and its figures."""

    name: str
    """Model name (``logistic_baseline``, ``hist_gradient_boosting``, ``tpot``)."""
    path: str
    """Candidate artifact (joblib of model + signature) in the run folder."""
    sha256: str
    """Hash of the artifact's bytes; evaluate and register unpickle only bytes with this hash."""
    valid_roc_auc: float
    """ROC AUC on the validation split (selects the challenger when no cross-validated estimate exists)."""
    fit_seconds: float
    """Fit time."""
    version: str | None = None
    """Registry version this candidate gets (``<run>-<name>-<attempt>``; None: register derives it from the hash)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Hyper-parameters / search settings, stored with the registry row."""
    metrics: dict[str, Any] | None = None
    """Test-split metrics (set by evaluate_and_gate)."""
    cv_roc_auc: float | None = None
    """The selection ROC AUC (``churn.model.train.selection_estimate``): what selects the challenger."""
    cv_roc_auc_std: float | None = None
    """Spread (standard deviation) of that estimate: across the folds, or over bootstrap resamples."""
    cv_folds: int | None = None
    """Folds of a k-fold estimate (None when the validation split was used)."""
    cv_rows: int | None = None
    """Rows behind the estimate."""
    estimate: str | None = None
    """How the estimate was obtained, in words (k-fold on N rows, or the validation split and why)."""


@dataclass(kw_only=True)
class TrainResult(StageResult):
    """Output of ``train``."""

    retrained: bool
    """Whether this run trained (see ``reason``)."""
    reason: str
    """Why it trained or not (the retrain decision)."""
    attempt: str | None = None
    """This training attempt's id (part of every candidate's version)."""
    candidates: list[dict[str, Any]] = field(default_factory=list)
    """``Candidate`` dicts."""
    tpot_error: str | None = None
    """Why the TPOT search produced no candidate, if it did not."""


@dataclass(kw_only=True)
class GateResult(StageResult):
    """Output of ``evaluate_and_gate``."""

    evaluated: bool
    """False when nothing was trained."""
    promote: bool
    """The gate's decision for the challenger."""
    reason: str
    """The gate's reason (or why nothing was evaluated)."""
    challenger: str | None = None
    """Name of the candidate with the best validation ROC AUC."""
    champion_version: str | None = None
    """The champion it was compared with."""
    champion_test_roc_auc: float | None = None
    """The champion's ROC AUC on the same test rows (None: no champion or not comparable)."""
    candidates: list[dict[str, Any]] = field(default_factory=list)
    """``Candidate`` dicts with their test ``metrics``."""
    champion_metrics: dict[str, Any] | None = None
    """The champion's full test metrics (for the report's curves)."""


@dataclass(kw_only=True)
class RegisterResult(StageResult):
    """Output of ``register``."""

    registered: list[dict[str, Any]] = field(default_factory=list)
    """Per candidate: version, status, reason, test_roc_auc, formats, reference_path."""
    champion: str | None = None
    """The champion version after this run (None before the first promotion)."""
