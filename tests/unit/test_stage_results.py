"""Typed stage results: what the model stages put in XCom parses back into the same fields."""

from __future__ import annotations

import json

import pytest

from churn.stages.results import Candidate, GateResult, RegisterResult, TrainResult


def test_results_round_trip_through_json():
    cand = Candidate(name="tpot", version="2026-11-20-tpot-abc123", path="/r/c.joblib", sha256="f" * 64,
                     valid_roc_auc=0.91, fit_seconds=3.5, params={"cv": 3}, metrics={"roc_auc": 0.9})
    trained = TrainResult(retrained=True, reason="no champion yet", attempt="abc123", candidates=[cand.as_dict()])
    xcom = json.loads(json.dumps({**trained.as_dict(), "stage_seconds": 1.5}))  # what Airflow stores
    again = TrainResult.from_dict(xcom)
    assert again.stage_seconds == 1.5 and again.attempt == "abc123"
    assert Candidate.from_dict(again.candidates[0]) == cand
    gate = GateResult.from_dict({"evaluated": True, "promote": False, "reason": "r", "challenger": "tpot",
                                 "candidates": [cand.as_dict()], "unknown_key": 1})
    assert gate.challenger == "tpot" and gate.champion_version is None
    assert RegisterResult.from_dict({"registered": []}).champion is None


def test_a_missing_field_is_named_where_it_is_read():
    with pytest.raises(TypeError, match="reason"):
        TrainResult.from_dict({"retrained": True})
