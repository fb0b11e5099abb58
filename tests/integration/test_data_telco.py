"""Integration: the Telco CSV goes through the same pipeline functions as the synthetic source, by configuration only.

ingest -> profile_and_validate -> drift -> split -> train (baseline only, CHURN_TRAIN_TPOT=false) -> evaluate -> register -> score,
against the real Postgres, with nothing but ``CHURN_*`` variables describing the file.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from churn.stages import common as common_stages, data as data_stages, model as model_stages, scoring as scoring_stages
from churn.config import ChurnConfig
from churn.connections import Resources
from churn.data.spec import SPEC_FILE
from tests.support.datasets import TELCO, TELCO_ENV, require_dataset


RUN_DATE = date(2026, 11, 20)


@pytest.fixture
def telco_cfg(tmp_path) -> ChurnConfig:
    require_dataset(TELCO)
    return ChurnConfig.from_env({
        # Baseline only: a tiny TPOT budget is unreliable on a loaded 2-core box; the e2e test covers TPOT.
        **TELCO_ENV, "CHURN_STATE_DIR": str(tmp_path / "state"), "CHURN_TRAIN_TPOT": "false",
        "CHURN_INGEST_CHUNK_ROWS": "1000",
    })


def test_telco_file_ingests_validates_trains_and_scores(telco_cfg, fresh_pg_url, redis_url, pg_conn):
    res = Resources.from_urls(fresh_pg_url, redis_url)
    run = common_stages.start_run(telco_cfg, res, RUN_DATE, "test-telco")
    ingested = data_stages.ingest(telco_cfg, res, run)
    assert ingested["train"]["rows"] == ingested["score"]["rows"] == 7043
    assert ingested["train"]["max_chunk_rows"] <= 1000  # read in bounded chunks
    spec = json.loads(Path(ingested["spec_path"]).read_text())
    assert Path(ingested["spec_path"]).name == SPEC_FILE
    assert (spec["id_column"], spec["label_column"], spec["suite"]) == ("customerID", "Churn", "telco_churn")

    validated = data_stages.profile_and_validate(telco_cfg, res, run, ingested)
    # The 11 blank TotalCharges are missing values (imputed later), not bad rows.
    assert validated["train"]["rows_quarantined"] == 0 and validated["score"]["rows_quarantined"] == 0
    clean = pd.read_parquet(validated["train"]["clean_path"])
    assert clean["TotalCharges"].isna().sum() == 11
    assert sorted(clean["Churn"].unique()) == [0, 1] and clean["Churn"].sum() == 1869
    docs = Path(validated["data_docs_path"])
    assert docs.exists() and {"train.html", "score.html"} <= {p.name for p in docs.parent.glob("*.html")}
    assert "expect_column_values_to_be_in_set" in (docs.parent / "train.html").read_text() or \
        "values must belong to this set" in (docs.parent / "train.html").read_text()
    with pg_conn.cursor() as cur:
        cur.execute("SELECT dataset, success, rows_checked FROM churn.validation_results ORDER BY dataset")
        assert cur.fetchall() == [("score", True, 7043), ("train", True, 7043)]
        cur.execute("SELECT profile FROM churn.column_profiles WHERE run_key = %s AND dataset = 'train' "
                    "AND column_name = 'tenure'", (run["run_key"],))
        profile = cur.fetchone()[0]
        assert profile["min"] == 0 and profile["max"] == 72

    drifted = data_stages.drift(telco_cfg, res, run, validated)
    assert drifted["computed"] is False and "no champion" in drifted["reason"]

    splits = data_stages.split(telco_cfg, res, run, validated)
    trained = model_stages.train(telco_cfg, res, run, splits, drifted)
    assert trained["retrained"] and [c["name"] for c in trained["candidates"]] == ["logistic_baseline",
                                                                                "hist_gradient_boosting"]
    evaluation = model_stages.evaluate_and_gate(telco_cfg, res, run, splits, trained)
    registered = model_stages.register(telco_cfg, res, run, splits, evaluation)
    assert registered["champion"] is not None, registered
    scored = scoring_stages.score(telco_cfg, res, run, validated, registered)
    assert scored["rows"] == 7043
    scores = pd.read_parquet(scored["path"])
    assert scores["customer_id"].is_unique and scores["customer_id"].iloc[0] in set(clean["customerID"])
    best = max(c["metrics"]["roc_auc"] for c in evaluation["candidates"])
    assert best > 0.8  # the dataset README's reference is ~0.84
