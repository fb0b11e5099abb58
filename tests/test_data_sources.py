"""Unit: file sources (CSV and Parquet), the {ds} drop-folder convention, the dataset spec from configuration."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pyarrow.parquet as pq
import pytest

from churn.config import ChurnConfig, ConfigError
from churn.data.sources import FileSourceError, read_file_snapshot, resolve_files
from churn.data.spec import PARSE_ERRORS_COLUMN, SpecError, load_run_spec, parse_label_values, spec_from_config
from tests.bad_inputs.corpus import TELCO_ENV, clean_frame

RUN_DATE = date(2026, 11, 20)


def telco_spec(**extra: str):
    return spec_from_config(ChurnConfig.from_env({**TELCO_ENV, "CHURN_FILE_PATH": "x.csv", **extra}))


def test_run_date_selects_the_delivery_and_a_rerun_reads_the_same_files(tmp_path):
    for day in ("2026-11-19", "2026-11-20"):
        (tmp_path / day).mkdir()
        for part in ("a", "b"):
            (tmp_path / day / f"customers_{part}.csv").write_text("x\n")
    pattern = str(tmp_path / "{ds}" / "customers_*.csv")
    files = resolve_files(pattern, RUN_DATE)
    assert [f.name for f in files] == ["customers_a.csv", "customers_b.csv"]
    assert all(f.parent.name == "2026-11-20" for f in files)
    assert resolve_files(pattern, RUN_DATE) == files
    with pytest.raises(FileSourceError, match=r"no file matches CHURN_FILE_PATH.*2026-11-21"):
        resolve_files(pattern, date(2026, 11, 21))


def test_parquet_exports_are_read_in_chunks_with_native_types(tmp_path):
    frame = clean_frame(300)
    typed = frame.assign(tenure=frame["tenure"].astype(int), MonthlyCharges=frame["MonthlyCharges"].astype(float),
                         TotalCharges=frame["TotalCharges"].astype(float),
                         SeniorCitizen=frame["SeniorCitizen"].astype(int))
    typed.loc[3, "TotalCharges"] = None
    source = tmp_path / "export.parquet"
    typed.to_parquet(source, row_group_size=50)
    snap = read_file_snapshot(telco_spec(), [source], tmp_path / "out.parquet", RUN_DATE, labelled=True,
                              chunk_rows=64)
    assert snap.rows == 300 and snap.max_chunk_rows <= 64
    out = pd.read_parquet(snap.path)
    assert out["tenure"].dtype == "float64" and out["TotalCharges"].isna().sum() == 1
    assert out["SeniorCitizen"].tolist() == typed["SeniorCitizen"].astype(bool).tolist()
    assert out[PARSE_ERRORS_COLUMN].isna().all()
    assert pq.ParquetFile(snap.path).schema_arrow.field("Partner").type == "bool"


def test_csv_and_parquet_of_the_same_data_give_the_same_snapshot(tmp_path):
    frame = clean_frame(120)
    frame.to_csv(tmp_path / "a.csv", index=False)
    frame.to_parquet(tmp_path / "a.parquet")
    spec = telco_spec()
    from_csv = pd.read_parquet(read_file_snapshot(spec, [tmp_path / "a.csv"], tmp_path / "1.parquet", RUN_DATE,
                                                  labelled=True).path)
    from_parquet = pd.read_parquet(read_file_snapshot(spec, [tmp_path / "a.parquet"], tmp_path / "2.parquet",
                                                      RUN_DATE, labelled=True).path)
    pd.testing.assert_frame_equal(from_csv, from_parquet)


def test_spec_from_configuration_is_checked_and_round_trips(tmp_path):
    spec = telco_spec()
    assert spec.label_values == {"Yes": 1, "No": 0} and spec.suite == "telco_churn"
    assert load_run_spec(spec.write(tmp_path).parent) == spec
    with pytest.raises(SpecError, match="CHURN_FILE_LABEL_VALUES"):
        parse_label_values("Yes=1")
    with pytest.raises(SpecError, match=r"\['tenure'\] are listed twice"):
        telco_spec(CHURN_FILE_CATEGORICAL_COLUMNS="tenure,gender")
    with pytest.raises(SpecError, match="CHURN_FILE_PATH"):
        spec_from_config(ChurnConfig.from_env({"CHURN_SOURCE": "file"}))
    with pytest.raises(ConfigError, match="CHURN_SOURCE='s3' is not allowed; use one of postgres, file"):
        ChurnConfig.from_env({"CHURN_SOURCE": "s3"})  # refused when the configuration is read
