"""Integration (Postgres): validation writes the scoring rows in the plan's hash partitions, each mapped
scoring task decodes only its own share, and the champion's ONNX export scores when it passed its parity
check, agreeing with scikit-learn customer by customer (issue 23)."""

from __future__ import annotations

import numpy as np
import psycopg2
import pyarrow.parquet as pq

from churn.config import ChurnConfig
from churn.connections import Resources
from churn.data.partitions import row_groups_of
from churn.model import registry
from churn.stages import data, model, scoring
from churn.stages.common import start_run
from churn.stages.results import PartitionResult, ScoredResult, ValidationResult, parse
from tests.support.field_data import bank_churn, write_csv
from tests.support.nightly import RUN_DATE


def _scored(cfg: ChurnConfig, res: Resources, run: dict, validated: dict, registered: dict):
    plan = scoring.plan_scoring(cfg, res, run, validated, registered)
    parts = [scoring.score_partition(cfg, res, run, p) for p in plan]
    merged = scoring.merge_scores(cfg, res, run, parts)
    return [parse(PartitionResult, p) for p in parts], parse(ScoredResult, merged)


def test_partitions_read_their_share_and_the_onnx_export_scores_like_scikit_learn(fresh_pg_url, redis_url,
                                                                                 tmp_path):
    path = write_csv(bank_churn(4_000, dirty=False), tmp_path / "bank.csv")
    cfg = ChurnConfig.from_env({"CHURN_SOURCE": "file", "CHURN_FILE_PATH": str(path),
                                "CHURN_ID_COLUMN": "CustomerId", "CHURN_LABEL_COLUMN": "Exited",
                                "CHURN_STATE_DIR": str(tmp_path / "state"), "CHURN_TRAIN_TPOT": "false",
                                "CHURN_EXPORT_PMML": "false", "CHURN_SCORE_PARTITIONS": "3",
                                "CHURN_SCORE_CHUNK_ROWS": "500", "CHURN_INGEST_CHUNK_ROWS": "1000"})
    res = Resources.from_urls(fresh_pg_url, redis_url)
    run = start_run(cfg, res, RUN_DATE, "test-partitioned")
    validated = data.profile_and_validate(cfg, res, run, data.ingest(cfg, res, run))
    splits = data.split(cfg, res, run, validated)
    trained = model.train(cfg, res, run, splits)
    registered = model.register(cfg, res, run, splits, model.evaluate_and_gate(cfg, res, run, splits, trained))

    clean = parse(ValidationResult, validated).score.clean_path
    parquet = pq.ParquetFile(clean)
    assert all(row_groups_of(parquet, p, 3) for p in range(3))  # written in the plan's partitions ...
    assert parquet.metadata.num_row_groups == 12  # ... chunk by chunk (4 validation chunks x 3 partitions)
    parts, scored = _scored(cfg, res, run, validated, registered)
    assert [p.rows_read for p in parts] == [p.rows for p in parts]  # each decoded only its own rows
    assert sum(p.rows for p in parts) == scored.rows == parquet.metadata.num_rows

    conn = psycopg2.connect(fresh_pg_url)
    champion = registry.champion(conn)
    # whichever default won, HistGradientBoosting has no ONNX export and is scored by scikit-learn
    assert scored.runtimes == (["onnxruntime"] if registry.onnx_export(conn, champion.version) else ["sklearn"])
    # the logistic baseline's export converts and passed parity at registration: make it champion
    logistic = next(r["version"] for r in registered["registered"] if "logistic" in r["version"])
    registry.promote(conn, logistic, "test: a champion with an ONNX export", force=True)
    assert registry.onnx_export(conn, logistic) is not None
    conn.close()
    parts, scored = _scored(cfg, res, {**run, "run_dir": str(tmp_path / "onnx")}, validated, registered)
    assert scored.runtimes == ["onnxruntime"] and scored.model_version == logistic
    assert all("parity" in p.runtime_reason for p in parts)
    fast = pq.read_table(scored.path).to_pandas().set_index("customer_id").sort_index()

    sk_cfg = cfg.replace(score_runtime="sklearn")
    _, reference = _scored(sk_cfg, res, {**run, "run_dir": str(tmp_path / "sk")}, validated, registered)
    assert reference.runtimes == ["sklearn"]
    slow = pq.read_table(reference.path).to_pandas().set_index("customer_id").sort_index()
    assert list(fast.index) == list(slow.index)
    assert np.max(np.abs(fast["churn_probability"].to_numpy() - slow["churn_probability"].to_numpy())) < 1e-5
