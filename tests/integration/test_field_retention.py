"""Bounded in space (issue 26 item 16): rows and files older than CHURN_RETENTION_DAYS are purged, nothing else."""

from __future__ import annotations

import os
from datetime import date, datetime, timedelta, timezone

from churn.config import ChurnConfig
from churn.data.outbox import ensure_outbox
from churn.db import ensure_schema
from churn.retention import purge

AS_OF = date(2026, 11, 20)


def test_purge_removes_old_rows_and_files_and_keeps_the_served_batch(tmp_path, pg_conn):
    cfg = ChurnConfig.from_env({"CHURN_STATE_DIR": str(tmp_path / "state"), "CHURN_RETENTION_DAYS": "10",
                                "CHURN_REALIZED_LAG_DAYS": "5", "CHURN_RESCORE_DELTA_DIR": str(tmp_path / "delta")})
    ensure_schema(pg_conn)
    ensure_outbox(pg_conn)
    old, new, served = (AS_OF - timedelta(days=40)).isoformat(), (AS_OF - timedelta(days=2)).isoformat(), \
        (AS_OF - timedelta(days=30)).isoformat()
    long_ago = datetime(2026, 9, 1, tzinfo=timezone.utc)
    with pg_conn.cursor() as cur:
        for key in (old, new, served):
            cur.execute("INSERT INTO churn.quarantine (run_key, dataset, row_number, customer_id, reasons, record) "
                        "VALUES (%s, 'train', 1, 'c', ARRAY['x'], '{}')", (key,))
            cur.execute("INSERT INTO churn.validation_results (run_key, dataset, success, rows_checked, "
                        "rows_quarantined, result) VALUES (%s, 'train', true, 1, 0, '{}')", (key,))
            cur.execute("INSERT INTO churn.pipeline_runs (run_key) VALUES (%s)", (key,))
        cur.execute("INSERT INTO churn.quarantine (run_key, dataset, row_number, customer_id, reasons, record) "
                    "VALUES ('manual-check', 'train', 1, 'c', ARRAY['x'], '{}')")  # not a dated key: kept
        cur.execute("INSERT INTO churn.score_runs (run_key, table_name, model_version, rows, is_current) "
                    "VALUES (%s, 'scores_x', 'v1', 1, true)", (served,))
        cur.execute("INSERT INTO churn.rescore_outbox (customer_id, kind, source_table, done_at) VALUES "
                    "('a', 'manual', 'm', %s), ('b', 'manual', 'm', now()), ('c', 'manual', 'm', NULL) "
                    "RETURNING event_id", (long_ago,))
        first = cur.fetchone()[0]
        cur.execute("INSERT INTO churn.rescore_delta_rows VALUES (%s, '{}')", (first,))
    pg_conn.commit()
    runs = cfg.runs_dir
    for key in (old, new, served):
        (runs / key).mkdir(parents=True)
        (runs / key / "scores.parquet").write_bytes(b"x")
    cfg.exports_dir.mkdir(parents=True)
    (cfg.exports_dir / f"churn_high_risk_{old}.csv").write_text("x")
    (cfg.exports_dir / f"churn_high_risk_{new}.csv").write_text("x")
    done = tmp_path / "delta" / "done"
    done.mkdir(parents=True)
    stale = done / "delta_a.csv"
    stale.write_text("x")
    os.utime(stale, (long_ago.timestamp(), long_ago.timestamp()))
    (done / "delta_b.csv").write_text("x")

    result = purge(pg_conn, cfg, AS_OF)

    assert result.keep_days == 10 and result.kept_served == served
    with pg_conn.cursor() as cur:
        cur.execute("SELECT run_key FROM churn.quarantine ORDER BY run_key")
        assert [r[0] for r in cur.fetchall()] == [served, new, "manual-check"]
        cur.execute("SELECT run_key FROM churn.validation_results ORDER BY run_key")
        assert [r[0] for r in cur.fetchall()] == [served, new]
        cur.execute("SELECT customer_id FROM churn.rescore_outbox ORDER BY customer_id")
        assert [r[0] for r in cur.fetchall()] == ["b", "c"]  # done long ago: gone; pending: kept
        cur.execute("SELECT count(*) FROM churn.rescore_delta_rows")
        assert cur.fetchone()[0] == 0
    assert sorted(p.name for p in runs.iterdir()) == sorted([served, new])
    assert [p.name for p in cfg.exports_dir.iterdir()] == [f"churn_high_risk_{new}.csv"]
    assert [p.name for p in done.iterdir()] == ["delta_b.csv"]
    again = purge(pg_conn, cfg, AS_OF)  # idempotent: a re-run of the date removes nothing more
    assert sum(again.rows.values()) == 0 and again.files == 0 and sum(again.folders.values()) == 0
