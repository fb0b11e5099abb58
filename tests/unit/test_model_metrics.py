"""Unit: test-split metrics on small known arrays, and the gate's rules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from churn.model.evaluate import auc_lower_bound, classification_metrics, gate


def test_perfect_ranking():
    y = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.1, 0.3, 0.2, 0.1, 0.4, 0.3, 0.9, 0.8])
    m = classification_metrics(y, p)
    assert m["roc_auc"] == 1.0 and m["pr_auc"] == 1.0
    assert m["base_rate"] == 0.2 and m["test_rows"] == 10
    # top decile = 1 row (the 0.9, a churner): rate 1.0 vs base 0.2 -> lift 5, captures 1 of 2 churners
    assert m["top_decile_lift"] == pytest.approx(5.0)
    assert m["top_decile_capture"] == pytest.approx(0.5)


def test_known_auc_brier_logloss_and_calibration():
    y = np.array([0, 1, 0, 1])
    p = np.array([0.2, 0.6, 0.7, 0.9])
    m = classification_metrics(y, p, calibration_bins=2)
    # pairs (pos, neg): (0.6,0.2)+ (0.6,0.7)- (0.9,0.2)+ (0.9,0.7)+ -> 3/4
    assert m["roc_auc"] == pytest.approx(0.75)
    assert m["brier"] == pytest.approx((0.04 + 0.16 + 0.49 + 0.01) / 4)
    assert m["log_loss"] == pytest.approx(-(math.log(0.8) + math.log(0.6) + math.log(0.3) + math.log(0.9)) / 4)
    # bins [0, .5) and [.5, 1]: {0.2} observed 0, {0.6, 0.7, 0.9} observed 2/3
    assert [(c["bin"], c["count"]) for c in m["calibration"]] == [(0, 1), (1, 3)]
    assert m["calibration"][1]["observed_rate"] == pytest.approx(2 / 3)
    assert m["calibration"][1]["mean_predicted"] == pytest.approx((0.6 + 0.7 + 0.9) / 3)


def test_inverted_ranking_and_single_class():
    y = np.array([1, 1, 0, 0])
    assert classification_metrics(y, np.array([0.1, 0.2, 0.8, 0.9]))["roc_auc"] == 0.0
    with pytest.raises(ValueError, match="both classes"):
        classification_metrics(np.zeros(5), np.linspace(0, 1, 5))


def test_auc_lower_bound_shrinks_with_more_rows():
    small = auc_lower_bound(0.6, 10, 40)
    large = auc_lower_bound(0.6, 1000, 4000)
    assert small < 0.5 < large < 0.6
    assert math.isnan(auc_lower_bound(0.7, 0, 10))


def test_gate_rules():
    assert not gate(0.9, None, 0.0, 0.01).promote  # no threshold configured: never promote
    assert "disabled" in gate(0.9, None, 0.0, 0.01).reason
    assert not gate(0.59, None, 0.6, 0.01).promote
    assert gate(0.7, None, 0.6, 0.01).promote and "first model" in gate(0.7, None, 0.6, 0.01).reason
    assert gate(0.795, 0.80, 0.6, 0.01).promote  # within the allowed drop
    refused = gate(0.78, 0.80, 0.6, 0.01)
    assert not refused.promote and "worse than champion" in refused.reason
    assert not gate(float("nan"), None, 0.6, 0.01).promote  # a NaN score never passes
    lucky = gate(0.65, None, 0.6, 0.01, challenger_auc_ci_low=0.48)
    assert not lucky.promote and "not distinguishable from random" in lucky.reason
    assert gate(0.65, None, 0.6, 0.01, challenger_auc_ci_low=0.55).promote


def test_a_champion_that_cannot_score_the_data_is_named_in_the_decision_not_called_a_first_model():
    why = "champion 2026-11-01-tpot cannot score this data: column 'plan' is missing"
    promoted = gate(0.81, None, 0.6, 0.01, champion_incomparable=why)
    assert promoted.promote and "NOT compared" in promoted.reason and why in promoted.reason
    assert "first model" not in promoted.reason
    refused = gate(0.81, None, 0.6, 0.01, champion_incomparable=why, allow_incomparable=False)
    assert not refused.promote and "CHURN_PROMOTE_WITHOUT_COMPARISON=false" in refused.reason
    # the floor still applies first
    assert not gate(0.55, None, 0.6, 0.01, champion_incomparable=why).promote
    # without a champion at all it stays a first model
    assert gate(0.81, None, 0.6, 0.01).reason.startswith("first model")
