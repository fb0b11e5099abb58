"""Publish stages: Postgres (atomic switch), Redis (never back in time), CSV exports over SFTP."""

from __future__ import annotations

import logging
import os
import time

from churn.config import ChurnConfig
from churn.connections import Resources
from churn.stages.common import is_dry_run, timed
from churn.stages.results import (ExperimentsResult, ExportResult, PostgresPublishResult, RedisPublishResult,
                                  ScoredResult, ValidationResult, parse)

log = logging.getLogger(__name__)


def publish_postgres(cfg: ChurnConfig, res: Resources, run: dict, scored: dict) -> dict:
    """COPY into the run's table, then switch ``churn.scores_current`` atomically."""
    from churn.publish.postgres import connect_for_publish, publish_scores

    started = time.monotonic()
    if is_dry_run(run):
        return timed(run, "publish_postgres", started, PostgresPublishResult(
            skipped=True, rows=0, is_current=False, table=None, reason="dry run: nothing published"))
    scores = parse(ScoredResult, scored)
    conn = connect_for_publish(res.pg, run["run_key"])
    try:
        published = publish_scores(conn, scores.path, run["run_key"], scores.model_version,
                                   cfg.score_history_runs, lock_wait_seconds=cfg.publish_lock_wait_seconds,
                                   switch_lock_timeout_seconds=cfg.publish_switch_lock_timeout_seconds,
                                   switch_deadline_seconds=cfg.publish_switch_deadline_seconds,
                                   log_days=cfg.prediction_log_days)
        reader_role = _reader_role(conn, cfg)
    finally:
        conn.close()
    return timed(run, "publish_postgres", started, PostgresPublishResult(**published.__dict__, reader_role=reader_role))


def _reader_role(conn, cfg: ChurnConfig) -> str:
    """Keep the read-only consumer role; a missing privilege is logged with the DBA's fix, not a failed publish."""
    from churn.publish.postgres import ReaderRoleError, ensure_reader_role

    if not cfg.pg_reader_role:
        return "not managed (CHURN_PG_READER_ROLE is empty)"
    try:
        # The password is a secret: only from the environment, never config or XCom.
        ensure_reader_role(conn, cfg.pg_reader_role, os.environ.get("CHURN_PG_READER_PASSWORD") or None,
                           idle_in_transaction_seconds=cfg.pg_reader_idle_in_transaction_seconds)
    except ReaderRoleError as exc:
        # The scores are already switched; failing here would make the retry loop on a grant, not on data.
        log.error("read-only role not updated: %s", exc)
        return f"not updated: {exc}"
    return cfg.pg_reader_role


def publish_redis(cfg: ChurnConfig, res: Resources, run: dict, scored: dict, pg_published: dict) -> dict:
    """Bulk-write the run's scores to Redis, move the marker, delete customers no longer scored."""
    from churn.publish.postgres import connect_for_publish, current_run, stale_customers
    from churn.publish.redis_store import OlderRunRefused, publish_scores
    from churn.publish.refresh import newer_than_batch

    started = time.monotonic()
    if is_dry_run(run):
        return timed(run, "publish_redis", started, RedisPublishResult(skipped=True, rows=0,
                                                                       reason="dry run: nothing published"))
    in_postgres = parse(PostgresPublishResult, pg_published)
    if not in_postgres.is_current:
        return timed(run, "publish_redis", started, RedisPublishResult(
            skipped=True, rows=0,
            reason="a newer run is already served; this (back-filled) run stays in Postgres history only"))
    scores = parse(ScoredResult, scored)
    client = res.redis()
    conn = connect_for_publish(res.pg, run["run_key"])
    try:
        # Asked now, not from the XCom of when publish_postgres ran: a cleared task of an older date
        # must not put yesterday's scores in Redis while Postgres serves today's.
        served_pg = current_run(conn)
        if served_pg != run["run_key"]:
            return timed(run, "publish_redis", started, RedisPublishResult(
                skipped=True, rows=0,
                reason=f"Postgres serves run {served_pg}, not {run['run_key']}: Redis keeps the newer batch"))
        try:
            published = publish_scores(client, scores.path, run["run_key"], scores.model_version,
                                       lambda sources: stale_customers(conn, sources, in_postgres.table),
                                       prefix=cfg.redis_key_prefix, layout=cfg.redis_layout,
                                       buckets=cfg.redis_hash_buckets, max_entries=cfg.redis_hash_max_entries,
                                       batch_rows=cfg.redis_publish_batch_rows,
                                       lock_wait_seconds=cfg.publish_lock_wait_seconds,
                                       lock_lease_seconds=cfg.publish_lease_seconds,
                                       exclude_ids=lambda: newer_than_batch(conn, run["run_key"]))
        except OlderRunRefused as exc:
            log.warning("%s", exc)
            return timed(run, "publish_redis", started, RedisPublishResult(skipped=True, rows=0, reason=str(exc)))
    finally:
        conn.close()
        client.close()
    return timed(run, "publish_redis", started, RedisPublishResult(**published.__dict__))


def export(cfg: ChurnConfig, res: Resources, run: dict, scored: dict, pg_published: dict,
           validated: dict | None = None, experiments: dict | None = None) -> dict:
    """Write the configured exports (CSV + manifest each) and hand them to the export sink (folder or SFTP).

    Customer attributes come from ``src.customers`` for the Postgres source and from the run's clean
    scoring snapshot (``validated['score']['clean_path']``) for a file source. Customers of the experiments'
    holdout arms (``experiments``, the output of ``assign_experiments``) are left out of every file.
    """
    from churn.data.spec import load_run_spec
    from churn.publish.files import (SOURCE_ATTRIBUTES_TABLE, ExportRefused, check_published, export_spec,
                                     load_file_attributes, parse_exports)
    from churn.systems import systems_for

    started = time.monotonic()
    if is_dry_run(run):
        return timed(run, "export", started, ExportResult(skipped=True, rows=0, path=None,
                                                          reason="dry run: nothing exported"))
    spec = load_run_spec(run["run_dir"])
    from_file = spec.source != "postgres"
    # a config mistake fails before anything is written; only the demo source has src.customers to default to
    specs = parse_exports(cfg.exports, cfg.export_band, default_attributes=not from_file)
    sink = systems_for(cfg).export_sink()  # where the files go (a missing SFTP connection fails before writing)
    in_postgres = parse(PostgresPublishResult, pg_published)
    if in_postgres.skipped or not in_postgres.table:
        # Skipped, not emptied: yesterday's complete files stay where the consumer picks them up.
        raise ExportRefused(f"run {run['run_key']}: publish_postgres published nothing "
                            f"({in_postgres.reason}); no export is written or delivered")
    table = in_postgres.table.split(".", 1)[1]
    model_version = parse(ScoredResult, scored).model_version
    attributes = sorted({c for s in specs for c in s.attributes})
    holdouts = parse(ExperimentsResult, experiments).holdouts() if experiments else []
    with res.pg_session() as conn:
        check_published(conn, run["run_key"], table, in_postgres.rows)
        attributes_table = SOURCE_ATTRIBUTES_TABLE
        if from_file and attributes:
            if not validated:
                raise ExportRefused(f"run {run['run_key']}: exports select file columns {attributes} but the "
                                    "export task was given no validated scoring snapshot to read them from")
            attributes_table = load_file_attributes(conn, parse(ValidationResult, validated).score.clean_path,
                                                    spec.id_column, attributes, batch_rows=cfg.export_chunk_rows)
        written = [export_spec(conn, export_def, table, cfg.exports_dir, run["run_key"], model_version,
                               airflow_run_id=run.get("airflow_run_id", ""), chunk_rows=cfg.export_chunk_rows,
                               attributes_table=attributes_table, holdouts=holdouts)
                   for export_def in specs]
    files = [path for w in written for path in (w.path, w.manifest_path)]  # each manifest after its file
    delivered = sink.deliver(files)
    return timed(run, "export", started, ExportResult(
        **written[0].__dict__, exports=written, delivered_to=delivered.delivered_to, delivery=delivered.delivery,
        remote_paths=delivered.remote_paths))
