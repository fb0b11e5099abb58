"""Field readiness, own data (issue 26 items 1-6): files as users deliver them, with only the id and label set.

Each test failed on main 03ae0fb: a dirty bank-churn file (``?`` cells, a row number, a numeric id), a 0/1 label
on its second night, yes/no and 0.7 labels, CR-only line ends, ids no store can hold, headers with spaces.
This half needs no server (inference, labels, reading); the stages on real Postgres are in
tests/integration/test_field_own_data.py.
"""

from __future__ import annotations

import logging
from datetime import date

import pandas as pd
import pytest

from churn.config import ChurnConfig
from churn.data.ids import id_violations
from churn.data.infer import LabelValuesError, detect_csv_format, infer_kinds, infer_label_values
from churn.data.sources import FileSourceError, read_file_snapshot, read_head
from churn.data.spec import SpecError, spec_from_config
from tests.support.field_data import MISSING, bank_churn, bank_env, write_csv

RUN_DATE = date(2026, 11, 20)


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
    assert "CHURN_LABEL_VALUES=" in message and repr(values[-1]) in message


def test_a_label_of_0_7_stops_ingest_with_the_values_seen(tmp_path):
    frame = bank_churn(500, dirty=False)
    frame.loc[3, "Exited"] = "0.7"
    path = write_csv(frame, tmp_path / "bank.csv")
    cfg = ChurnConfig.from_env(bank_env(path, tmp_path / "state"))
    with pytest.raises(SpecError, match=r"'0\.7'.*CHURN_LABEL_VALUES="):
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
