"""A small feature frame with the platform's column kinds and its signature (model tests of every tier)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from churn.model.features import ModelSignature


def frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """A small feature frame with the platform's column kinds (some numeric values missing)."""
    rng = np.random.default_rng(seed)
    out = pd.DataFrame({
        "customer_id": [f"C{i:06d}" for i in range(n)],
        "contract": rng.choice(["monthly", "annual", "two_year"], n),
        "region": rng.choice(["north", "south"], n),
        "senior": rng.random(n) < 0.2,
        "monthly_charge": rng.normal(60, 20, n),
        "tenure_days": rng.integers(0, 2000, n).astype(float),
    })
    out.loc[rng.random(n) < 0.1, "tenure_days"] = np.nan
    logit = (out["contract"] == "monthly") * 1.5 + (out["monthly_charge"] - 60) / 20 - 1
    out["churned"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype("int8")
    return out


def signature(train: pd.DataFrame) -> ModelSignature:
    return ModelSignature.infer(train, "customer_id", "churned", ["monthly_charge", "tenure_days"], ["senior"],
                                ["contract", "region"])
