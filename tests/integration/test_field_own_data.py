"""Field readiness, own data (issue 26 items 1-6): files as users deliver them, with only the id and label set.

Each test failed on main 03ae0fb: a dirty bank-churn file (``?`` cells, a row number, a numeric id), a 0/1 label
on its second night, yes/no and 0.7 labels, CR-only line ends, ids no store can hold, headers with spaces.
This half runs the stages on real Postgres; inference, labels and reading are in tests/unit/test_field_own_data.py.
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import pyarrow.parquet as pq

from churn.stages import common as common_stages, data as data_stages, model as model_stages, scoring as scoring_stages
from churn.config import ChurnConfig
from churn.connections import Resources
from tests.support.field_data import bank_churn, bank_env, spreadsheet_churn, write_csv

RUN_DATE = date(2026, 11, 20)


def run_until_scored(cfg: ChurnConfig, res: Resources, as_of: date, key: str) -> dict:
    """ingest -> validate -> drift -> split -> train -> gate -> register -> score for one date."""
    run = common_stages.start_run(cfg, res, as_of, key)
    out = {"run": run, "ingested": data_stages.ingest(cfg, res, run)}
    out["validated"] = data_stages.profile_and_validate(cfg, res, run, out["ingested"])
    drifted = data_stages.drift(cfg, res, run, out["validated"])
    splits = data_stages.split(cfg, res, run, out["validated"])
    trained = model_stages.train(cfg, res, run, splits, drifted)
    evaluation = model_stages.evaluate_and_gate(cfg, res, run, splits, trained)
    out["registered"] = model_stages.register(cfg, res, run, splits, evaluation)
    out["scored"] = scoring_stages.score(cfg, res, run, out["validated"], out["registered"])
    return out


def test_dirty_bank_file_with_four_settings_runs_two_nights(tmp_path, fresh_pg_url, redis_url, pg_conn):
    frame = bank_churn(10_000)
    frame.loc[7, "CreditScore"] = "abc"  # not a missing marker: that row is quarantined with the reason
    path = write_csv(frame, tmp_path / "Churn_Modelling.csv")
    cfg = ChurnConfig.from_env(bank_env(path, tmp_path / "state"))
    res = Resources.from_urls(fresh_pg_url, redis_url)
    first = run_until_scored(cfg, res, RUN_DATE, "night-1")
    spec = json.loads(Path(first["ingested"]["spec_path"]).read_text())
    assert {"CreditScore", "EstimatedSalary", "NumOfProducts", "Tenure"} <= set(spec["numeric"])
    assert "HasCrCard" in spec["boolean"] and "RowNumber" not in spec["numeric"]
    assert spec["label_values"] == {"0": 0, "1": 1}
    train = first["validated"]["train"]
    assert train["rows_quarantined"] == 2, train  # the '?' label and the 'abc' credit score
    with pg_conn.cursor() as cur:
        cur.execute("SELECT reasons FROM churn.quarantine WHERE dataset = 'train' ORDER BY row_number")
        reasons = [" ".join(r[0]) for r in cur.fetchall()]
    assert any("'abc' is not a number" in r for r in reasons) and any("Exited" in r for r in reasons)
    assert first["registered"]["champion"] is not None
    assert first["scored"]["rows"] == 10_000 - 1  # the score set has no label check: only 'abc' is out

    second = run_until_scored(cfg, res, RUN_DATE + timedelta(days=1), "night-2")  # the proposed suite applies
    assert second["validated"]["train"]["suite_version"] not in ("baseline", None)
    assert second["validated"]["train"]["rows_quarantined"] == 2
    assert second["scored"]["rows"] == first["scored"]["rows"]


def test_hostile_ids_are_quarantined_at_validation(tmp_path, fresh_pg_url, redis_url):
    frame = bank_churn(2_000, dirty=False)
    frame["CustomerId"] = "C" + frame["CustomerId"]
    frame.loc[1, "CustomerId"] = 'C"1'
    frame.loc[2, "CustomerId"] = "C\\2"
    frame.loc[3, "CustomerId"] = "C\x073"
    path = write_csv(frame, tmp_path / "bank.csv")
    cfg = ChurnConfig.from_env(bank_env(path, tmp_path / "state"))
    res = Resources.from_urls(fresh_pg_url, redis_url)
    run = common_stages.start_run(cfg, res, RUN_DATE, "ids")
    ingested = data_stages.ingest(cfg, res, run)
    validated = data_stages.profile_and_validate(cfg, res, run, ingested)
    for dataset in ("train", "score"):
        assert validated[dataset]["rows_quarantined"] == 3
        clean = pq.read_table(validated[dataset]["clean_path"], columns=["CustomerId"]).column(0).to_pylist()
        assert not {'C"1', "C\\2", "C\x073"} & set(clean) and len(clean) == 1_997


def test_spreadsheet_headers_and_yes_no_label_are_scored_and_exported(tmp_path, fresh_pg_url, redis_url):
    path = write_csv(spreadsheet_churn(3_000), tmp_path / "export.csv")
    cfg = ChurnConfig.from_env({"CHURN_SOURCE": "file", "CHURN_FILE_PATH": str(path),
                                "CHURN_ID_COLUMN": "Phone number", "CHURN_LABEL_COLUMN": "Churn?",
                                "CHURN_STATE_DIR": str(tmp_path / "state"), "CHURN_TRAIN_TPOT": "false",
                                "CHURN_EXPORT_PMML": "false"})
    res = Resources.from_urls(fresh_pg_url, redis_url)
    out = run_until_scored(cfg, res, RUN_DATE, "sheet")
    spec = json.loads(Path(out["ingested"]["spec_path"]).read_text())
    assert spec["label_values"] == {"yes": 1, "no": 0}
    assert {"Account length", "Total day minutes", "Total day-minutes", "2nd line", "Région"} <= \
        set(spec["numeric"] + spec["boolean"] + spec["categorical"])
    champion = next(r for r in out["registered"]["registered"] if r["status"] == "champion")
    assert "onnx" in champion["formats"], out["registered"]
    assert out["scored"]["rows"] == 3_000
