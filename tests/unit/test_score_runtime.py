"""Unit: scoring that divides (partitioned snapshots read only their share), the per-process model cache,
and ONNX Runtime inference behind a live parity check with the scikit-learn fallback (issue 23)."""

from __future__ import annotations

import zlib
from datetime import datetime, timezone

import joblib
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from churn.data.partitions import PartitionedWriter, partition_of, row_groups_of
from churn.model import runtime, score as scoring
from churn.model.export import to_onnx_bytes
from churn.model.features import build_preprocessor, to_model_input
from churn.model.registry import ArtifactIntegrityError, file_sha256
from tests.support.model_frames import frame as make_frame, signature as make_signature

SCORED_AT = datetime(2026, 11, 20, 2, 14, 3, tzinfo=timezone.utc)


def _fit(train: pd.DataFrame):
    signature = make_signature(train)
    model = Pipeline([("prep", build_preprocessor(signature)), ("model", LogisticRegression(max_iter=500))])
    model.fit(to_model_input(train, signature), train["churned"])
    return model, signature


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A logistic pipeline, its joblib artifact and ONNX export, and a 6,000-row snapshot written both ways."""
    folder = tmp_path_factory.mktemp("runtime")
    train = make_frame(3000, seed=1)
    model, signature = _fit(train)
    artifact = folder / "model.joblib"
    joblib.dump({"model": model, "signature": signature.as_dict()}, artifact)
    onnx = folder / "model.onnx"
    onnx.write_bytes(to_onnx_bytes(model, signature))
    snapshot = make_frame(6000, seed=2).drop(columns="churned")
    plain = folder / "plain.parquet"
    snapshot.to_parquet(plain, index=False)
    partitioned = folder / "partitioned.parquet"
    table = pa.Table.from_pandas(snapshot, preserve_index=False)
    writer = PartitionedWriter(pq.ParquetWriter(partitioned, table.schema), "customer_id", 4)
    for start in range(0, table.num_rows, 1000):  # six chunks, as validation writes them
        writer.write(table.slice(start, 1000))
    writer.close()
    return {"model": model, "signature": signature, "artifact": artifact, "onnx": onnx, "snapshot": snapshot,
            "plain": plain, "partitioned": partitioned, "folder": folder}


def test_partition_hash_is_crc32_of_the_utf8_id_as_documented():
    ids = ["C000001", "Kundé-42", "7", ""]
    expected = [zlib.crc32(i.encode()) % 4 for i in ids]
    assert partition_of(pa.array(ids), 4).tolist() == expected


def test_a_partitioned_file_holds_the_same_rows_and_each_row_group_one_partition(fitted):
    plain = pq.read_table(fitted["plain"]).to_pandas().set_index("customer_id").sort_index()
    parquet = pq.ParquetFile(fitted["partitioned"])
    both = parquet.read().to_pandas().set_index("customer_id").sort_index()
    pd.testing.assert_frame_equal(both, plain)  # same rows, customer by customer
    assert parquet.metadata.num_row_groups == 24  # 6 chunks x 4 partitions
    seen = set()
    for part in range(4):
        groups = row_groups_of(parquet, part, 4)
        seen |= set(groups)
        for group in groups:
            ids = parquet.read_row_group(group, columns=["customer_id"]).column(0)
            assert set(partition_of(ids, 4).tolist()) == {part}
    assert seen == set(range(24))
    assert row_groups_of(parquet, 0, 2) is None  # another plan: the reader falls back to filtering by hash
    assert row_groups_of(pq.ParquetFile(fitted["plain"]), 0, 4) is None


def test_a_partition_reads_only_its_share_and_scores_like_the_unpartitioned_file(fitted, tmp_path):
    model, signature = fitted["model"], fitted["signature"]
    total_read = 0
    merged_inputs = []
    for part in range(4):
        own = scoring.score_partition(model, signature, fitted["partitioned"], tmp_path / "own", partition=part,
                                      partitions=4, chunk_rows=700)
        filtered = scoring.score_partition(model, signature, fitted["plain"], tmp_path / "filtered",
                                           partition=part, partitions=4, chunk_rows=700)
        assert own.rows_read == own.rows == filtered.rows  # decoded only its own rows ...
        assert filtered.rows_read == 6000  # ... where the plain file makes every partition decode everything
        total_read += own.rows_read
        a = pq.read_table(own.path).to_pandas().set_index("customer_id").sort_index()
        b = pq.read_table(filtered.path).to_pandas().set_index("customer_id").sort_index()
        pd.testing.assert_frame_equal(a, b)
        merged_inputs.append(own)
    assert total_read == 6000
    merged = scoring.merge_partitions(merged_inputs, tmp_path / "scores.parquet", model_version="v1",
                                      run_id="2026-11-20", scored_at=SCORED_AT, band_cuts=(0.3, 0.6))
    whole = scoring.score_snapshot(model, signature, fitted["plain"], tmp_path / "whole.parquet", model_version="v1",
                                   run_id="2026-11-20", scored_at=SCORED_AT, band_cuts=(0.3, 0.6))
    got = pq.read_table(merged.path).to_pandas().set_index("customer_id").sort_index()
    want = pq.read_table(whole.path).to_pandas().set_index("customer_id").sort_index()
    assert np.array_equal(got["risk_decile"].to_numpy(), want["risk_decile"].to_numpy())  # deciles stay global


def test_the_model_is_deserialized_once_per_process_and_changed_bytes_are_never_served(fitted, tmp_path,
                                                                                      monkeypatch):
    monkeypatch.setattr(runtime, "_cache", {})  # whatever other tests loaded, this one starts cold
    artifact = tmp_path / "model.joblib"
    artifact.write_bytes(fitted["artifact"].read_bytes())
    sha = file_sha256(artifact)
    before = runtime.loads().get("model", 0)
    first, _ = runtime.load_model(artifact, sha)
    second, _ = runtime.load_model(artifact, sha)
    assert first is second and runtime.loads().get("model", 0) == before + 1
    # the file changes after it was cached: the cache is keyed by the bytes read now, so it is refused
    artifact.write_bytes(artifact.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ArtifactIntegrityError, match="does not match its recorded hash"):
        runtime.load_model(artifact, sha)
    # and a new artifact with the same path but other (registered) bytes is loaded anew, not served stale
    other, other_sig = _fit(make_frame(2000, seed=9))
    joblib.dump({"model": other, "signature": other_sig.as_dict()}, artifact)
    third, _ = runtime.load_model(artifact, file_sha256(artifact))
    assert third is not first and runtime.loads().get("model", 0) == before + 2


def test_onnx_runtime_scores_within_tolerance_of_scikit_learn(fitted, tmp_path):
    scorer, signature = runtime.scorer_for(str(fitted["artifact"]), file_sha256(fitted["artifact"]),
                                           onnx_path=str(fitted["onnx"]), onnx_sha256=file_sha256(fitted["onnx"]))
    part = scoring.score_partition(scorer, signature, fitted["partitioned"], tmp_path, partition=1, partitions=4,
                                   chunk_rows=300)
    assert part.runtime == "onnxruntime" and "parity" in part.runtime_reason  # every batch spot-checked too
    assert scorer.parity_max_abs_diff is not None and scorer.parity_max_abs_diff <= 1e-5
    scores = pq.read_table(part.path).to_pandas().set_index("customer_id")
    rows = fitted["snapshot"].set_index("customer_id").loc[scores.index].reset_index()
    expected = fitted["model"].predict_proba(to_model_input(rows, signature))[:, 1]
    assert np.max(np.abs(scores["churn_probability"].to_numpy() - expected)) < 1e-6


def test_a_failed_live_parity_check_falls_back_to_scikit_learn(fitted, tmp_path):
    # an export of another model stands for a converter that encodes live data differently
    other, other_sig = _fit(make_frame(3000, seed=5).assign(churned=lambda f: 1 - f["churned"]))
    wrong = tmp_path / "model.onnx"
    wrong.write_bytes(to_onnx_bytes(other, other_sig))
    scorer, signature = runtime.scorer_for(str(fitted["artifact"]), file_sha256(fitted["artifact"]),
                                           onnx_path=str(wrong), onnx_sha256=file_sha256(wrong))
    part = scoring.score_partition(scorer, signature, fitted["partitioned"], tmp_path / "out", partition=0,
                                   partitions=4)
    assert part.runtime == "sklearn" and "differ" in part.runtime_reason and scorer.parity_max_abs_diff > 1e-5
    scores = pq.read_table(part.path).to_pandas().set_index("customer_id")
    rows = fitted["snapshot"].set_index("customer_id").loc[scores.index].reset_index()
    expected = fitted["model"].predict_proba(to_model_input(rows, signature))[:, 1]
    assert np.max(np.abs(scores["churn_probability"].to_numpy() - expected)) < 1e-6


def test_a_tampered_onnx_export_is_refused_and_scikit_learn_scores(fitted, tmp_path, caplog):
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(fitted["onnx"].read_bytes())
    sha = file_sha256(onnx)
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    scorer, _ = runtime.scorer_for(str(fitted["artifact"]), file_sha256(fitted["artifact"]), onnx_path=str(onnx),
                                   onnx_sha256=sha)
    assert scorer.runtime == "sklearn"
    assert any("ONNX export refused" in r.getMessage() for r in caplog.records)


def test_runtime_sklearn_never_uses_the_export_and_unknown_runtimes_are_refused(fitted):
    from churn.config import ConfigError

    scorer, _ = runtime.scorer_for(str(fitted["artifact"]), file_sha256(fitted["artifact"]),
                                   onnx_path=str(fitted["onnx"]), onnx_sha256=file_sha256(fitted["onnx"]),
                                   runtime="sklearn")
    assert scorer.runtime == "sklearn"
    with pytest.raises(ConfigError, match="CHURN_SCORE_RUNTIME"):
        runtime.scorer_for(str(fitted["artifact"]), file_sha256(fitted["artifact"]), runtime="gpu")
