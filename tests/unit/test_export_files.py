"""Unit tests for export files: config parsing, formula neutralization, quoting/UTF-8, gzip, manifest, re-runs."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

from churn.config import ChurnConfig, ConfigError
from churn.publish.files import (DEFAULT_COLUMNS, ExportSpec, neutralize_cell, parse_exports, write_export,
                                 write_rows)

MANIFEST = {"export": "t", "model_version": "2026-11-20-tpot", "run_id": "2026-11-20"}


def _read_csv(path) -> list[list[str]]:
    data = open(path, "rb").read()
    if str(path).endswith(".gz"):
        data = gzip.decompress(data)
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


# --------------------------------------------------------------------------- config


def test_default_exports_equal_the_first_versions_behaviour():
    (spec,) = parse_exports(ChurnConfig.from_env({}).exports, "high")
    assert spec.bands == ("high",) and spec.min_decile is None and spec.probability_above is None
    assert spec.columns == DEFAULT_COLUMNS and spec.gzip is False
    assert spec.file_name("2026-11-20") == "churn_high_risk_2026-11-20.csv"
    assert len(parse_exports('[{"name": "a", "band": "high"}, {"name": "b", "min_decile": 10}]')) == 2
    (medium,) = parse_exports("", "medium")
    assert medium.file_name("2026-11-20") == "churn_medium_risk_2026-11-20.csv"


def test_exports_from_environment_json():
    raw = json.dumps([
        {"name": "top_decile", "min_decile": 10, "columns": ["customer_id", "email", "run_date"], "gzip": True,
         "file": "journey_{name}_{run_date}.csv"},
        {"name": "hot", "band": ["medium", "high"], "probability_above": 0.8},
    ])
    cfg = ChurnConfig.from_env({"CHURN_EXPORTS": raw})
    top, hot = parse_exports(cfg.exports, cfg.export_band)
    assert top.min_decile == 10 and top.gzip and top.attributes == ("email",)
    assert top.file_name("2026-11-20") == "journey_top_decile_2026-11-20.csv.gz"
    assert hot.bands == ("medium", "high") and hot.probability_above == 0.8 and hot.columns == DEFAULT_COLUMNS


@pytest.mark.parametrize("raw, message", [
    ("{not json", "not valid JSON"),
    ("[]", "non-empty JSON list"),
    ('[{"name": "a", "band": "hgh"}]', "'band' must be one of"),
    ('[{"name": "a"}]', "at least one of"),
    ('[{"name": "a", "min_decile": 11}]', "'min_decile' must be an integer 1..10"),
    ('[{"name": "a", "probability_above": 1.5}]', "'probability_above' must be a number"),
    ('[{"name": "a", "band": "high", "colums": ["email"]}]', "unknown key"),
    ('[{"name": "a", "band": "high", "columns": ["email; DROP TABLE x"]}]', "must be identifiers"),
    ('[{"name": "a", "band": "high", "file": "churn.csv"}]', "must contain {run_date}"),
    ('[{"name": "a", "band": "high", "file": "../x_{run_date}.csv"}]', "plain file name"),
    ('[{"name": "a", "band": "high", "file": "x_{run_date}_{user}.csv"}]', "no placeholders other"),
    ('[{"name": "a", "band": "high", "gzip": "yes"}]', "'gzip' must be true or false"),
    ('[{"name": "a", "band": "high"}, {"name": "a", "band": "low", "file": "b_{run_date}.csv"}]', "more than one"),
    ('[{"name": "../a", "band": "high"}]', "'name' must be"),
    ('[{"name": "a", "band": "high", "file": "x_{run_date}.csv"}, {"name": "b", "band": "low", '
     '"file": "x_{run_date}.csv"}]', "file name"),
])
def test_bad_export_definitions_say_what_to_fix(raw, message):
    with pytest.raises(ConfigError, match="CHURN_EXPORTS") as info:
        parse_exports(raw)
    assert message in str(info.value)


# --------------------------------------------------------------------------- cells


@pytest.mark.parametrize("value", ["=1+1", "+31 6 1234", "-2+3", "@SUM(A1)", "\tcmd", "\r=cmd",
                                   '=HYPERLINK("http://x","y")'])
def test_formula_starts_are_neutralized(value):
    assert neutralize_cell(value) == "'" + value


@pytest.mark.parametrize("value", ["alice@example.com", "Zoë", "1=1", "", -3, 0.5, None])
def test_harmless_values_are_unchanged(value):
    assert neutralize_cell(value) == value


def test_written_file_neutralizes_and_round_trips_quoting_and_utf8(tmp_path):
    rows = [
        ("C1", 0.91, "Müller, Jörg", '=cmd|"/c calc"!A1'),
        ("C2", -0.5, 'He said "hi", then left', "+44 20 7946 0000"),
        ("C3", 0.7, "Łukasz Żółć 東京", "@evil"),
        ("C4", 0.6, "line\nbreak, and \r\n crlf", "\tTAB"),
        ("C5", 0.5, None, "-1"),
    ]
    out = write_rows([rows[:2], rows[2:]], ["customer_id", "churn_probability", "name", "note"], tmp_path,
                     "x_2026-11-20.csv", manifest=MANIFEST)
    back = _read_csv(out.path)
    assert back[0] == ["customer_id", "churn_probability", "name", "note"]
    assert back[1] == ["C1", "0.91", "Müller, Jörg", "'" + '=cmd|"/c calc"!A1']
    assert back[2] == ["C2", "-0.5", 'He said "hi", then left', "'+44 20 7946 0000"]
    assert back[3] == ["C3", "0.7", "Łukasz Żółć 東京", "'@evil"]
    assert back[4] == ["C4", "0.6", "line\nbreak, and \r\n crlf", "'\tTAB"]
    assert back[5] == ["C5", "0.5", "", "'-1"]
    assert len(back) == 6 and out.rows == 5
    raw = open(out.path, "rb").read()
    assert raw.startswith(b"customer_id,") and "Müller".encode("utf-8") in raw  # UTF-8, no BOM
    assert '"Müller, Jörg"'.encode("utf-8") in raw and b"\r\n" in raw  # quoted, RFC 4180 line ends
    for line in back[1:]:  # no cell as read by a spreadsheet starts with a formula character
        assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in line[2:])


def test_dates_booleans_and_nulls_are_formatted(tmp_path):
    when = datetime(2026, 11, 20, 2, 14, 3, tzinfo=timezone.utc)
    out = write_rows([[("C1", when, True, None)]], ["customer_id", "scored_at", "flag", "email"], tmp_path,
                     "d_2026-11-20.csv", manifest=MANIFEST)
    assert _read_csv(out.path)[1] == ["C1", "2026-11-20T02:14:03+00:00", "true", ""]


# --------------------------------------------------------------------------- files


def test_gzip_round_trip_and_manifest_checksum(tmp_path):
    rows = [(f"C{i:05d}", round(i / 1000, 3), "Zoë, \"Z\"") for i in range(1000)]
    out = write_rows([rows[:400], rows[400:]], ["customer_id", "churn_probability", "name"], tmp_path,
                     "g_2026-11-20.csv.gz", manifest=MANIFEST, gzip_output=True)
    raw = open(out.path, "rb").read()
    assert raw[:2] == b"\x1f\x8b"
    back = _read_csv(out.path)
    assert len(back) == 1001 and back[1] == ["C00000", "0.0", 'Zoë, "Z"'] and back[-1][0] == "C00999"
    manifest = json.loads(open(out.manifest_path).read())
    assert manifest["sha256"] == hashlib.sha256(raw).hexdigest() == out.sha256
    assert manifest["bytes"] == len(raw) and manifest["rows"] == 1000 and manifest["gzip"] is True
    assert manifest["file"] == "g_2026-11-20.csv.gz" and manifest["model_version"] == "2026-11-20-tpot"
    assert manifest["run_id"] == "2026-11-20"
    # deterministic: the same rows give the same bytes (mtime=0, no embedded file name)
    again = write_rows([rows], ["customer_id", "churn_probability", "name"], tmp_path / "again",
                       "g_2026-11-20.csv.gz", manifest=MANIFEST, gzip_output=True)
    assert again.sha256 == out.sha256


def test_rerun_replaces_the_file_and_leaves_no_temporaries(tmp_path):
    first = write_rows([[("C1", 0.9), ("C2", 0.8), ("C3", 0.7)]], ["customer_id", "p"], tmp_path,
                       "r_2026-11-20.csv", manifest=MANIFEST)
    second = write_rows([[("C9", 0.95)]], ["customer_id", "p"], tmp_path, "r_2026-11-20.csv", manifest=MANIFEST)
    assert first.path == second.path
    assert _read_csv(second.path) == [["customer_id", "p"], ["C9", "0.95"]]  # replaced, never appended
    assert json.loads(open(second.manifest_path).read())["rows"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r_2026-11-20.csv", "r_2026-11-20.csv.manifest.json"]


def test_failure_mid_write_keeps_the_previous_file_and_no_partial(tmp_path):
    good = write_rows([[("C1", 0.9)]], ["customer_id", "p"], tmp_path, "f_2026-11-20.csv", manifest=MANIFEST)
    before = open(good.path, "rb").read()

    def broken():
        yield [("C2", 0.8)]
        raise ConnectionError("database went away")

    with pytest.raises(ConnectionError):
        write_rows(broken(), ["customer_id", "p"], tmp_path, "f_2026-11-20.csv", manifest=MANIFEST)
    assert open(good.path, "rb").read() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f_2026-11-20.csv", "f_2026-11-20.csv.manifest.json"]


def test_write_export_from_a_frame_neutralizes_text_only(tmp_path):
    frame = pd.DataFrame({"customer_id": ["C1", "C2"], "delta": [-1.5, 2.0], "plan": ["=BAD()", "basic"]})
    out = write_export(frame, tmp_path, "w_2026-11-20.csv", run_id="2026-11-20", model_version="v1")
    assert _read_csv(out.path)[1:] == [["C1", "-1.5", "'=BAD()"], ["C2", "2.0", "basic"]]


def test_spec_file_name_without_gzip():
    spec = ExportSpec(name="x", bands=("high",), file_pattern="{name}-{run_date}.csv")
    assert spec.file_name("2026-01-02") == "x-2026-01-02.csv"


def test_a_rerun_never_leaves_a_manifest_beside_data_it_does_not_describe(tmp_path, monkeypatch):
    """Issue 26 item 17: at the moment the new data file replaces the old one, the old manifest is gone."""
    import churn.publish.files as files

    write_rows([[("C1", 0.9)]], ["customer_id", "p"], tmp_path, "m_2026-11-20.csv", manifest=MANIFEST)
    seen = []
    replace = files._fsync_replace

    def watching(src, dst):
        seen.append((Path(dst).name, sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))))
        replace(src, dst)

    monkeypatch.setattr(files, "_fsync_replace", watching)
    second = write_rows([[("C9", 0.95)]], ["customer_id", "p"], tmp_path, "m_2026-11-20.csv", manifest=MANIFEST)
    assert seen[0] == ("m_2026-11-20.csv", ["m_2026-11-20.csv"])  # old data, no manifest, while replaced
    manifest = json.loads(open(second.manifest_path).read())
    assert manifest["sha256"] == hashlib.sha256(open(second.path, "rb").read()).hexdigest()
