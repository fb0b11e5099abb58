"""The synthetic source through ingest -> profile -> validate -> drift on real Postgres (the PSI / KS units:
tests/unit/test_data_drift.py)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd

from churn.stages import common as common_stages, data as data_stages, model as model_stages
from churn.config import ChurnConfig
from churn.connections import Resources
from churn.data.generate import generate, load_source_tables
from churn.data.spec import synthetic_spec
from churn.model import registry
from churn.model.features import ModelSignature

RUN_DATE = date(2026, 11, 20)


# --- integration: synthetic source, stored results, Data Docs, drift vs a champion's reference ----------


def test_synthetic_source_validates_and_drift_feeds_the_retrain_decision(pg_conn, fresh_pg_url, redis_url, tmp_path):
    load_source_tables(pg_conn, generate(3000, RUN_DATE, seed=5))
    cfg = ChurnConfig.from_env({"CHURN_STATE_DIR": str(tmp_path / "state")})
    res = Resources.from_urls(fresh_pg_url, redis_url)
    run = common_stages.start_run(cfg, res, RUN_DATE, "test-drift")
    ingested = data_stages.ingest(cfg, res, run)
    assert ingested["dataset"] == "churn_synthetic" and Path(ingested["spec_path"]).exists()
    validated = data_stages.profile_and_validate(cfg, res, run, ingested)
    assert validated["train"]["success"] and validated["score"]["success"]
    assert Path(validated["data_docs_path"]).exists() and Path(validated["score"]["data_docs_path"]).exists()
    with pg_conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM churn.validation_results WHERE run_key = %s", (run["run_key"],))
        assert cur.fetchone()[0] == 2
        cur.execute("SELECT count(DISTINCT column_name) FROM churn.column_profiles WHERE dataset = 'score'")
        assert cur.fetchone()[0] == len(synthetic_spec().feature_columns) + 1
    pg_conn.commit()

    # A champion trained on this data; its reference.parquet is a sample of the training features.
    spec = synthetic_spec()
    train_clean = pd.read_parquet(validated["train"]["clean_path"])
    signature = ModelSignature.infer(train_clean, spec.id_column, spec.label_column, spec.numeric, spec.boolean,
                                     spec.categorical)
    version = "2026-11-01-logistic_baseline"
    artifact, sha = registry.save_artifact({"stand-in": "model"}, signature, tmp_path / "models", version)
    version_dir = Path(artifact).parent
    registry.register(pg_conn, version=version, run_key="2026-11-01", model_name="logistic_baseline",
                      status="challenger", reason="test", metrics={"roc_auc": 0.8}, params={}, signature=signature,
                      artifact_path=artifact, artifact_sha256=sha, data_fingerprint="test")
    registry.promote(pg_conn, version_dir.name, "test")

    missing = data_stages.drift(cfg, res, run, validated)
    assert missing["computed"] is False and "reference.parquet" in missing["reason"]

    train_clean[[spec.id_column, *signature.feature_columns]].to_parquet(version_dir / "reference.parquet")
    steady = data_stages.drift(cfg, res, run, validated)
    assert steady["computed"] and set(steady["features"]) == set(signature.feature_columns)
    assert steady["features"]["monthly_charge"]["psi"] < cfg.drift_psi_threshold
    assert steady["features"]["monthly_charge"]["ks"] is not None and steady["features"]["contract"]["ks"] is None
    with pg_conn.cursor() as cur:
        cur.execute("SELECT count(*), min(reference_version) FROM churn.drift_metrics WHERE run_key = %s",
                    (run["run_key"],))
        assert cur.fetchone() == (len(signature.feature_columns), version_dir.name)
    pg_conn.commit()

    # Tonight's customers are charged three times as much: drift, and a reason to retrain.
    shifted_path = tmp_path / "score_shifted.parquet"
    score = pd.read_parquet(validated["score"]["clean_path"])
    score.assign(monthly_charge=score["monthly_charge"] * 3).to_parquet(shifted_path)
    shifted = data_stages.drift(cfg, res, run, {**validated, "score": {**validated["score"], "clean_path": str(shifted_path)}})
    assert "monthly_charge" in shifted["drifted"] and shifted["max_psi_feature"] == "monthly_charge"
    retrain, why = model_stages.retrain_decision(cfg, res, run, shifted)
    assert retrain and "drift" in why and "monthly_charge" in why
    with pg_conn.cursor() as cur:  # re-running the stage replaced the run's rows, no duplicates
        cur.execute("SELECT count(*) FROM churn.drift_metrics WHERE run_key = %s", (run["run_key"],))
        assert cur.fetchone()[0] == len(signature.feature_columns)
