"""Integration: run metrics, prediction PSI and realized performance in a real Postgres."""

from __future__ import annotations

import json
from datetime import date

import numpy as np
import pandas as pd
import pytest

from churn.config import ChurnConfig
from churn.db import ensure_schema
from churn.monitoring import (build_run_metrics, evaluate_realized, previous_run, realized_retrain_trigger,
                              record_run)


def _write_scores(path, proba, version="v1", ids=None):
    ids = ids if ids is not None else [f"C{i:08d}" for i in range(len(proba))]
    pd.DataFrame({"customer_id": ids, "churn_probability": np.asarray(proba, dtype=np.float32),
                  "model_version": version}).to_parquet(path, index=False)
    return str(path)


def _register(conn, version, roc_auc):
    with conn.cursor() as cur:
        cur.execute(
            """INSERT INTO churn.model_registry (version, run_key, model_name, status, reason, metrics, params,
                   signature, artifact_path, artifact_sha256, data_fingerprint, code_version)
               VALUES (%s, '2026-10-01', 'tpot', 'champion', 'test', %s, '{}', '{}', '/x', 'sha', 'fp', 'test')""",
            (version, json.dumps({"roc_auc": roc_auc})),
        )
    conn.commit()


def test_run_metrics_record_psi_against_the_previous_non_dry_run(pg_conn, tmp_path):
    ensure_schema(pg_conn)
    rng = np.random.default_rng(1)
    summary = {"rows_ingested": {"train": 1000, "score": 800}, "rows_quarantined": {"train": 4, "score": 1},
               "scored": 799, "published_postgres": 799, "stage_seconds": {"ingested": 1.2, "scored": 0.5}}
    first = build_run_metrics(pg_conn, "2026-11-19", summary,
                              _write_scores(tmp_path / "a.parquet", rng.beta(2, 5, 800)), "v1", (0.3, 0.6), False)
    assert first.prediction_psi is None and first.rows_in == 1800 and first.rows_quarantined == 5
    record_run(pg_conn, first)
    shifted = build_run_metrics(pg_conn, "2026-11-20", summary,
                                _write_scores(tmp_path / "b.parquet", rng.beta(5, 2, 800)), "v1", (0.3, 0.6), True)
    assert shifted.previous_run_key == "2026-11-19" and shifted.prediction_psi > 1.0
    record_run(pg_conn, shifted)
    record_run(pg_conn, shifted)  # idempotent: a re-run replaces the row
    same = build_run_metrics(pg_conn, "2026-11-21", summary,
                             _write_scores(tmp_path / "c.parquet", rng.beta(2, 5, 800)), "v1", (0.3, 0.6), False)
    # the dry run of 2026-11-20 is not a baseline: the comparison goes back to 2026-11-19
    assert same.previous_run_key == "2026-11-19" and same.prediction_psi < 0.1
    with pg_conn.cursor() as cur:
        cur.execute("SELECT run_key, dry_run, rows_published, stage_seconds, score_summary->'count' "
                    "FROM churn.run_metrics ORDER BY run_key")
        rows = cur.fetchall()
    assert [r[0] for r in rows] == ["2026-11-19", "2026-11-20"]
    assert rows[1][1] is True and rows[0][2] == 799 and rows[0][3] == {"ingested": 1.2, "scored": 0.5}
    assert rows[0][4] == 800
    assert previous_run(pg_conn, "2026-11-19") is None


@pytest.fixture
def outcomes(pg_conn, tmp_path):
    """Scores from 2026-10-21 in a run folder, and churn events since then that follow the scores."""
    ensure_schema(pg_conn)
    cfg = ChurnConfig(state_dir=tmp_path, realized_lag_days=30, realized_min_customers=100,
                      max_realized_auc_drop=0.05)
    rng = np.random.default_rng(5)
    n = 1000
    proba = rng.uniform(0, 1, n)
    churned = rng.uniform(0, 1, n) < proba * 0.4  # informative scores: realized AUC well above 0.5
    ids = [f"C{i:08d}" for i in range(n)]
    (cfg.runs_dir / "2026-10-21").mkdir(parents=True)
    _write_scores(cfg.runs_dir / "2026-10-21" / "scores.parquet", proba, "2026-10-01-tpot", ids)
    with pg_conn.cursor() as cur:
        cur.execute("CREATE SCHEMA src; CREATE TABLE src.churn_events (customer_id text, churn_date date)")
        events = [(i, "2026-11-05") for i, c in zip(ids, churned) if c]
        events += [(ids[0], "2026-10-01")]  # churned before the scoring day: not an outcome of these scores
        cur.executemany("INSERT INTO src.churn_events VALUES (%s, %s)", events)
    pg_conn.commit()
    return cfg, ids, churned


def test_realized_auc_is_computed_stored_and_compared(pg_conn, outcomes):
    cfg, _, churned = outcomes
    _register(pg_conn, "2026-10-01-tpot", 0.95)  # test AUC much higher than what will be realized
    results = evaluate_realized(pg_conn, cfg, date(2026, 11, 20))
    assert len(results) == 1
    record = results[0]
    assert record["scored_run_key"] == "2026-10-21" and record["customers"] == 1000
    assert record["churned"] == int(churned.sum())  # the event before the scoring day does not count
    assert 0.6 < record["realized_roc_auc"] < 0.9 and record["expected_roc_auc"] == 0.95
    evaluate_realized(pg_conn, cfg, date(2026, 11, 20))  # idempotent
    with pg_conn.cursor() as cur:
        cur.execute("SELECT count(*), max(realized_roc_auc) FROM churn.realized_performance")
        count, stored = cur.fetchone()
    pg_conn.commit()
    assert count == 1 and stored == pytest.approx(record["realized_roc_auc"])
    retrain, reason = realized_retrain_trigger(pg_conn, cfg, "2026-10-01-tpot")
    assert retrain and "below its test ROC AUC 0.9500" in reason
    relaxed = cfg.replace(max_realized_auc_drop=0.5)
    assert realized_retrain_trigger(pg_conn, relaxed, "2026-10-01-tpot")[0] is False
    assert realized_retrain_trigger(pg_conn, cfg, "other-version") == (False, "no realized performance for "
                                                                              "other-version yet")


def test_realized_waits_for_enough_outcomes(pg_conn, outcomes):
    cfg, _, _ = outcomes
    assert evaluate_realized(pg_conn, cfg.replace(realized_min_customers=5000), date(2026, 11, 20)) == []
    assert evaluate_realized(pg_conn, cfg, date(2026, 11, 25)) == []  # nothing was scored on 2026-10-26


def test_realized_auc_on_a_sample_from_the_run_table_and_the_run_folder_agree(pg_conn, outcomes):
    """Counts are over everyone; the AUC comes from an id-hash sample (its size recorded), the same in both sources."""
    from sklearn.metrics import roc_auc_score

    from psycopg2.extras import execute_values

    from churn.publish.postgres import run_table

    cfg, ids, churned = outcomes
    _register(pg_conn, "2026-10-01-tpot", 0.95)
    sampled = cfg.replace(metrics_sample_rows=400)
    from_folder = evaluate_realized(pg_conn, sampled, date(2026, 11, 20))[0]
    full = pd.read_parquet(cfg.runs_dir / "2026-10-21" / "scores.parquet")
    table = run_table("2026-10-21")  # the published run table takes precedence over the run folder
    with pg_conn.cursor() as cur:
        cur.execute(f"CREATE TABLE churn.{table} (customer_id text, churn_probability real, model_version text)")
        execute_values(cur, f"INSERT INTO churn.{table} VALUES %s",
                       list(full.itertuples(index=False, name=None)))
    pg_conn.commit()
    from_table = evaluate_realized(pg_conn, sampled, date(2026, 11, 20))[0]
    exact = roc_auc_score(churned.astype(int), full["churn_probability"])
    for record in (from_folder, from_table):
        assert record["customers"] == 1000 and record["churned"] == int(churned.sum())  # counted over everyone
        assert 250 < record["auc_sample_rows"] < 550  # the AUC's own sample
        assert record["realized_roc_auc"] == pytest.approx(exact, abs=0.06)


def test_realized_is_not_judged_without_an_outcome_table(pg_conn, tmp_path):
    """A file source's night past the realized lag: scores exist, outcomes do not; the report must not fail
    (the seven-nights scheduler test found `relation "src.churn_events" does not exist` on night 3)."""
    ensure_schema(pg_conn)
    cfg = ChurnConfig(state_dir=tmp_path, realized_lag_days=2, source="file")
    (cfg.runs_dir / "2026-11-18").mkdir(parents=True)
    _write_scores(cfg.runs_dir / "2026-11-18" / "scores.parquet", np.array([0.2, 0.7]), "v1", ["A", "B"])
    assert evaluate_realized(pg_conn, cfg, date(2026, 11, 20)) == []
