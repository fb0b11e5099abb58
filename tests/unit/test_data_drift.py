"""Drift (PSI / KS) units (the synthetic source through ingest -> drift on real Postgres:
tests/integration/test_data_drift.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from churn.data.drift import compute_drift, ks_numeric, psi_categorical, psi_numeric


def test_psi_and_ks_are_small_for_the_same_distribution_and_large_for_a_shift():
    rng = np.random.default_rng(1)
    ref = pd.Series(rng.normal(50, 10, 20_000))
    same = pd.Series(rng.normal(50, 10, 20_000))
    shifted = pd.Series(rng.normal(65, 10, 20_000))
    assert psi_numeric(ref, same) < 0.01
    assert psi_numeric(ref, shifted) > 0.5
    assert ks_numeric(ref, same)[0] < 0.03 and ks_numeric(ref, shifted)[0] > 0.4


def test_psi_counts_nulls_and_new_categories():
    ref = pd.Series(["a", "b", "c"] * 1000)
    assert psi_categorical(ref, ref.sample(frac=1, random_state=0)) < 1e-9
    assert psi_categorical(ref, pd.Series(["a", "b", "z"] * 1000)) > 1.0  # 'c' vanished, 'z' appeared
    numbers = pd.Series(np.arange(3000, dtype=float))
    half_missing = numbers.where(numbers % 2 == 0)
    assert psi_numeric(numbers, half_missing) > 1.0  # a column going missing is drift


def test_compute_drift_covers_every_kind_and_skips_missing_columns():
    ref = pd.DataFrame({"x": [1.0, 2.0, 3.0] * 50, "flag": [True, False, True] * 50, "cat": ["a", "b", "c"] * 50})
    cur = ref.drop(columns=["cat"]).assign(flag=[1.0, 0.0, 1.0] * 50)  # booleans as 0/1 floats from a file source
    results = {r.feature: r for r in compute_drift(ref, cur, ["x"], ["flag"], ["cat"])}
    assert set(results) == {"x", "flag"}
    assert results["x"].kind == "numeric" and results["x"].ks_statistic == 0.0
    assert results["flag"].kind == "boolean" and results["flag"].psi < 1e-9 and results["flag"].ks_statistic is None
