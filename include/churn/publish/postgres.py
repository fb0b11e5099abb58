"""Atomic, idempotent publish of a run's scores to Postgres.

Scores are bulk-loaded with COPY into a table private to the run
(``churn.scores_<run>``), indexed, and only then exposed: one short transaction
repoints the ``churn.scores_current`` view (what consumers read) and rebuilds
``churn.scores_history`` over the retained runs. A reader sees the old complete
batch or the new complete batch, never a mix. Re-publishing a run replaces its
table in the same way, so there are never duplicates.
"""

from __future__ import annotations

import io
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from churn.db import ensure_schema

log = logging.getLogger(__name__)

SCORES_COLUMNS = "customer_id, churn_probability, risk_band, risk_decile, model_version, run_id, scored_at"
_TABLE_DDL = """
CREATE TABLE {name} (
    customer_id text NOT NULL,
    churn_probability real NOT NULL,
    risk_band text NOT NULL,
    risk_decile smallint NOT NULL,
    model_version text NOT NULL,
    run_id text NOT NULL,
    scored_at timestamptz NOT NULL
)"""
_LOCK_KEY = 7412  # serializes publishes (the switch is short; loads run in parallel-safe private tables)


class PublishError(RuntimeError):
    """Publishing failed before the switch; readers still see the previous batch."""


@dataclass
class PostgresPublish:
    """Outcome of a Postgres publish."""

    table: str
    rows: int
    is_current: bool
    load_seconds: float


def run_table(run_key: str) -> str:
    """Per-run table name, e.g. ``scores_2026_11_20`` (schema ``churn``)."""
    safe = re.sub(r"[^a-z0-9]+", "_", run_key.lower()).strip("_")
    if not safe:
        raise PublishError(f"run key {run_key!r} gives an empty table name")
    return f"scores_{safe}"[:60]


def copy_parquet(cur, parquet_path: str | Path, table: str, columns: str = SCORES_COLUMNS,
                 batch_rows: int = 250_000) -> int:
    """COPY a Parquet file into ``table`` batch by batch (CSV over the wire, bounded memory)."""
    rows = 0
    parquet = pq.ParquetFile(parquet_path)
    names = [c.strip() for c in columns.split(",")]
    for batch in parquet.iter_batches(batch_size=batch_rows, columns=names):
        buf = io.BytesIO()
        pacsv.write_csv(batch, buf, write_options=pacsv.WriteOptions(include_header=False))
        buf.seek(0)
        cur.copy_expert(f"COPY {table} ({columns}) FROM STDIN WITH (FORMAT csv)", buf)
        rows += batch.num_rows
    return rows


def publish_scores(conn, scores_path: str | Path, run_key: str, model_version: str, retention_runs: int = 7
                   ) -> PostgresPublish:
    """Load the run's scores into a private table, then switch readers to it in one transaction."""
    ensure_schema(conn)
    final = run_table(run_key)
    staging = f"{final}__loading"
    started = time.monotonic()
    with conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS churn.{staging}")  # leftovers of a killed attempt
        cur.execute(_TABLE_DDL.format(name=f"churn.{staging}"))
        rows = copy_parquet(cur, scores_path, f"churn.{staging}")
        cur.execute(f"ALTER TABLE churn.{staging} ADD PRIMARY KEY (customer_id)")
        cur.execute(f"ANALYZE churn.{staging}")
    conn.commit()  # loaded but invisible: no view points at the staging table yet
    load_seconds = time.monotonic() - started

    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        cur.execute("SET LOCAL lock_timeout = '60s'")
        cur.execute(
            """INSERT INTO churn.score_runs (run_key, table_name, model_version, rows)
               VALUES (%s, %s, %s, %s)
               ON CONFLICT (run_key) DO UPDATE SET table_name = EXCLUDED.table_name,
                 model_version = EXCLUDED.model_version, rows = EXCLUDED.rows, published_at = now()""",
            (run_key, final, model_version, rows),
        )
        cur.execute("SELECT max(run_key) FROM churn.score_runs")
        latest = cur.fetchone()[0]
        is_current = latest == run_key
        # Views first point at the staging table, so the old copy of this run (if any) can be dropped.
        if is_current:
            cur.execute(f"CREATE OR REPLACE VIEW churn.scores_current AS SELECT {SCORES_COLUMNS} FROM churn.{staging}")
        _rebuild_history_view(cur, retention_runs, replace={final: staging})
        cur.execute(f"DROP TABLE IF EXISTS churn.{final}")
        cur.execute(f"ALTER TABLE churn.{staging} RENAME TO {final}")  # views follow the table, not its name
        cur.execute(
            f"ALTER TABLE churn.{final} RENAME CONSTRAINT {staging}_pkey TO {final}_pkey"
        )
        cur.execute("UPDATE churn.score_runs SET is_current = (run_key = %s)", (latest,))
        _apply_retention(cur, retention_runs)
    conn.commit()
    log.info("published %s scores to churn.%s (current: %s) in %.2f s", rows, final, is_current, load_seconds)
    return PostgresPublish(f"churn.{final}", rows, is_current, load_seconds)


def _retained(cur, retention_runs: int) -> list[tuple[str, str]]:
    cur.execute(
        "SELECT run_key, table_name FROM churn.score_runs ORDER BY run_key DESC LIMIT %s", (max(retention_runs, 2),)
    )
    return cur.fetchall()


def _rebuild_history_view(cur, retention_runs: int, replace: dict[str, str]) -> None:
    tables = [replace.get(table, table) for _, table in _retained(cur, retention_runs)]
    union = "\nUNION ALL\n".join(f"SELECT {SCORES_COLUMNS} FROM churn.{t}" for t in tables)
    cur.execute(f"CREATE OR REPLACE VIEW churn.scores_history AS {union}")  # keeps grants on the view


def _apply_retention(cur, retention_runs: int) -> None:
    keep = {run for run, _ in _retained(cur, retention_runs)}
    cur.execute("SELECT run_key, table_name FROM churn.score_runs")
    for run, table in cur.fetchall():
        if run not in keep:
            cur.execute(f"DROP TABLE IF EXISTS churn.{table}")
            cur.execute("DELETE FROM churn.score_runs WHERE run_key = %s", (run,))
            log.info("retention: dropped scores of run %s", run)


def current_run(conn) -> str | None:
    """run_key of the batch readers currently see, or None before the first publish."""
    ensure_schema(conn)
    with conn.cursor() as cur:
        cur.execute("SELECT run_key FROM churn.score_runs WHERE is_current")
        row = cur.fetchone()
    conn.commit()
    return row[0] if row else None
