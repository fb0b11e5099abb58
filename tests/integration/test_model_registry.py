"""Integration: registry packaging (artifact, reference sample, ONNX), integrity checks and rollback.

Real Postgres (tests/support/servers.py), data from the synthetic generator through the real ingest and
split stages (``model_data`` in tests/integration/conftest.py), real fitted models.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg2
import pytest
from sklearn.pipeline import FunctionTransformer, Pipeline

from churn.model import registry
from churn.model.export import ONNX_FILE, onnx_probabilities
from churn.model.pmml import PMML_FILE, pmml_probabilities
from churn.model.features import to_model_input
from tests.support import REPO_ROOT

AS_OF = date(2026, 11, 20)


def _package(data, models_dir: Path, version: str, model=None, pmml: bool = False) -> registry.Package:
    # PMML (a Java conversion and evaluation, ~5 s) only where a test is about it
    return registry.package(model or data["model"], data["signature"], models_dir, version, train_rows=data["train"],
                            test_rows=data["test"], reference_rows=1000, pmml=pmml, random_state=0)


def _register(conn, data, version: str, pkg: registry.Package, status: str = "challenger") -> None:
    registry.register(conn, version=version, run_key="2026-11-20", model_name="logistic_baseline", status=status,
                      reason="test", metrics={"roc_auc": 0.7}, params={"C": 1.0}, signature=data["signature"],
                      artifact_path=pkg.artifact_path, artifact_sha256=pkg.artifact_sha256,
                      data_fingerprint=data["splits"]["data_fingerprint"], formats=pkg.formats)


def test_package_writes_verified_artifact_reference_sample_onnx_and_pmml_with_parity(model_data, tmp_path):
    pkg = _package(model_data, tmp_path, "v1", pmml=True)
    folder = tmp_path / "v1"
    assert Path(pkg.artifact_path) == folder / "model.joblib"
    assert pkg.artifact_sha256 == registry.file_sha256(pkg.artifact_path)
    model, signature = registry.load_verified(pkg.artifact_path, pkg.artifact_sha256)
    assert signature == model_data["signature"]

    # reference.parquet: <= the configured rows, id + every feature column, rows drawn from the training split
    reference = pd.read_parquet(folder / "reference.parquet")
    assert pkg.reference_path == str(folder / "reference.parquet") and pkg.reference_rows == len(reference) == 1000
    assert list(reference.columns) == ["customer_id", *signature.feature_columns]
    assert set(reference["customer_id"]) <= set(model_data["train"]["customer_id"])
    assert reference["customer_id"].is_unique

    # ONNX exists, is listed, and reproduces scikit-learn's probabilities on the test split (checked again here)
    assert pkg.formats == ["joblib", "onnx", "pmml"] and pkg.onnx["exported"] and pkg.pmml["exported"]
    test = model_data["test"]
    onnx_p = onnx_probabilities(folder / ONNX_FILE, test, signature)
    sk_p = model.predict_proba(to_model_input(test, signature))[:, 1]
    assert len(test) > 200 and np.max(np.abs(onnx_p - sk_p)) < 1e-5
    assert pkg.onnx["parity_max_abs_diff"] < 1e-5 and pkg.onnx["parity_rows"] == len(test)
    assert pkg.onnx["sha256"] == registry.file_sha256(folder / ONNX_FILE)

    # PMML too: the JPMML evaluator, run here again on the test split, reproduces scikit-learn's probabilities
    pmml_p = pmml_probabilities(folder / PMML_FILE, test, signature)
    assert np.max(np.abs(pmml_p - sk_p)) < 1e-9
    assert pkg.pmml["parity_rows"] == len(test) and pkg.pmml["parity_max_abs_diff"] < 1e-9
    assert pkg.pmml["sha256"] == registry.file_sha256(folder / PMML_FILE)
    assert not list(folder.glob("*.tmp")) and not list(tmp_path.glob(".v1.staging-*"))


def test_package_without_pmml_says_it_is_off(model_data, tmp_path):
    pkg = _package(model_data, tmp_path, "v1b", pmml=False)
    assert pkg.formats == ["joblib", "onnx"] and not (tmp_path / "v1b" / PMML_FILE).exists()
    assert pkg.pmml == {"exported": False, "error": "PMML export is off (CHURN_EXPORT_PMML=false)"}


def test_unconvertible_pipeline_is_registered_as_joblib_only(model_data, tmp_path):
    # A Python function step has no ONNX converter: the registry must not claim an ONNX format.
    fitted = model_data["model"]
    odd = Pipeline([("prep", fitted.named_steps["prep"]), ("log1p", FunctionTransformer(np.tanh)),
                    ("model", fitted.named_steps["model"])])
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / ONNX_FILE).write_bytes(b"stale export from an earlier registration")
    pkg = _package(model_data, tmp_path, "v2", model=odd)
    assert pkg.formats == ["joblib"] and not pkg.onnx["exported"] and pkg.onnx["error"]
    assert not (tmp_path / "v2" / ONNX_FILE).exists()


class _Booby:
    """Unpickling this object would create a marker file: proves an artifact was (not) unpickled."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_tampered_or_truncated_artifact_is_refused_before_unpickling(model_data, tmp_path):
    pkg = _package(model_data, tmp_path, "v3")
    path = Path(pkg.artifact_path)
    original = path.read_bytes()

    path.write_bytes(original[: len(original) // 2])  # truncated copy
    with pytest.raises(registry.ArtifactIntegrityError, match="changed or truncated"):
        registry.load_verified(path, pkg.artifact_sha256)

    flipped = bytearray(original)
    flipped[len(flipped) // 3] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(registry.ArtifactIntegrityError, match="refused"):
        registry.load_verified(path, pkg.artifact_sha256)

    marker = tmp_path / "unpickled.marker"
    path.write_bytes(pickle.dumps(_Booby(str(marker))))  # a swapped, malicious pickle
    with pytest.raises(registry.ArtifactIntegrityError):
        registry.load_verified(path, pkg.artifact_sha256)
    assert not marker.exists(), "the tampered artifact was unpickled"

    path.unlink()
    with pytest.raises(registry.ArtifactIntegrityError, match="missing"):
        registry.load_verified(path, pkg.artifact_sha256)

    path.write_bytes(original)  # restored byte for byte: accepted again
    registry.load_verified(path, pkg.artifact_sha256)


def _cli(args: list[str], url: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CHURN_POSTGRES_URL": url, "PYTHONPATH": str(REPO_ROOT / "include")}
    return subprocess.run([sys.executable, "-m", "churn.model.registry", *args], env=env, capture_output=True,
                          text=True, timeout=120, cwd=REPO_ROOT)


def _champion(url: str) -> str | None:
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute("SELECT version FROM churn.model_champion")
        row = cur.fetchone()
    conn.close()
    return row[0] if row else None


def test_rollback_cli_moves_the_champion_pointer(model_data, fresh_pg_url, tmp_path):
    conn = psycopg2.connect(fresh_pg_url)
    for version in ("2026-11-19-logistic_baseline", "2026-11-20-logistic_baseline"):
        _register(conn, model_data, version, _package(model_data, tmp_path, version))
        registry.promote(conn, version, "passed the gate")
    assert _champion(fresh_pg_url) == "2026-11-20-logistic_baseline"

    done = _cli(["rollback", "2026-11-19-logistic_baseline"], fresh_pg_url)
    assert done.returncode == 0, done.stderr
    assert "champion is now 2026-11-19-logistic_baseline (was 2026-11-20-logistic_baseline)" in done.stdout
    assert _champion(fresh_pg_url) == "2026-11-19-logistic_baseline"
    assert registry.champion(conn).version == "2026-11-19-logistic_baseline"
    with conn.cursor() as cur:
        cur.execute("SELECT version, status FROM churn.model_registry ORDER BY version")
        assert cur.fetchall() == [("2026-11-19-logistic_baseline", "champion"),
                                  ("2026-11-20-logistic_baseline", "retired")]
        cur.execute("SELECT reason FROM churn.model_champion")
        assert cur.fetchone()[0].startswith("manual rollback to 2026-11-19-logistic_baseline")
    conn.commit()

    listing = _cli(["list"], fresh_pg_url)
    assert listing.returncode == 0 and "2026-11-20-logistic_baseline\tretired" in listing.stdout
    assert "joblib,onnx" in listing.stdout

    unknown = _cli(["rollback", "1999-01-01-nothing"], fresh_pg_url)
    assert unknown.returncode == 2 and "not in churn.model_registry" in unknown.stderr

    # a version whose artifact was tampered with is never made champion
    newer = registry.get(conn, "2026-11-20-logistic_baseline")
    Path(newer.artifact_path).write_bytes(b"garbage")
    refused = _cli(["rollback", "2026-11-20-logistic_baseline"], fresh_pg_url)
    assert refused.returncode == 2 and "refused" in refused.stderr
    assert _champion(fresh_pg_url) == "2026-11-19-logistic_baseline"
    conn.close()


def test_registry_row_records_fingerprint_params_code_version_and_formats(model_data, fresh_pg_url, tmp_path):
    conn = psycopg2.connect(fresh_pg_url)
    pkg = _package(model_data, tmp_path, "v5")
    _register(conn, model_data, "v5", pkg)
    _register(conn, model_data, "v5", pkg)  # idempotent re-registration
    registry.promote(conn, "v5", "passed the gate")
    _register(conn, model_data, "v5", pkg, status="refused")  # a re-run cannot contradict the champion pointer
    assert registry.get(conn, "v5").status == "champion" and registry.get(conn, "v5").reason == "passed the gate"
    with conn.cursor() as cur:
        cur.execute("SELECT count(*), max(data_fingerprint), max(code_version), max(artifact_sha256), "
                    "max(array_to_string(formats, ',')), max(params->>'C') FROM churn.model_registry")
        count, fingerprint, code, sha, formats, c = cur.fetchone()
    conn.close()
    assert count == 1 and len(fingerprint) == 64 and code and code != "unknown"
    assert sha == registry.file_sha256(pkg.artifact_path) and formats == "joblib,onnx" and c == "1.0"


def test_a_registered_version_is_immutable(model_data, fresh_pg_url, tmp_path):
    conn = psycopg2.connect(fresh_pg_url)
    pkg = _package(model_data, tmp_path, "v7")
    assert registry.register(conn, version="v7", run_key="2026-11-20", model_name="logistic_baseline",
                             status="challenger", reason="test", metrics={"roc_auc": 0.7}, params={},
                             signature=model_data["signature"], artifact_path=pkg.artifact_path,
                             artifact_sha256=pkg.artifact_sha256, data_fingerprint="f", formats=pkg.formats)
    before = registry.get(conn, "v7")
    with pytest.raises(registry.VersionConflict, match="immutable"):
        registry.register(conn, version="v7", run_key="2026-11-20", model_name="logistic_baseline",
                          status="challenger", reason="other", metrics={"roc_auc": 0.9}, params={},
                          signature=model_data["signature"], artifact_path=pkg.artifact_path,
                          artifact_sha256="0" * 64, data_fingerprint="g", formats=pkg.formats)
    assert registry.get(conn, "v7") == before  # sha, metrics and reason untouched
    conn.close()


def test_package_appears_whole_and_replaces_only_an_unregistered_leftover(model_data, tmp_path):
    leftover = tmp_path / "v8"
    leftover.mkdir()
    (leftover / "model.joblib").write_bytes(b"half-written by a crashed attempt")
    pkg = _package(model_data, tmp_path, "v8")
    assert registry.file_sha256(pkg.artifact_path) == pkg.artifact_sha256
    assert Path(pkg.artifact_path).parent == leftover and Path(pkg.reference_path).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v8"]  # no staging folder left behind
