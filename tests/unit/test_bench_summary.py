"""Unit: the AutoML benchmark's targets are checked on paired (per-seed) medians."""

from __future__ import annotations

from bench.automl_synthetic import summarize


def _run(seed: int, champion: float, best_default: float, oracle: float) -> dict:
    return {"customers": 100, "budget_minutes": 2.0, "seed": seed, "champion": "tpot",
            "champion_test_roc_auc": champion, "best_baseline_test_roc_auc": best_default,
            "oracle_test_roc_auc": oracle,
            "candidates": {"tpot": {"test_roc_auc": champion}, "logistic_baseline": {"test_roc_auc": best_default}},
            "tpot": {"pipelines_scored": 40, "search_rows": 1000, "seconds_to_beat_best_default": 10.0}}


def test_targets_use_the_median_of_per_seed_differences_not_a_difference_of_medians():
    # seeds with easy and hard test splits: the champion gains 0.006 on four of five seeds
    runs = [_run(0, 0.806, 0.800, 0.81), _run(1, 0.826, 0.820, 0.83), _run(2, 0.846, 0.840, 0.85),
            _run(3, 0.790, 0.830, 0.80), _run(4, 0.866, 0.860, 0.87)]
    (row,) = summarize(runs, [100], [2.0])
    assert row["champion_minus_best_baseline_per_seed"] == [0.006, 0.006, 0.006, -0.04, 0.006]
    assert row["champion_minus_best_baseline"] == 0.006  # paired median
    assert row["champion_minus_best_baseline_unpaired"] == -0.004  # median 0.826 - median 0.830
    assert row["targets"]["champion >= best baseline + 0.005 (paired median)"] is True
    assert row["oracle_minus_champion"] == 0.004
    assert row["targets"]["champion within 0.01 of the oracle (paired median)"] is True
    assert summarize(runs, [100], [5.0]) == []  # no runs for that budget
