"""Typed results of the model stages, serialized to XCom as plain JSON dicts.

Each stage builds one of these and returns ``as_dict()``; a stage that reads another's output parses it
with ``from_dict`` and reads fields, so a renamed or missing field fails where it is read, with its
name. (The data and publish stages already return dataclasses of their modules: ``Snapshot``,
``ValidationOutcome``, ``DriftReport``, ``PostgresPublish``, ``RedisPublish``, ``ExportFile``.)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T", bound="JsonRecord")


@dataclass(kw_only=True)
class JsonRecord:
    """JSON round trip shared by every result."""

    def as_dict(self) -> dict[str, Any]:
        """The XCom value (plain JSON types only)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        """Parse an XCom value; unknown keys are ignored, a missing required field raises TypeError."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(kw_only=True)
class StageResult(JsonRecord):
    """A stage's output; ``stage_seconds`` is set by ``timed``."""

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
