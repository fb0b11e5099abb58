"""Scoring runtimes: scikit-learn, or ONNX Runtime on the registered export once it agrees on live rows.

A registered version lists ``onnx`` among its formats only when the export matched scikit-learn on the
test rows. Live data can still differ from the test rows (a category never seen in training is one-hot
encoded differently by a converter than by scikit-learn), so :class:`ParityCheckedScorer` compares both
runtimes on the first rows of every partition and keeps ONNX Runtime only if they agree within the
tolerance; otherwise the whole partition is scored by scikit-learn and the result says why.

Artifacts are loaded once per process (:func:`load_model`, :func:`load_onnx`): the cache is keyed by the
sha256 of the bytes just read and verified, so it never serves an object whose file no longer hashes to
what the registry recorded.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from churn.model.features import ModelSignature
from churn.model.registry import ArtifactIntegrityError, verified_bytes

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "sklearn")
PARITY_ROWS = 1_000  # rows of each partition scored by both runtimes before ONNX Runtime is trusted
SPOT_ROWS = 64  # rows of every later batch, spread over it, scored by both runtimes again

_cache: dict[tuple[str, str], Any] = {}  # (kind, sha256 of the verified bytes) -> loaded object
_cache_lock = threading.Lock()
_loads: dict[str, int] = {}  # how many times bytes were actually deserialized, by kind (tests, benchmarks)


class ScoringError(RuntimeError):
    """The model produced unusable output; the message says what to check."""


def _cached(kind: str, path: str | Path, sha256: str, build) -> Any:
    data = verified_bytes(path, sha256)  # read and hashed every time: a changed file is refused, never served
    key = (kind, hashlib.sha256(data).hexdigest())
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    value = build(data)
    with _cache_lock:
        _cache[key] = value
        _loads[kind] = _loads.get(kind, 0) + 1
    return value


def load_model(path: str | Path, sha256: str) -> tuple[Any, ModelSignature]:
    """The verified scikit-learn artifact and its signature, deserialized once per process."""
    import io

    import joblib

    def build(data: bytes) -> tuple[Any, ModelSignature]:
        payload = joblib.load(io.BytesIO(data))
        return payload["model"], ModelSignature.from_dict(payload["signature"])

    return _cached("model", path, sha256, build)


def load_onnx(path: str | Path, sha256: str, threads: int = 1) -> Any:
    """A verified ONNX Runtime session on the export, created once per process (``threads`` intra-op threads)."""
    import onnxruntime as ort

    def build(data: bytes) -> Any:
        options = ort.SessionOptions()
        # one thread per task: partitions (tasks) are the unit of parallelism, not threads inside one
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])

    return _cached(f"onnx-{threads}", path, sha256, build)


def loads() -> dict[str, int]:
    """How many artifacts this process deserialized, by kind (the cache's misses)."""
    return dict(_loads)


class Scorer(Protocol):
    """Churn probabilities (float32, checked) for an enforced scoring frame."""

    runtime: str

    def predict(self, frame: Any) -> np.ndarray:
        """P(churn) per row."""


def check_probabilities(proba: np.ndarray) -> None:
    """Refuse NaN or out-of-range output before anything is written (the message says what to check)."""
    if len(proba) and (not np.isfinite(proba).all() or proba.min() < 0.0 or proba.max() > 1.0):
        raise ScoringError(
            "the model returned probabilities outside [0, 1] or NaN; check the artifact's predict_proba "
            "(was it trained as a classifier?) before publishing anything"
        )


@dataclass
class SklearnScorer:
    """scikit-learn's ``predict_proba`` on the signature's feature columns."""

    model: Any
    signature: ModelSignature
    runtime: str = "sklearn"

    def predict(self, frame: Any) -> np.ndarray:
        """P(churn) per row (float32)."""
        proba = self.model.predict_proba(frame[self.signature.feature_columns])[:, 1].astype(np.float32)
        check_probabilities(proba)
        return proba


@dataclass
class OnnxScorer:
    """ONNX Runtime on the registered export, fed one (n, 1) array per signature column."""

    session: Any
    signature: ModelSignature
    runtime: str = "onnxruntime"

    def __post_init__(self) -> None:
        self._inputs = [i.name for i in self.session.get_inputs()]
        outputs = self.session.get_outputs()
        # skl2onnx with zipmap=False: (label, probabilities); pick the (n, 2) float output by shape
        self._output = next((o.name for o in outputs if o.shape and len(o.shape) == 2 and o.shape[1] == 2),
                            outputs[-1].name)

    def predict(self, frame: Any) -> np.ndarray:
        """P(churn) per row (float32)."""
        from churn.model.export import onnx_inputs

        (proba,) = self.session.run([self._output], onnx_inputs(frame, self.signature, self._inputs))
        proba = np.asarray(proba)[:, 1].astype(np.float32)
        check_probabilities(proba)
        return proba


@dataclass
class ParityCheckedScorer:
    """ONNX Runtime while it matches scikit-learn on the rows it is checked on; scikit-learn otherwise.

    The first ``predict`` scores up to ``check_rows`` rows with both; every later batch is spot-checked on
    ``spot_rows`` rows spread over it. Within ``tolerance`` the batch's ONNX scores are kept; otherwise (or
    if ONNX Runtime fails) that batch and every later one are scored by scikit-learn. ``runtime`` and
    ``reason`` say which, and why.
    """

    primary: OnnxScorer
    fallback: SklearnScorer
    tolerance: float
    check_rows: int = PARITY_ROWS
    spot_rows: int = SPOT_ROWS
    parity_max_abs_diff: float | None = None
    reason: str = ""
    _chosen: Scorer | None = field(default=None, repr=False)

    @property
    def runtime(self) -> str:
        """``onnxruntime`` or ``sklearn`` once decided; ``onnxruntime?`` before the first rows."""
        return self._chosen.runtime if self._chosen is not None else "onnxruntime?"

    def predict(self, frame: Any) -> np.ndarray:
        """P(churn) per row, from the runtime the parity checks chose."""
        if self._chosen is None:
            self._decide(frame)
        elif self._chosen is self.primary:
            positions = np.unique(np.linspace(0, len(frame) - 1, min(self.spot_rows, len(frame))).astype(int))
            if len(positions) and not self._agree(frame.iloc[positions], "spot check"):
                return self.fallback.predict(frame)
        if self._chosen is self.primary:
            try:
                return self.primary.predict(frame)
            except Exception as exc:  # noqa: BLE001 - any runtime failure means "score with scikit-learn"
                self._use_fallback(f"onnxruntime failed ({type(exc).__name__}: {exc})")
        return self.fallback.predict(frame)

    def _use_fallback(self, reason: str) -> None:
        self._chosen, self.reason = self.fallback, reason
        log.warning("%s; scoring with scikit-learn (check the export with new categories in the data)", reason)

    def _agree(self, rows: Any, what: str) -> bool:
        """Score ``rows`` with both runtimes; switch to scikit-learn (and say why) if they disagree."""
        reference = self.fallback.predict(rows)
        try:
            candidate = self.primary.predict(rows)
        except Exception as exc:  # noqa: BLE001 - any runtime failure means "score with scikit-learn"
            self._use_fallback(f"onnxruntime failed on live rows ({type(exc).__name__}: {exc})")
            return False
        diff = float(np.max(np.abs(candidate.astype(np.float64) - reference.astype(np.float64)))) if len(rows) else 0.0
        self.parity_max_abs_diff = max(diff, self.parity_max_abs_diff or 0.0)
        if diff > self.tolerance:
            self._use_fallback(f"ONNX probabilities differ from scikit-learn by {diff:.2e} > {self.tolerance:g} "
                               f"on {len(rows)} live rows ({what})")
            return False
        return True

    def _decide(self, frame: Any) -> None:
        head = frame.iloc[: self.check_rows]
        if self._agree(head, "first rows"):
            self._chosen = self.primary
            self.reason = (f"ONNX parity on {len(head)} live rows and spot checks of every batch: max |diff| "
                           f"<= {self.tolerance:g}")
            log.info("ONNX parity on %s live rows: max |diff| %.2e <= %g; scoring with onnxruntime", len(head),
                     self.parity_max_abs_diff or 0.0, self.tolerance)


def scorer_for(artifact_path: str, artifact_sha256: str, *, onnx_path: str | None = None,
               onnx_sha256: str | None = None, runtime: str = "auto", tolerance: float = 1e-5
               ) -> tuple[Scorer, ModelSignature]:
    """The scorer for a pinned champion: parity-checked ONNX Runtime when exported and ``runtime='auto'``."""
    if runtime not in RUNTIMES:
        from churn.config import ConfigError

        raise ConfigError(f"CHURN_SCORE_RUNTIME={runtime!r} is not a runtime; use one of {RUNTIMES}")
    model, signature = load_model(artifact_path, artifact_sha256)
    sklearn_scorer = SklearnScorer(model, signature)
    if runtime == "sklearn" or not onnx_path or not onnx_sha256:
        return sklearn_scorer, signature
    try:
        session = load_onnx(onnx_path, onnx_sha256)
    except ArtifactIntegrityError as exc:  # the verified joblib artifact still scores; the operator must look
        log.error("ONNX export refused, scoring with scikit-learn: %s", exc)
        return sklearn_scorer, signature
    except Exception as exc:  # noqa: BLE001 - an unloadable export falls back, loudly
        log.warning("ONNX export %s not usable (%s: %s); scoring with scikit-learn", onnx_path, type(exc).__name__, exc)
        return sklearn_scorer, signature
    return ParityCheckedScorer(OnnxScorer(session, signature), sklearn_scorer, tolerance), signature
