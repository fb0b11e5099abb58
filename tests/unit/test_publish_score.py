"""Unit: chunked scoring with bounded-memory deciles, bands, partitions, and refusal of unusable output."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from churn.model.features import ModelSignature, build_preprocessor, to_model_input
from churn.model import score as scoring

SCORED_AT = datetime(2026, 11, 20, 2, 14, 3, tzinfo=timezone.utc)


def rank_deciles(proba: np.ndarray) -> np.ndarray:
    """The textbook definition: decile = ceil(10 * rank / N), rank 1 = lowest."""
    ranks = pd.Series(proba).rank(method="first").to_numpy()
    return np.ceil(ranks * 10 / len(proba)).clip(1, 10).astype(np.int16)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 11, 99, 1000, 123_457])
def test_sketch_deciles_equal_rank_deciles_for_distinct_probabilities(n):
    proba = np.random.default_rng(n).beta(1.2, 6.0, n).astype(np.float32)
    proba = np.unique(proba)  # distinct values: the rank definition has no ties to break
    np.random.default_rng(0).shuffle(proba)
    assert np.array_equal(scoring.deciles(proba), rank_deciles(proba))


def test_tied_probabilities_share_the_lower_decile():
    proba = np.array([0.5] * 10 + [0.1] * 5, dtype=np.float32)
    out = scoring.deciles(proba)
    assert set(out[:10]) == {out[0]} and set(out[10:]) == {1}


def test_sketch_memory_is_fixed():
    sketch = scoring.DecileSketch()
    size = sketch.coarse.nbytes
    for seed in range(5):
        sketch.add(np.random.default_rng(seed).random(100_000).astype(np.float32))
    assert sketch.coarse.nbytes == size and sketch.rows == 500_000
    assert len(sketch.boundary_bins()) <= 9


@pytest.fixture(scope="module")
def model_and_features(tmp_path_factory):
    rng = np.random.default_rng(3)
    n = 5000
    frame = pd.DataFrame({
        "customer_id": [f"C{i:08d}" for i in range(1, n + 1)],
        "tenure_days": rng.integers(1, 2000, n).astype(float),
        "monthly_charge": rng.normal(60, 20, n),
        "senior": rng.random(n) < 0.2,
        "contract": rng.choice(["month-to-month", "one_year", "two_year"], n),
    })
    frame["churned"] = (rng.random(n) < 1 / (1 + np.exp(frame["tenure_days"] / 500 - 1))).astype(int)
    signature = ModelSignature.infer(frame, "customer_id", "churned", ["tenure_days", "monthly_charge"], ["senior"],
                                     ["contract"])
    model = Pipeline([("prep", build_preprocessor(signature)), ("model", LogisticRegression(max_iter=500))])
    model.fit(to_model_input(frame, signature), frame["churned"])
    path = tmp_path_factory.mktemp("score") / "features.parquet"
    frame.drop(columns="churned").to_parquet(path, index=False)
    return model, signature, path, frame


def _score(model_and_features, out, **kwargs):
    model, signature, path, _ = model_and_features
    return scoring.score_snapshot(model, signature, path, out, model_version="v1", run_id="2026-11-20",
                                  scored_at=SCORED_AT, band_cuts=(0.3, 0.6), chunk_rows=333, **kwargs)


def test_score_snapshot_in_small_chunks_matches_scoring_everything_at_once(model_and_features, tmp_path):
    model, signature, _, frame = model_and_features
    result = _score(model_and_features, tmp_path / "scores.parquet")
    scores = pq.read_table(result.path).to_pandas()
    expected = model.predict_proba(to_model_input(frame, signature))[:, 1].astype(np.float32)
    assert result.rows == len(scores) == len(frame)
    assert scores["customer_id"].tolist() == frame["customer_id"].tolist()
    assert np.allclose(scores["churn_probability"], expected, atol=1e-6)
    assert np.array_equal(scores["risk_decile"].to_numpy(), scoring.deciles(expected))
    assert np.bincount(scores["risk_decile"])[1:].tolist() == [500] * 10 or len(np.unique(expected)) < len(expected)
    assert (scores["risk_band"] == scoring.risk_bands(expected, (0.3, 0.6))).all()
    assert set(scores["model_version"]) == {"v1"} and set(scores["run_id"]) == {"2026-11-20"}
    assert set(scores["scored_at"]) == {pd.Timestamp(SCORED_AT)}
    assert result.inference_seconds > 0 and result.other_seconds > 0 and len(result.decile_cuts) == 9
    assert [p.name for p in tmp_path.iterdir()] == ["scores.parquet"]  # temporaries (partition files) removed


def _part(model_and_features, out_dir, partition, partitions):
    model, signature, path, _ = model_and_features
    return scoring.score_partition(model, signature, path, out_dir, partition=partition, partitions=partitions,
                                   chunk_rows=333)


def test_partitions_are_disjoint_and_cover_everyone(model_and_features, tmp_path):
    ids = []
    for part in range(3):
        result = _part(model_and_features, tmp_path, part, 3)
        ids.append(set(pq.read_table(result.path, columns=["customer_id"]).column(0).to_pylist()))
        assert 1000 < len(ids[-1]) < 2400 and result.rows == len(ids[-1])
    assert not (ids[0] & ids[1]) and not (ids[1] & ids[2]) and not (ids[0] & ids[2])
    assert len(ids[0] | ids[1] | ids[2]) == 5000
    with pytest.raises(ValueError, match="outside"):
        _part(model_and_features, tmp_path, 3, 3)


def test_merged_partitions_have_the_global_deciles_of_one_pass(model_and_features, tmp_path):
    whole = pq.read_table(_score(model_and_features, tmp_path / "whole.parquet").path).to_pandas()
    parts = [_part(model_and_features, tmp_path / "parts", p, 4) for p in (2, 0, 3, 1)]  # any finishing order
    merged = scoring.merge_partitions(parts, tmp_path / "merged.parquet", model_version="v1", run_id="2026-11-20",
                                      scored_at=SCORED_AT, band_cuts=(0.3, 0.6), chunk_rows=333)
    table = pq.read_table(merged.path).to_pandas().set_index("customer_id").loc[whole["customer_id"]]
    assert merged.rows == len(whole) == 5000
    # exact global ranks: every customer's decile and band equal the single-pass result
    assert np.array_equal(table["risk_decile"].to_numpy(), whole["risk_decile"].to_numpy())
    assert (table["risk_band"].to_numpy() == whole["risk_band"].to_numpy()).all()
    assert np.bincount(table["risk_decile"])[1:].tolist() == [500] * 10


def test_merge_refuses_a_missing_or_foreign_partition(model_and_features, tmp_path):
    parts = [_part(model_and_features, tmp_path, p, 3) for p in range(3)]
    kwargs = dict(model_version="v1", run_id="r", scored_at=SCORED_AT, band_cuts=(0.3, 0.6))
    with pytest.raises(scoring.ScoringError, match="missing"):
        scoring.merge_partitions(parts[:2], tmp_path / "m.parquet", **kwargs)
    foreign = _part(model_and_features, tmp_path / "other", 1, 2)
    with pytest.raises(scoring.ScoringError, match="missing"):
        scoring.merge_partitions([parts[0], foreign, parts[2]], tmp_path / "m.parquet", **kwargs)
    assert not (tmp_path / "m.parquet").exists()


def test_progress_is_logged_on_long_runs(model_and_features, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(scoring, "PROGRESS_SECONDS", 0.0)  # every chunk counts as "10 s later"
    with caplog.at_level(logging.INFO, logger="churn.model.score"):
        _score(model_and_features, tmp_path / "scores.parquet")
    progress = [r.getMessage() for r in caplog.records if "scoring progress" in r.getMessage()]
    assert len(progress) >= 10 and "rows/s" in progress[0]
    assert any("inference" in r.getMessage() and "everything else" in r.getMessage() for r in caplog.records)


class _BrokenModel:
    """A model artifact whose predict_proba returns NaN (e.g. a regressor saved by mistake)."""

    def predict_proba(self, frame):
        out = np.full((len(frame), 2), np.nan)
        return out


def test_unusable_model_output_stops_before_a_score_file_exists(model_and_features, tmp_path):
    _, signature, path, _ = model_and_features
    with pytest.raises(scoring.ScoringError, match="outside"):
        scoring.score_snapshot(_BrokenModel(), signature, path, tmp_path / "scores.parquet", model_version="v1",
                               run_id="r", scored_at=SCORED_AT, band_cuts=(0.3, 0.6))
    assert list(tmp_path.iterdir()) == []


def test_negative_zero_probability_is_the_lowest_score_not_a_crash():
    proba = np.array([-0.0, 0.1, 0.5, 0.2, 0.0, 0.9, 0.3, 0.7, 0.6, 0.8], dtype=np.float32)
    result = scoring.deciles(proba)
    # -0.0 ranks with 0.0 at the bottom; the others keep their exact ranks
    assert result.tolist() == [1, 3, 6, 4, 1, 10, 5, 8, 7, 9]
