"""Unit: the train/valid/test split is deterministic, keyed on the customer id and stable across runs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from churn.stages import data as data_stages
from churn.config import ChurnConfig
from churn.model.train import split_ids
from tests.support.stage_refs import validated_ref


def population(n: int, start: int = 0, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ids = [f"C{i:08d}" for i in range(start, start + n)]
    return pd.DataFrame({"customer_id": pd.Series(ids, dtype="str"),
                         "churned": (rng.random(n) < 0.15).astype("int8")})


def test_same_ids_same_split_whatever_the_order_or_index():
    frame = population(5000)
    first = split_ids(frame["customer_id"], (0.8, 0.1, 0.1))
    shuffled = frame.sample(frac=1.0, random_state=3).reset_index(drop=True)
    second = split_ids(shuffled["customer_id"], (0.8, 0.1, 0.1))
    a = dict(zip(frame["customer_id"], first))
    b = dict(zip(shuffled["customer_id"], second))
    assert a == b
    # the result is aligned with the input's index (not positional)
    assert first.index.equals(frame["customer_id"].index)


def test_stable_across_runs_when_the_population_changes():
    """Next night: some customers left, new ones joined; everyone who stayed keeps their split."""
    today = population(6000)
    tomorrow = pd.concat([today.iloc[500:], population(1000, start=6000)], ignore_index=True)
    a = dict(zip(today["customer_id"], split_ids(today["customer_id"], (0.8, 0.1, 0.1))))
    b = dict(zip(tomorrow["customer_id"], split_ids(tomorrow["customer_id"], (0.8, 0.1, 0.1))))
    common = set(a) & set(b)
    assert len(common) == 5500
    assert all(a[c] == b[c] for c in common)


def test_fractions_are_respected_and_approximately_stratified():
    frame = population(20000, seed=5)
    split = split_ids(frame["customer_id"], (0.8, 0.1, 0.1))
    share = split.value_counts(normalize=True)
    assert share["train"] == pytest.approx(0.8, abs=0.015)
    assert share["valid"] == pytest.approx(0.1, abs=0.01) and share["test"] == pytest.approx(0.1, abs=0.01)
    rates = frame.groupby(split)["churned"].mean()
    overall = frame["churned"].mean()
    assert all(abs(rate - overall) < 0.02 for rate in rates)  # positives spread evenly over the splits
    other = split_ids(frame["customer_id"], (0.6, 0.2, 0.2)).value_counts(normalize=True)
    assert other["test"] == pytest.approx(0.2, abs=0.015)


def test_split_stage_writes_disjoint_deterministic_parts(tmp_path):
    clean = tmp_path / "clean.parquet"
    population(4000, seed=9).to_parquet(clean, index=False)
    cfg = ChurnConfig(state_dir=tmp_path)
    outs = []
    for attempt in ("a", "b"):
        run = {"run_key": "2026-11-20", "run_dir": str(tmp_path / attempt)}
        (tmp_path / attempt).mkdir()
        outs.append(data_stages.split(cfg, None, run, validated_ref(train_clean=clean)))
    parts = {name: pd.read_parquet(outs[0]["paths"][name]) for name in ("train", "valid", "test")}
    ids = [set(p["customer_id"]) for p in parts.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert sum(len(s) for s in ids) == 4000
    assert outs[0]["counts"] == outs[1]["counts"]
    assert outs[0]["data_fingerprint"] == outs[1]["data_fingerprint"]
    for name in parts:  # re-running gives byte-identical rows
        pd.testing.assert_frame_equal(parts[name], pd.read_parquet(outs[1]["paths"][name]))


def test_split_stage_refuses_a_split_without_both_classes(tmp_path):
    clean = tmp_path / "clean.parquet"
    population(30, seed=1).assign(churned=0).to_parquet(clean, index=False)
    run = {"run_key": "2026-11-20", "run_dir": str(tmp_path)}
    with pytest.raises(ValueError, match="only one class"):
        data_stages.split(ChurnConfig(state_dir=tmp_path), None, run, validated_ref(train_clean=clean))
