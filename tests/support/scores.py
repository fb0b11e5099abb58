"""Score files as the score stage writes them (parquet, SCORE_SCHEMA), for the publish tests."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from churn.model.score import SCORE_SCHEMA, deciles, risk_bands

RUN_A, RUN_B = "2026-11-20", "2026-11-21"


def write_scores(path: Path, run_id: str, first: int, count: int, seed: int = 0, model: str | None = None) -> Path:
    """A score file like the score stage writes: customers C{first+1} .. C{first+count}."""
    rng = np.random.default_rng(seed)
    proba = rng.random(count).astype(np.float32)
    table = pa.table(
        {
            "customer_id": [f"C{i:08d}" for i in range(first + 1, first + count + 1)],
            "churn_probability": pa.array(proba, pa.float32()),
            "risk_band": pa.array(risk_bands(proba, (0.3, 0.6)), pa.string()),
            "risk_decile": pa.array(deciles(proba), pa.int16()),
            "model_version": [model or f"{run_id}-logreg"] * count,
            "run_id": [run_id] * count,
            "scored_at": pa.array([datetime(2026, 11, 20, 2, 14, 3, tzinfo=timezone.utc)] * count,
                                  pa.timestamp("us", tz="UTC")),
            "experiment": pa.nulls(count, pa.string()),
            "arm": pa.nulls(count, pa.string()),
            "features_hash": pa.nulls(count, pa.int64()),
        },
        schema=SCORE_SCHEMA,
    )
    pq.write_table(table, path)
    return path


def two_runs(folder: Path) -> dict[str, Path]:
    """Run A: customers 1..6000; run B: 1001..8000 (1000 dropped, 2000 added)."""
    return {RUN_A: write_scores(folder / "a.parquet", RUN_A, 0, 6000, seed=1),
            RUN_B: write_scores(folder / "b.parquet", RUN_B, 1000, 7000, seed=2)}
