"""Field readiness, own data (issue 26 items 1-6): files as users deliver them, with only the id and label set.

Each test failed on main 03ae0fb: a dirty bank-churn file (``?`` cells, a row number, a numeric id), a 0/1 label
on its second night, yes/no and 0.7 labels, CR-only line ends, ids no store can hold, headers with spaces.
"""

from __future__ import annotations

import json
import logging
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from churn import pipeline
from churn.config import ChurnConfig
from churn.connections import Resources
from churn.data.ids import id_violations
from churn.data.infer import LabelValuesError, detect_csv_format, infer_kinds, infer_label_values
from churn.data.sources import FileSourceError, parse_missing, read_file_snapshot, read_head
from churn.data.spec import SpecError, spec_from_config
from tests.support.field_data import bank_churn, spreadsheet_churn, write_csv

RUN_DATE = date(2026, 11, 20)
MISSING = parse_missing("?,NA,N/A,-,null,NaN,#N/A")


def bank_env(path: Path, state: Path, **extra: str) -> dict[str, str]:
    """The four settings a new user sets for the bank file (plus test-speed ones)."""
    return {"CHURN_SOURCE": "file", "CHURN_FILE_PATH": str(path), "CHURN_FILE_ID_COLUMN": "CustomerId",
            "CHURN_FILE_LABEL_COLUMN": "Exited", "CHURN_STATE_DIR": str(state), "CHURN_TRAIN_TPOT": "false",
            "CHURN_EXPORT_PMML": "false", **extra}


# ---------------------------------------------------------------- unit tier: inference, labels, reading


def test_dirty_numeric_columns_stay_numeric_and_row_numbers_and_ids_are_not_features():
    sample = bank_churn(10_000)
    kinds = infer_kinds(sample, id_column="CustomerId", label_column="Exited", missing=MISSING)
    assert {"CreditScore", "EstimatedSalary", "NumOfProducts", "Tenure", "Age", "Balance"} <= set(kinds["numeric"])
    assert set(kinds["boolean"]) == {"HasCrCard", "IsActiveMember"}
    assert set(kinds["categorical"]) == {"Geography", "Gender"}
    assert kinds["ignored"]["RowNumber"].startswith("row number")
    assert "Surname" in kinds["ignored"]
    # A numeric id that is not the configured id column is not a feature either.
    other = infer_kinds(sample, id_column="RowNumber", label_column="Exited", missing=MISSING)
    assert other["ignored"]["CustomerId"].startswith("id-like")
    # One unreadable cell (not a missing marker) keeps the column numeric; ingest quarantines that row.
    sample.loc[5, "CreditScore"] = "abc"
    assert "CreditScore" in infer_kinds(sample, id_column="CustomerId", label_column="Exited",
                                        missing=MISSING)["numeric"]


@pytest.mark.parametrize(("values", "expected"), [
    (["0", "1", "1", "?"], {"0": 0, "1": 1}),
    (["yes", "no", "no"], {"yes": 1, "no": 0}),
    (["True", "False"], {"True": 1, "False": 0}),
    (["Y", "N", "NA"], {"Y": 1, "N": 0}),
])
def test_unambiguous_labels_are_mapped(values, expected):
    assert infer_label_values(pd.Series(values), "label", MISSING) == expected


@pytest.mark.parametrize("values", [["0", "1", "0.7"], ["churned", "stayed"], ["yes", "no", "maybe"], ["yes"]])
def test_ambiguous_labels_are_refused_with_the_setting_to_pin(values):
    with pytest.raises(LabelValuesError) as caught:
        infer_label_values(pd.Series(values), "label", MISSING)
    message = str(caught.value)
    assert "CHURN_FILE_LABEL_VALUES=" in message and repr(values[-1]) in message


def test_a_label_of_0_7_stops_ingest_with_the_values_seen(tmp_path):
    frame = bank_churn(500, dirty=False)
    frame.loc[3, "Exited"] = "0.7"
    path = write_csv(frame, tmp_path / "bank.csv")
    cfg = ChurnConfig.from_env(bank_env(path, tmp_path / "state"))
    with pytest.raises(SpecError, match=r"'0\.7'.*CHURN_FILE_LABEL_VALUES="):
        spec_from_config(cfg, [path])


@pytest.mark.parametrize("line_end", ["\r", "\r\n"])
def test_cr_only_and_crlf_files_are_read(tmp_path, line_end):
    frame = bank_churn(300, dirty=False)
    path = write_csv(frame, tmp_path / "bank.csv", line_end=line_end)
    cfg = ChurnConfig.from_env(bank_env(path, tmp_path / "state"))
    spec = spec_from_config(cfg, [path])
    snap = read_file_snapshot(spec, [path], tmp_path / "snap.parquet", RUN_DATE, labelled=True, missing=MISSING)
    assert snap.rows == 300


def test_a_file_without_line_breaks_is_refused_after_a_bounded_read(tmp_path):
    one_line = tmp_path / "one.csv"
    one_line.write_text("a,b,c")  # a header and nothing else: no newline at all
    assert read_head(one_line, "utf-8", 5) == ["a,b,c"]
    huge = tmp_path / "huge.csv"
    huge.write_bytes(b"x," * (3 << 20))  # 6 MiB without a line break
    with pytest.raises(FileSourceError, match="no line break in the first 4 MiB"):
        read_head(huge, "utf-8", 1)


def test_semicolon_and_decimal_comma_are_detected_and_pinning_settings_win(tmp_path, caplog):
    frame = bank_churn(300, dirty=False)
    frame["Balance"] = frame["Balance"].str.replace(".", ",", regex=False)
    frame["EstimatedSalary"] = frame["EstimatedSalary"].str.replace(".", ",", regex=False)
    path = write_csv(frame, tmp_path / "bank.csv", sep=";")
    with caplog.at_level(logging.WARNING, logger="churn.data.infer"):
        fmt = detect_csv_format(path, delimiter=",", decimal=".", thousands="")
    assert (fmt.delimiter, fmt.decimal) == (";", ",")
    assert "CHURN_FILE_DELIMITER=';'" in caplog.text and "CHURN_FILE_DECIMAL=','" in caplog.text
    pinned = detect_csv_format(path, delimiter=";", decimal=".", thousands="", pinned=frozenset({"delimiter",
                                                                                                  "decimal"}))
    assert (pinned.delimiter, pinned.decimal, pinned.detected) == (";", ".", {})


@pytest.mark.parametrize("bad", ['ab"c', "a\\b", "a\x01b", "a\nb", "x" * 129, "a\u2028b"])
def test_ids_no_store_can_hold_break_the_contract(bad):
    reasons = id_violations(pd.Series(["7590-VHVEG", bad, None, "15634602", "ana@example.com"]))
    assert reasons.isna().tolist() == [True, False, True, True, True]


# ---------------------------------------------------------------- integration: the stages on real Postgres


def run_until_scored(cfg: ChurnConfig, res: Resources, as_of: date, key: str) -> dict:
    """ingest -> validate -> drift -> split -> train -> gate -> register -> score for one date."""
    run = pipeline.start_run(cfg, res, as_of, key)
    out = {"run": run, "ingested": pipeline.ingest(cfg, res, run)}
    out["validated"] = pipeline.profile_and_validate(cfg, res, run, out["ingested"])
    drifted = pipeline.drift(cfg, res, run, out["validated"])
    splits = pipeline.split(cfg, res, run, out["validated"])
    trained = pipeline.train(cfg, res, run, splits, drifted)
    evaluation = pipeline.evaluate_and_gate(cfg, res, run, splits, trained)
    out["registered"] = pipeline.register(cfg, res, run, splits, evaluation)
    out["scored"] = pipeline.score(cfg, res, run, out["validated"], out["registered"])
    return out


@pytest.mark.integration
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


@pytest.mark.integration
def test_hostile_ids_are_quarantined_at_validation(tmp_path, fresh_pg_url, redis_url):
    frame = bank_churn(2_000, dirty=False)
    frame["CustomerId"] = "C" + frame["CustomerId"]
    frame.loc[1, "CustomerId"] = 'C"1'
    frame.loc[2, "CustomerId"] = "C\\2"
    frame.loc[3, "CustomerId"] = "C\x073"
    path = write_csv(frame, tmp_path / "bank.csv")
    cfg = ChurnConfig.from_env(bank_env(path, tmp_path / "state"))
    res = Resources.from_urls(fresh_pg_url, redis_url)
    run = pipeline.start_run(cfg, res, RUN_DATE, "ids")
    ingested = pipeline.ingest(cfg, res, run)
    validated = pipeline.profile_and_validate(cfg, res, run, ingested)
    for dataset in ("train", "score"):
        assert validated[dataset]["rows_quarantined"] == 3
        clean = pq.read_table(validated[dataset]["clean_path"], columns=["CustomerId"]).column(0).to_pylist()
        assert not {'C"1', "C\\2", "C\x073"} & set(clean) and len(clean) == 1_997


@pytest.mark.integration
def test_spreadsheet_headers_and_yes_no_label_are_scored_and_exported(tmp_path, fresh_pg_url, redis_url):
    path = write_csv(spreadsheet_churn(3_000), tmp_path / "export.csv")
    cfg = ChurnConfig.from_env({"CHURN_SOURCE": "file", "CHURN_FILE_PATH": str(path),
                                "CHURN_FILE_ID_COLUMN": "Phone number", "CHURN_FILE_LABEL_COLUMN": "Churn?",
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
