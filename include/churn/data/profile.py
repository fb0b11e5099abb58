"""Per-column profiles of a snapshot, stored in Postgres by run for history and plots."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from churn.db import ensure_schema, to_jsonb

log = logging.getLogger(__name__)


def profile_frame(frame: pd.DataFrame, top_k: int = 10) -> dict[str, dict]:
    """count, nulls, distinct, and min/max/mean/std/quantiles or top categories per column."""
    profiles: dict[str, dict] = {}
    for column in frame.columns:
        series = frame[column]
        stats: dict = {
            "count": int(series.size),
            "nulls": int(series.isna().sum()),
            "distinct": int(series.nunique(dropna=True)),
            "dtype": str(series.dtype),
        }
        if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            values = series.dropna().astype(float)
            if len(values):
                q = np.quantile(values, [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99])
                stats.update(
                    min=float(values.min()), max=float(values.max()), mean=float(values.mean()),
                    std=float(values.std(ddof=0)),
                    quantiles=dict(zip(["p01", "p05", "p25", "p50", "p75", "p95", "p99"], map(float, q))),
                )
        else:
            top = series.astype("str").value_counts(dropna=True).head(top_k)
            stats["top"] = {str(k): int(v) for k, v in top.items()}
        profiles[column] = stats
    return profiles


def profile_snapshot(conn, snapshot_path: str | Path, run_key: str, dataset: str) -> dict[str, dict]:
    """Profile a Parquet snapshot and replace this run's stored profile rows."""
    profiles = profile_frame(pd.read_parquet(snapshot_path))
    ensure_schema(conn)
    with conn.cursor() as cur:
        cur.execute("DELETE FROM churn.column_profiles WHERE run_key = %s AND dataset = %s", (run_key, dataset))
        for column, stats in profiles.items():
            cur.execute(
                "INSERT INTO churn.column_profiles (run_key, dataset, column_name, profile) VALUES (%s, %s, %s, %s)",
                (run_key, dataset, column, to_jsonb(stats)),
            )
    conn.commit()
    log.info("profiled %s columns of %s for run %s", len(profiles), dataset, run_key)
    return profiles
