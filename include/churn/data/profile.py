"""Per-column profiles of a snapshot, stored in Postgres by run for history and plots.

Streamed: count, nulls, min, max, mean and standard deviation are exact over every row, read one
chunk at a time; quantiles, distinct counts and top values come from a deterministic id-hash
sample of at most ``sample_rows`` rows (its size is in every profile as ``sample_rows``), so
memory does not grow with the population.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from churn.data.stream import DEFAULT_CHUNK_ROWS, iter_frames, keep_mask, parquet_rows
from churn.db import ensure_schema, to_jsonb

if TYPE_CHECKING:
    from churn.db import PgConnection

log = logging.getLogger(__name__)
QUANTILES = {"p01": 0.01, "p05": 0.05, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p95": 0.95, "p99": 0.99}


def _numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def profile_frame(frame: pd.DataFrame, top_k: int = 10) -> dict[str, dict]:
    """count, nulls, distinct, and min/max/mean/std/quantiles or top categories per column (whole frame)."""
    return _finish(_accumulate({}, frame), frame, top_k, len(frame))


def _accumulate(acc: dict[str, dict], frame: pd.DataFrame) -> dict[str, dict]:
    """Add one chunk's exact figures (count, nulls, min, max, sum, sum of squares) to ``acc``."""
    for column in frame.columns:
        series = frame[column]
        stats = acc.setdefault(column, {"count": 0, "nulls": 0, "dtype": str(series.dtype), "n": 0, "sum": 0.0,
                                        "sumsq": 0.0, "min": None, "max": None})
        stats["count"] += int(series.size)
        stats["nulls"] += int(series.isna().sum())
        if _numeric(series):
            values = series.dropna().astype(float).to_numpy()
            if len(values):
                stats["n"] += len(values)
                stats["sum"] += float(values.sum())
                stats["sumsq"] += float(np.square(values).sum())
                low, high = float(values.min()), float(values.max())
                stats["min"] = low if stats["min"] is None else min(stats["min"], low)
                stats["max"] = high if stats["max"] is None else max(stats["max"], high)
    return acc


def _finish(acc: dict[str, dict], sample: pd.DataFrame, top_k: int, sample_rows: int) -> dict[str, dict]:
    """Exact streamed figures plus the sample-based ones, in the stored profile shape."""
    profiles: dict[str, dict] = {}
    for column, stats in acc.items():
        series = sample[column] if column in sample.columns else pd.Series(dtype=object)
        out: dict = {"count": stats["count"], "nulls": stats["nulls"],
                     "distinct": int(series.nunique(dropna=True)), "dtype": stats["dtype"],
                     "sample_rows": int(sample_rows)}
        if stats["n"]:
            mean = stats["sum"] / stats["n"]
            values = series.dropna().astype(float)
            out.update(min=stats["min"], max=stats["max"], mean=mean,
                       std=float(np.sqrt(max(stats["sumsq"] / stats["n"] - mean * mean, 0.0))))
            if len(values):
                q = np.quantile(values, list(QUANTILES.values()))
                out["quantiles"] = dict(zip(QUANTILES, map(float, q)))
        else:
            top = series.astype("str").value_counts(dropna=True).head(top_k)
            out["top"] = {str(k): int(v) for k, v in top.items()}
        profiles[column] = out
    return profiles


def profile_snapshot(conn: PgConnection, snapshot_path: str | Path, run_key: str, dataset: str, *, id_column: str | None = None,
                     chunk_rows: int = DEFAULT_CHUNK_ROWS, sample_rows: int = 100_000, seed: int = 0,
                     top_k: int = 10) -> dict[str, dict]:
    """Profile a Parquet snapshot chunk by chunk and replace this run's stored profile rows."""
    total = parquet_rows(snapshot_path)
    fraction = 1.0 if total <= sample_rows else sample_rows / total
    acc: dict[str, dict] = {}
    kept = []
    for frame in iter_frames(snapshot_path, chunk_rows):
        _accumulate(acc, frame)
        ids = frame[id_column] if id_column and id_column in frame.columns else frame.index.to_series()
        kept.append(frame[keep_mask(ids, fraction, seed)])
    sample = pd.concat(kept) if kept else pd.DataFrame()
    profiles = _finish(acc, sample, top_k, len(sample))
    ensure_schema(conn)
    with conn.cursor() as cur:
        cur.execute("DELETE FROM churn.column_profiles WHERE run_key = %s AND dataset = %s", (run_key, dataset))
        for column, stats in profiles.items():
            cur.execute(
                "INSERT INTO churn.column_profiles (run_key, dataset, column_name, profile) VALUES (%s, %s, %s, %s)",
                (run_key, dataset, column, to_jsonb(stats)),
            )
    conn.commit()
    log.info("profiled %s columns of %s for run %s (%s rows, quantiles/distinct/top on %s sampled rows)",
             len(profiles), dataset, run_key, total, len(sample))
    return profiles
