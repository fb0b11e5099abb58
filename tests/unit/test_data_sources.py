"""Unit: file sources (CSV and Parquet), the {ds} drop-folder convention, the dataset spec from configuration."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pyarrow.parquet as pq
import pytest

from churn.config import ChurnConfig, ConfigError
from churn.data.sources import FileSourceError, read_file_snapshot, resolve_files
from churn.data.spec import PARSE_ERRORS_COLUMN, SpecError, load_run_spec, parse_label_values, spec_from_config
from tests.support.bad_inputs.corpus import TELCO_ENV, clean_frame

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
    with pytest.raises(SpecError, match="CHURN_LABEL_VALUES"):
        parse_label_values("Yes=1")
    with pytest.raises(SpecError, match=r"\['tenure'\] are listed twice"):
        telco_spec(CHURN_CATEGORICAL_COLUMNS="tenure,gender")
    with pytest.raises(SpecError, match="CHURN_FILE_PATH"):
        spec_from_config(ChurnConfig.from_env({"CHURN_SOURCE": "file"}))
    with pytest.raises(ConfigError, match="CHURN_SOURCE='s3' is not allowed; use one of postgres, file, sql"):
        ChurnConfig.from_env({"CHURN_SOURCE": "s3"})  # refused when the configuration is read


def test_compressed_csv_gives_the_same_snapshot_as_plain_csv(tmp_path):
    import bz2
    import gzip

    frame = clean_frame(500)
    frame.to_csv(tmp_path / "plain.csv", index=False)
    raw = (tmp_path / "plain.csv").read_bytes()
    (tmp_path / "export.csv.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "export.csv.bz2").write_bytes(bz2.compress(raw))
    spec = telco_spec()
    snapshots = {}
    for name in ("plain.csv", "export.csv.gz", "export.csv.bz2"):
        snap = read_file_snapshot(spec, [tmp_path / name], tmp_path / "out" / f"{name}.parquet", RUN_DATE,
                                  labelled=True, chunk_rows=128)
        assert snap.rows == 500 and snap.max_chunk_rows <= 128
        snapshots[name] = pd.read_parquet(snap.path)
    pd.testing.assert_frame_equal(snapshots["export.csv.gz"], snapshots["plain.csv"])
    pd.testing.assert_frame_equal(snapshots["export.csv.bz2"], snapshots["plain.csv"])
    assert snapshots["plain.csv"][PARSE_ERRORS_COLUMN].isna().all()
    # the drop-folder glob picks compressed deliveries up like plain ones
    assert [p.name for p in resolve_files(str(tmp_path / "export.csv.*"), RUN_DATE)] == ["export.csv.bz2",
                                                                                        "export.csv.gz"]


def test_regional_spreadsheet_export_reads_like_the_plain_one(tmp_path):
    """Semicolons, decimal commas, dots for thousands, Windows-1252 text and day-first dates, by configuration."""
    frame = clean_frame(200).assign(updated_at=[f"2026-11-{1 + i % 19:02d} 08:30" for i in range(200)])
    frame.loc[7, "TotalCharges"] = "1234.5"
    frame.loc[8, "MonthlyCharges"] = "abc"          # unreadable in both conventions
    frame.loc[9, "gender"] = "Fémale"               # a cp1252 byte in a category
    regional = frame.copy()
    for column in ("MonthlyCharges", "TotalCharges"):
        regional[column] = [v if v == "abc" else f"{float(v):,.2f}".replace(",", "_").replace(".", ",")
                            .replace("_", ".") for v in frame[column]]
    regional["updated_at"] = [f"{v[8:10]}.{v[5:7]}.{v[0:4]} {v[11:]}" for v in frame["updated_at"]]
    assert regional.loc[7, "TotalCharges"] == "1.234,50"
    frame.to_csv(tmp_path / "plain.csv", index=False)
    regional.to_csv(tmp_path / "regional.csv", index=False, sep=";", encoding="cp1252")
    plain_spec = telco_spec(CHURN_TIMESTAMP_COLUMN="updated_at")
    plain = pd.read_parquet(read_file_snapshot(plain_spec, [tmp_path / "plain.csv"], tmp_path / "p.parquet",
                                               RUN_DATE, labelled=True).path)
    regional_cfg = ChurnConfig.from_env({**TELCO_ENV, "CHURN_FILE_PATH": "x.csv", "CHURN_TIMESTAMP_COLUMN":
                                         "updated_at", "CHURN_FILE_DELIMITER": ";", "CHURN_FILE_DECIMAL": ",",
                                         "CHURN_FILE_THOUSANDS": ".", "CHURN_FILE_ENCODING": "cp1252",
                                         "CHURN_FILE_DAYFIRST": "true"})
    snap = read_file_snapshot(spec_from_config(regional_cfg), [tmp_path / "regional.csv"], tmp_path / "r.parquet",
                              RUN_DATE, labelled=True, delimiter=";", encoding="cp1252", decimal=",",
                              thousands=".", dayfirst=True)
    read = pd.read_parquet(snap.path)
    pd.testing.assert_frame_equal(read.drop(columns=[PARSE_ERRORS_COLUMN]), plain.drop(columns=[PARSE_ERRORS_COLUMN]))
    assert read.loc[7, "TotalCharges"] == 1234.5 and read.loc[9, "gender"] == "Fémale"
    assert read.loc[3, "updated_at"] == pd.Timestamp("2026-11-04 08:30", tz="UTC")  # 04.11., not 11 April
    assert "MonthlyCharges: 'abc' is not a number" in read.loc[8, PARSE_ERRORS_COLUMN]
    # a point in a decimal-comma file without a thousands separator is reported, never guessed
    lone = ChurnConfig.from_env({**TELCO_ENV, "CHURN_FILE_PATH": "x.csv", "CHURN_FILE_DELIMITER": ";",
                                 "CHURN_FILE_DECIMAL": ","})
    from churn.data.sources import coerce_chunk

    out = coerce_chunk(regional.iloc[[7]].assign(TotalCharges="1.234,50"), spec_from_config(lone), True,
                       decimal=",")
    assert pd.isna(out["TotalCharges"].iloc[0]) and "is not a number" in out[PARSE_ERRORS_COLUMN].iloc[0]


def test_regional_settings_that_contradict_each_other_are_refused():
    with pytest.raises(ConfigError, match="CHURN_FILE_DECIMAL=',' / CHURN_FILE_THOUSANDS=','"):
        ChurnConfig.from_env({"CHURN_FILE_DECIMAL": ",", "CHURN_FILE_THOUSANDS": ","})
    with pytest.raises(ConfigError, match="must differ"):
        ChurnConfig.from_env({"CHURN_FILE_DELIMITER": ",", "CHURN_FILE_DECIMAL": ","})


NO_KINDS = {"CHURN_NUMERIC_COLUMNS": "", "CHURN_BOOLEAN_COLUMNS": "", "CHURN_CATEGORICAL_COLUMNS": ""}


def test_kinds_are_inferred_by_the_documented_rules_when_none_are_configured(tmp_path):
    frame = clean_frame(300).assign(
        email=[f"user{i}@example.com" for i in range(300)],          # id-like text: not a feature
        updated_at=[f"2026-11-{1 + i % 19:02d}" for i in range(300)],  # a date: not a feature
        notes="",                                                     # empty
        region=[f"R{i % 80}" for i in range(300)],                     # 80 distinct > 50: high cardinality
    )
    frame.loc[5, "TotalCharges"] = " "  # a blank in a numeric column stays numeric
    path = tmp_path / "drop.csv"
    frame.to_csv(path, index=False)
    cfg = ChurnConfig.from_env({**TELCO_ENV, **NO_KINDS, "CHURN_FILE_PATH": str(path)})
    spec = spec_from_config(cfg, [path])
    assert set(spec.numeric) == {"tenure", "MonthlyCharges", "TotalCharges"}
    assert set(spec.boolean) == {"SeniorCitizen", "Partner", "Dependents", "PhoneService", "PaperlessBilling"}
    assert "gender" in spec.categorical and "Contract" in spec.categorical and "MultipleLines" in spec.categorical
    ignored = spec.inference["ignored"]
    assert ignored["email"].startswith("id-like") and ignored["updated_at"] == "timestamp"
    assert ignored["notes"] == "empty" and ignored["region"].startswith("high cardinality")
    assert spec.inference["sample_rows"] == 300 and spec.inference["file"] == str(path)
    assert not {"customerID", "Churn"} & set(spec.feature_columns)
    # configured lists always win: no inference at all
    pinned = spec_from_config(ChurnConfig.from_env({**TELCO_ENV, "CHURN_FILE_PATH": str(path)}), [path])
    assert pinned.inference == {} and pinned.numeric == ["tenure", "MonthlyCharges", "TotalCharges"]
    # without a delivery to look at and without lists, the error says both ways out
    with pytest.raises(SpecError, match="let ingest infer them"):
        spec_from_config(cfg)


def test_telco_kinds_inferred_from_path_id_and_label_match_the_readme_configuration():
    from tests.support.datasets import require_dataset
    from tests.support.datasets import TELCO

    require_dataset(TELCO)
    cfg = ChurnConfig.from_env({"CHURN_SOURCE": "file", "CHURN_FILE_PATH": str(TELCO),
                                "CHURN_ID_COLUMN": "customerID", "CHURN_LABEL_COLUMN": "Churn"})
    spec = spec_from_config(cfg, [TELCO])
    for kind in ("numeric", "boolean", "categorical"):
        configured = TELCO_ENV[f"CHURN_{kind.upper()}_COLUMNS"].split(",")
        assert sorted(getattr(spec, kind)) == sorted(configured), kind
    assert spec.inference["ignored"] == {}
