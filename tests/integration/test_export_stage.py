"""Integration: the pipeline's ``export`` stage against real Postgres (and a real SFTP server).

A small published run is set up with the real publish code (``publish_scores``); customer
attributes include formula starts, commas, quotes and non-ASCII letters.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg2
import pytest

from churn.config import ChurnConfig, ConfigError
from churn.connections import Resources
from churn.data.generate import generate, load_source_tables
from churn.db import ensure_schema
from churn.stages.publish import export
from churn.publish.files import ExportRefused
from churn.publish.postgres import publish_scores
from tests.support.sftp_server import SftpTestServer, SshKeys
from tests.support.stage_refs import validated_ref

RUN_DATE = date(2026, 11, 20)
RUN_KEY = RUN_DATE.isoformat()
N = 600


@pytest.fixture(autouse=True)
def no_sftp_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_CHURN_SFTP", raising=False)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def published(fresh_pg_url, tmp_path):
    """src.customers (with hostile attribute values) and one published run of scores."""
    conn = psycopg2.connect(fresh_pg_url)
    load_source_tables(conn, generate(N, RUN_DATE, seed=5))
    with conn.cursor() as cur:
        cur.execute("SELECT customer_id FROM src.customers ORDER BY customer_id")
        ids = [r[0] for r in cur.fetchall()]
        hostile = [("=HYPERLINK(\"http://evil\",\"x\")", 'Zürich, "Nord"'), ("+1 555 0100", "Łódź"),
                   ("-cmd", "São Paulo, BR"), ("@SUM(A1)", "\tTabbed"), ("\r=cr", "東京")]
        for cid, (email, region) in zip(ids[::7], hostile * 100):
            cur.execute("UPDATE src.customers SET email = %s, region = %s WHERE customer_id = %s",
                        (email, region, cid))
    conn.commit()
    rng = np.random.default_rng(3)
    proba = rng.random(len(ids)).astype("float32")
    deciles = (pd.Series(proba).rank(method="first").to_numpy() * 10 // (len(ids) + 1)).astype("int16") + 1
    scores = pd.DataFrame({
        "customer_id": ids, "churn_probability": proba,
        "risk_band": np.where(proba >= 0.6, "high", np.where(proba >= 0.3, "medium", "low")),
        "risk_decile": deciles, "model_version": "2026-11-20-tpot", "run_id": RUN_KEY,
        "scored_at": pd.Timestamp(datetime(2026, 11, 20, 2, 14, 3, tzinfo=timezone.utc)),
    })
    path = tmp_path / "scores.parquet"
    scores.to_parquet(path, index=False)
    result = publish_scores(conn, path, RUN_KEY, "2026-11-20-tpot")
    conn.close()
    return {"url": fresh_pg_url, "scores": scores, "pg_published": dict(result.__dict__),
            "scored": {"path": str(path), "rows": len(scores), "model_version": "2026-11-20-tpot"},
            "run": {"run_key": RUN_KEY, "as_of": RUN_KEY, "run_dir": str(tmp_path), "airflow_run_id": "manual__t",
                    "params": {}}}


def _res(url: str) -> Resources:
    return Resources(pg=lambda: psycopg2.connect(url), redis=lambda: None)


def _cfg(tmp_path, **fields) -> ChurnConfig:
    return ChurnConfig.from_env({}).replace(state_dir=tmp_path / "state", **fields)


def _read(path: str) -> list[list[str]]:
    data = open(path, "rb").read()
    if path.endswith(".gz"):
        data = gzip.decompress(data)
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


def _stage(cfg, p):
    return export(cfg, _res(p["url"]), p["run"], p["scored"], p["pg_published"])


def test_default_export_stays_local_and_says_where(tmp_path, published):
    cfg = _cfg(tmp_path)
    out = _stage(cfg, published)
    assert out["delivery"] == "local" and out["delivered_to"] == str(cfg.exports_dir) and out["remote_paths"] == []
    assert out["path"] == str(cfg.exports_dir / f"churn_high_risk_{RUN_KEY}.csv")
    rows = _read(out["path"])
    assert rows[0] == ["customer_id", "churn_probability", "risk_band", "risk_decile", "model_version", "run_id",
                       "email", "plan"]
    high = published["scores"][published["scores"]["risk_band"] == "high"]
    assert out["rows"] == len(high) == len(rows) - 1 > 50
    assert {r[0] for r in rows[1:]} == set(high["customer_id"])
    probs = [float(r[1]) for r in rows[1:]]
    assert probs == sorted(probs, reverse=True)
    assert all(r[2] == "high" and r[5] == RUN_KEY for r in rows[1:])
    manifest = json.loads(open(out["manifest_path"]).read())
    assert manifest["sha256"] == hashlib.sha256(open(out["path"], "rb").read()).hexdigest()
    assert manifest["rows"] == out["rows"] and manifest["model_version"] == "2026-11-20-tpot"
    assert manifest["airflow_run_id"] == "manual__t" and manifest["run_id"] == RUN_KEY


def test_configured_segments_columns_and_gzip(tmp_path, published):
    exports = [
        {"name": "top_decile", "min_decile": 10, "gzip": True, "file": "journey_{name}_{run_date}.csv",
         "columns": ["customer_id", "churn_probability", "risk_decile", "run_date", "model_version", "email",
                     "region", "senior", "scored_at"]},
        {"name": "hot", "band": ["medium", "high"], "probability_above": 0.8, "columns": ["customer_id", "email"]},
    ]
    cfg = _cfg(tmp_path, exports=json.dumps(exports), export_chunk_rows=7)  # many small chunks
    out = _stage(cfg, published)
    top, hot = out["exports"]
    scores = published["scores"]
    assert top["path"].endswith(f"journey_top_decile_{RUN_KEY}.csv.gz")
    rows = _read(top["path"])
    assert {r[0] for r in rows[1:]} == set(scores.loc[scores["risk_decile"] == 10, "customer_id"])
    assert all(r[2] == "10" and r[3] == RUN_KEY and r[8] == "2026-11-20T02:14:03+00:00" for r in rows[1:])
    assert {r[7] for r in rows[1:]} <= {"true", "false"}
    expected_hot = scores[(scores["churn_probability"] > np.float32(0.8))]
    hot_rows = _read(hot["path"])
    assert hot_rows[0] == ["customer_id", "email"] and len(hot_rows) - 1 == len(expected_hot) == hot["rows"]
    # hostile attribute values: neutralized, and commas/quotes/non-ASCII survive the round trip
    conn = psycopg2.connect(published["url"])
    with conn.cursor() as cur:
        cur.execute("SELECT customer_id, email, region FROM src.customers")
        source = {r[0]: r[1:] for r in cur.fetchall()}
    conn.close()
    checked = 0
    for row in rows[1:]:
        email, region = source[row[0]]
        assert row[6] == (("'" + region) if region.startswith(("\t", "=", "+", "-", "@", "\r")) else region)
        assert row[5] == ("'" + email if email.startswith(("=", "+", "-", "@", "\r", "\t")) else email)
        checked += region in ('Zürich, "Nord"', "Łódź", "São Paulo, BR", "東京", "\tTabbed")
    assert checked >= 1
    for r in rows[1:] + hot_rows[1:]:
        assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in r)
    manifest = json.loads(open(top["manifest_path"]).read())
    assert manifest["gzip"] is True and manifest["sha256"] == hashlib.sha256(open(top["path"], "rb").read()).hexdigest()
    assert manifest["segment"] == {"band": None, "min_decile": 10, "probability_above": None}


def test_rerunning_the_date_replaces_the_files(tmp_path, published):
    cfg = _cfg(tmp_path)
    first = _stage(cfg, published)
    second = _stage(cfg, published)
    assert first["path"] == second["path"] and first["sha256"] == second["sha256"] and first["rows"] == second["rows"]
    assert len(_read(second["path"])) == second["rows"] + 1
    assert sorted(p.name for p in cfg.exports_dir.iterdir()) == [f"churn_high_risk_{RUN_KEY}.csv",
                                                                  f"churn_high_risk_{RUN_KEY}.csv.manifest.json"]


def test_failed_validation_means_no_export_and_old_files_untouched(tmp_path, published):
    cfg = _cfg(tmp_path)
    first = _stage(cfg, published)
    before = open(first["path"], "rb").read()
    conn = psycopg2.connect(published["url"])
    ensure_schema(conn)
    with conn.cursor() as cur:
        cur.execute("INSERT INTO churn.validation_results (run_key, dataset, success, rows_checked, "
                    "rows_quarantined, result) VALUES (%s, 'score', false, 10, 9, '{}')", (RUN_KEY,))
    conn.commit()
    conn.close()
    with pytest.raises(ExportRefused, match="validation failed"):
        _stage(cfg, published)
    assert open(first["path"], "rb").read() == before


@pytest.mark.parametrize("change, message", [
    ({"rows": 1}, "publish_postgres did not complete"),
    ({"table": "churn.scores_2026_11_19"}, "publish_postgres did not complete"),
    ({"skipped": True, "table": None, "reason": "boom"}, "published nothing"),
])
def test_a_failed_publish_reference_is_refused_and_nothing_is_written(tmp_path, published, change, message):
    cfg = _cfg(tmp_path)
    published["pg_published"].update(change)
    with pytest.raises(ExportRefused, match=message):
        _stage(cfg, published)
    assert not cfg.exports_dir.exists() or list(cfg.exports_dir.iterdir()) == []


def test_unknown_attribute_column_names_the_fix(tmp_path, published):
    cfg = _cfg(tmp_path, exports=json.dumps([{"name": "x", "band": "high", "columns": ["customer_id", "phone"]}]))
    with pytest.raises(ConfigError, match=r"\['phone'\].*src.customers"):
        _stage(cfg, published)


def test_stage_delivers_to_a_real_sftp_server_via_the_airflow_connection(tmp_path, published, monkeypatch):
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    host, user = SshKeys.generate(keys_dir, "host"), SshKeys.generate(keys_dir, "user")
    root = tmp_path / "sftp_root"
    root.mkdir()
    server = SftpTestServer(root, host.private_path, user.public_line).start()
    try:
        monkeypatch.setenv("AIRFLOW_CONN_CHURN_SFTP", server.connection_json(user, host.public_line))
        exports = [{"name": "high_risk", "band": "high"}, {"name": "top", "min_decile": 10, "gzip": True}]
        cfg = _cfg(tmp_path, exports=json.dumps(exports), export_remote_dir="outbound")
        out = _stage(cfg, published)
        out_again = _stage(cfg, published)  # re-run of the same date: same remote names, replaced
    finally:
        server.stop()
    assert out["delivery"] == "sftp" and out["delivered_to"] == f"sftp://journeys@127.0.0.1:{server.port}/~/outbound"
    names = [f"churn_high_risk_{RUN_KEY}.csv", f"churn_high_risk_{RUN_KEY}.csv.manifest.json",
             f"churn_top_{RUN_KEY}.csv.gz", f"churn_top_{RUN_KEY}.csv.gz.manifest.json"]
    assert out["remote_paths"] == out_again["remote_paths"] == [f"outbound/{n}" for n in names]
    assert sorted(p.name for p in (root / "outbound").iterdir()) == sorted(names)
    for written in out["exports"]:
        arrived = (root / "outbound" / written["path"].rsplit("/", 1)[1]).read_bytes()
        assert arrived == open(written["path"], "rb").read()
        assert hashlib.sha256(arrived).hexdigest() == written["sha256"]
    assert len(_read(str(root / "outbound" / names[0]))) == out["rows"] + 1


# --------------------------------------------------------------------------- file sources (no src.customers)


@pytest.fixture
def file_published(fresh_pg_url, tmp_path):
    """A published run of a file source: no src.customers; attributes live in the clean scoring snapshot."""
    from churn.data.spec import DatasetSpec

    rng = np.random.default_rng(11)
    n = 400
    ids = [f"{i:04d}-ABCDE" for i in range(n)]
    snapshot = pd.DataFrame({
        "customerID": ids,
        "MonthlyCharges": np.round(rng.uniform(18, 120, n), 2),
        "Balance": np.where(np.arange(n) % 5 == 0, -12.5, 3.0),  # negative numbers stay numbers
        "SeniorCitizen": (np.arange(n) % 3 == 0),
        "Contract": np.where(np.arange(n) % 2 == 0, "Month-to-month", "=cmd|' /C calc'!A0"),
    })
    snapshot.loc[7, "MonthlyCharges"] = np.nan
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    DatasetSpec("telco_like", "file", "customerID", "Churn", ["MonthlyCharges", "Balance"], ["SeniorCitizen"],
                ["Contract"], "telco_like").write(run_dir)
    clean = run_dir / "score_clean.parquet"
    snapshot.to_parquet(clean, index=False)
    proba = rng.random(n).astype("float32")
    scores = pd.DataFrame({
        "customer_id": ids, "churn_probability": proba,
        "risk_band": np.where(proba >= 0.6, "high", np.where(proba >= 0.3, "medium", "low")),
        "risk_decile": (pd.Series(proba).rank(method="first").to_numpy() * 10 // (n + 1)).astype("int16") + 1,
        "model_version": "2026-11-20-logistic_baseline", "run_id": RUN_KEY,
        "scored_at": pd.Timestamp(datetime(2026, 11, 20, 2, 14, 3, tzinfo=timezone.utc)),
    })
    path = run_dir / "scores.parquet"
    scores.to_parquet(path, index=False)
    conn = psycopg2.connect(fresh_pg_url)
    result = publish_scores(conn, path, RUN_KEY, "2026-11-20-logistic_baseline")
    conn.close()
    return {"url": fresh_pg_url, "scores": scores, "snapshot": snapshot, "pg_published": dict(result.__dict__),
            "scored": {"path": str(path), "rows": n, "model_version": "2026-11-20-logistic_baseline"},
            "validated": validated_ref(score_clean=clean),
            "run": {"run_key": RUN_KEY, "as_of": RUN_KEY, "run_dir": str(run_dir), "airflow_run_id": "manual__f",
                    "params": {}}}


def _file_stage(cfg, p):
    return export(cfg, _res(p["url"]), p["run"], p["scored"], p["pg_published"], p["validated"])


def test_file_source_default_export_has_score_columns_only(tmp_path, file_published):
    conn = psycopg2.connect(file_published["url"])
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('src.customers')")
        assert cur.fetchone()[0] is None  # the file source really has no customer table
    conn.close()
    out = _file_stage(_cfg(tmp_path), file_published)
    rows = _read(out["path"])
    assert rows[0] == ["customer_id", "churn_probability", "risk_band", "risk_decile", "model_version", "run_id"]
    scores = file_published["scores"]
    assert {r[0] for r in rows[1:]} == set(scores.loc[scores["risk_band"] == "high", "customer_id"])
    assert out["rows"] == len(rows) - 1 > 0


def test_file_source_export_takes_attributes_from_the_scored_file(tmp_path, file_published):
    exports = [{"name": "journey", "min_decile": 1,
                "columns": ["customer_id", "churn_probability", "Contract", "MonthlyCharges", "Balance",
                            "SeniorCitizen"]}]
    cfg = _cfg(tmp_path, exports=json.dumps(exports), export_chunk_rows=37)
    out = _file_stage(cfg, file_published)
    rows = _read(out["path"])
    assert rows[0] == exports[0]["columns"] and len(rows) - 1 == 400 == out["rows"]
    source = file_published["snapshot"].set_index("customerID")
    for row in rows[1:]:
        expected = source.loc[row[0]]
        contract = expected["Contract"]
        assert row[2] == ("'" + contract if contract.startswith("=") else contract)
        assert row[3] == ("" if pd.isna(expected["MonthlyCharges"]) else str(float(expected["MonthlyCharges"])))
        assert float(row[4]) == expected["Balance"]  # -12.5 as a number, not a neutralized text
        assert row[5] == ("true" if expected["SeniorCitizen"] else "false")
    again = _file_stage(cfg, file_published)  # the temp table is rebuilt per run: same bytes
    assert again["sha256"] == out["sha256"]


def test_file_source_unknown_attribute_lists_the_file_columns(tmp_path, file_published):
    cfg = _cfg(tmp_path, exports=json.dumps([{"name": "x", "band": "high", "columns": ["customer_id", "email"]}]))
    with pytest.raises(ConfigError, match=r"\['email'\].*columns of the scored file.*Contract"):
        _file_stage(cfg, file_published)
    assert not cfg.exports_dir.exists() or list(cfg.exports_dir.iterdir()) == []


def test_postgres_source_without_customer_table_says_what_to_do(tmp_path, file_published):
    (Path(file_published["run"]["run_dir"]) / "dataset_spec.json").unlink()  # falls back to the synthetic source
    cfg = _cfg(tmp_path, exports=json.dumps([{"name": "x", "band": "high", "columns": ["customer_id", "email"]}]))
    with pytest.raises(ConfigError, match=r"src.customers does not exist.*score columns only"):
        _file_stage(cfg, file_published)
