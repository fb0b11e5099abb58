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


def test_nested_records_parse_back_into_their_types():
    from churn.data.snapshot import Snapshot
    from churn.data.validate import ValidationOutcome
    from churn.publish.files import ExportFile
    from churn.stages.results import ExportResult, IngestResult, ValidationResult, parse

    ingested = IngestResult(train=Snapshot("/r/t.parquet", 10, "2026-11-20", True),
                            score=Snapshot("/r/s.parquet", 12, "2026-11-20", False, sample_fraction=0.5),
                            dataset="churn_features", spec_path="/r/dataset_spec.json")
    again = parse(IngestResult, json.loads(json.dumps(ingested.as_dict())))
    assert again == ingested and isinstance(again.score, Snapshot) and again.score.sample_fraction == 0.5
    outcome = ValidationOutcome(dataset="score", success=True, rows_checked=12, rows_quarantined=2,
                                clean_path="/r/clean.parquet", result_path="/r/result.json")
    validated = parse(ValidationResult, json.loads(json.dumps(ValidationResult(train=outcome, score=outcome).as_dict())))
    assert validated.score.clean_path == "/r/clean.parquet" and isinstance(validated.train, ValidationOutcome)
    export = ExportResult(path="/x/a.csv", rows=3, exports=[ExportFile("/x/a.csv", "/x/a.manifest.json", 3, "ab")])
    assert parse(ExportResult, json.loads(json.dumps(export.as_dict()))).exports[0].manifest_path == "/x/a.manifest.json"


def test_a_partial_nested_record_fails_with_the_missing_field():
    from churn.stages.results import ValidationResult, parse

    with pytest.raises(TypeError, match="rows_checked"):
        parse(ValidationResult, {"train": {"clean_path": "/r/c.parquet"}, "score": {"clean_path": "/r/c.parquet"}})


def test_timed_sets_the_stage_duration_without_touching_the_run_timings():
    import time

    from churn.stages.common import timed
    from churn.stages.results import SummaryResult, parse

    summary = SummaryResult(run_key="2026-11-20", stage_timings={"ingested": 1.5, "scored": 0.4})
    xcom = timed({"run_key": "2026-11-20"}, "summarize", time.monotonic() - 0.01, summary)
    again = parse(SummaryResult, xcom)
    assert again.stage_timings == {"ingested": 1.5, "scored": 0.4}  # the run's figures stay
    assert isinstance(again.stage_seconds, float) and again.stage_seconds >= 0.01  # summarize's own duration
