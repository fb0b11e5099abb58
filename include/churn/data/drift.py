"""Feature drift between the scoring snapshot and the champion's training reference.

PSI (population stability index) for every feature: numeric features are binned
on the reference's deciles, booleans and categoricals by value (nulls are a bin
of their own, so a column that suddenly goes missing shows up). Numeric features
also get the two-sample Kolmogorov-Smirnov statistic. Results are stored per run
in ``churn.drift_metrics``.

The reference is ``reference.parquet`` (a sample of the training features) that
the model stage saves next to each model artifact; without it drift is skipped
with a logged reason, never failing the run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from churn.db import ensure_schema

if TYPE_CHECKING:
    from churn.db import PgConnection

log = logging.getLogger(__name__)

REFERENCE_FILE = "reference.parquet"
_EPS = 1e-4  # floor of a bin's share, so an empty bin gives a large but finite PSI
_NULL = "__null__"


@dataclass
class FeatureDrift:
    """Drift figures of one feature."""

    feature: str
    kind: str
    psi: float
    ks_statistic: float | None = None
    ks_pvalue: float | None = None


@dataclass
class DriftReport:
    """Drift of one run: per feature, plus what the retrain policy needs."""

    computed: bool
    reason: str
    threshold: float
    reference_version: str | None = None
    reference_path: str | None = None
    reference_rows: int = 0
    current_rows: int = 0
    max_psi: float | None = None
    max_psi_feature: str | None = None
    drifted: list[str] = field(default_factory=list)
    features: dict[str, dict] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """Plain dict for XCom / the run summary."""
        return dict(self.__dict__)


def psi_from_shares(expected: np.ndarray, actual: np.ndarray, eps: float = _EPS) -> float:
    """PSI of two share vectors over the same bins; empty bins get share ``eps`` so the log stays finite."""
    expected = np.clip(expected, eps, None)
    actual = np.clip(actual, eps, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def psi_numeric(reference: pd.Series, current: pd.Series, bins: int = 10) -> float:
    """PSI with bins at the reference's quantiles (plus a bin for nulls)."""
    ref = pd.to_numeric(reference, errors="coerce").astype(float)
    cur = pd.to_numeric(current, errors="coerce").astype(float)
    ref_values = ref.dropna().to_numpy()
    if len(ref_values) == 0:
        return psi_categorical(ref.isna().map({True: _NULL, False: "value"}),
                               cur.isna().map({True: _NULL, False: "value"}))
    edges = np.unique(np.quantile(ref_values, np.linspace(0, 1, bins + 1)[1:-1]))

    def shares(values: pd.Series) -> np.ndarray:
        counts = np.bincount(np.searchsorted(edges, values.dropna().to_numpy(), side="right"),
                             minlength=len(edges) + 1).astype(float)
        counts = np.append(counts, values.isna().sum())
        return counts / max(len(values), 1)

    return psi_from_shares(shares(ref), shares(cur))


def psi_categorical(reference: pd.Series, current: pd.Series) -> float:
    """PSI over the union of values seen in either sample (nulls counted as a value)."""
    ref = reference.astype(object).where(reference.notna(), _NULL).astype("str")
    cur = current.astype(object).where(current.notna(), _NULL).astype("str")
    values = sorted(set(ref.unique()) | set(cur.unique()))
    ref_share = ref.value_counts(normalize=True).reindex(values, fill_value=0).to_numpy()
    cur_share = cur.value_counts(normalize=True).reindex(values, fill_value=0).to_numpy()
    return psi_from_shares(ref_share, cur_share)


def ks_numeric(reference: pd.Series, current: pd.Series) -> tuple[float | None, float | None]:
    """Two-sample KS statistic and p-value on the non-null values (None when a side has no values)."""
    from scipy.stats import ks_2samp

    ref = pd.to_numeric(reference, errors="coerce").dropna().to_numpy(dtype=float)
    cur = pd.to_numeric(current, errors="coerce").dropna().to_numpy(dtype=float)
    if len(ref) == 0 or len(cur) == 0:
        return None, None
    result = ks_2samp(ref, cur)
    return float(result.statistic), float(result.pvalue)


def compute_drift(reference: pd.DataFrame, current: pd.DataFrame, numeric: list[str], boolean: list[str],
                  categorical: list[str]) -> list[FeatureDrift]:
    """Drift of every feature present in both frames (a feature missing on either side is logged and skipped)."""
    out: list[FeatureDrift] = []
    for kind, columns in (("numeric", numeric), ("boolean", boolean), ("categorical", categorical)):
        for column in columns:
            if column not in reference.columns or column not in current.columns:
                log.warning("drift: feature %s missing from the %s; skipped", column,
                            "reference" if column not in reference.columns else "current snapshot")
                continue
            if kind == "numeric":
                ks, p = ks_numeric(reference[column], current[column])
                out.append(FeatureDrift(column, kind, psi_numeric(reference[column], current[column]), ks, p))
            else:
                # booleans may be bool or 0/1 floats depending on the source: compare them as 0/1 text
                ref, cur = reference[column], current[column]
                if kind == "boolean":
                    ref = pd.to_numeric(ref.astype(object), errors="coerce").astype("float64")
                    cur = pd.to_numeric(cur.astype(object), errors="coerce").astype("float64")
                out.append(FeatureDrift(column, kind, psi_categorical(ref, cur)))
    return out


def read_sample(path: str | Path, columns: list[str], max_rows: int, seed: int = 0) -> pd.DataFrame:
    """At most ``max_rows`` rows of ``columns`` from a Parquet file, read row group by row group."""
    parquet = pq.ParquetFile(path)
    present = [c for c in columns if c in parquet.schema_arrow.names]
    total = parquet.metadata.num_rows
    fraction = min(1.0, max_rows / max(total, 1))
    rng = np.random.default_rng(seed)
    parts = []
    for batch in parquet.iter_batches(batch_size=65_536, columns=present):
        frame = batch.to_pandas()
        if fraction < 1.0:
            frame = frame[rng.random(len(frame)) < fraction]
        parts.append(frame)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=present)


def store_drift(conn: PgConnection, run_key: str, report: DriftReport, results: list[FeatureDrift]) -> None:
    """Replace this run's rows in ``churn.drift_metrics`` (idempotent)."""
    ensure_schema(conn)
    with conn.cursor() as cur:
        cur.execute("DELETE FROM churn.drift_metrics WHERE run_key = %s", (run_key,))
        for item in results:
            cur.execute(
                "INSERT INTO churn.drift_metrics (run_key, feature, kind, psi, ks_statistic, ks_pvalue,"
                " reference_version, reference_rows, current_rows) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (run_key, item.feature, item.kind, item.psi, item.ks_statistic, item.ks_pvalue,
                 report.reference_version, report.reference_rows, report.current_rows),
            )
    conn.commit()


def drift_against_champion(conn: PgConnection, champion, signature, current_path: str | Path, run_key: str, threshold: float,
                           sample_rows: int = 200_000) -> DriftReport:
    """Compare the scoring snapshot with ``reference.parquet`` next to the champion's artifact and store it."""
    if champion is None:
        return DriftReport(False, "no champion yet: nothing to compare against", threshold)
    reference_path = Path(champion.artifact_path).parent / REFERENCE_FILE
    if not reference_path.exists():
        reason = f"champion {champion.version} has no {REFERENCE_FILE} next to its artifact ({reference_path})"
        log.warning("drift skipped: %s", reason)
        return DriftReport(False, reason, threshold, champion.version, str(reference_path))
    columns = signature.feature_columns
    reference = read_sample(reference_path, columns, sample_rows)
    current = read_sample(current_path, columns, sample_rows)
    results = compute_drift(reference, current, signature.numeric, signature.boolean, list(signature.categorical))
    report = DriftReport(True, "computed", threshold, champion.version, str(reference_path), len(reference),
                         len(current))
    report.features = {r.feature: {"kind": r.kind, "psi": round(r.psi, 4),
                                   "ks": None if r.ks_statistic is None else round(r.ks_statistic, 4)}
                       for r in results}
    if results:
        worst = max(results, key=lambda r: r.psi)
        report.max_psi, report.max_psi_feature = round(worst.psi, 4), worst.feature
        report.drifted = sorted(r.feature for r in results if r.psi > threshold)
    store_drift(conn, run_key, report, results)
    log.info("drift vs %s: max PSI %s (%s), %s feature(s) above %s", champion.version, report.max_psi,
             report.max_psi_feature, len(report.drifted), threshold)
    return report
