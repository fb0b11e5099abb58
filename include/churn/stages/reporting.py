"""Closing stages: the run summary (with a timed Redis read-back) and the HTML run report."""

from __future__ import annotations

import json
import logging
import time
from datetime import date
from pathlib import Path

from churn.config import ChurnConfig
from churn.connections import Resources
from churn.db import ensure_schema, to_jsonb
from churn.stages.common import is_dry_run, timed
from churn.fileio import write_text_atomic
from churn.stages.results import (Candidate, ExportResult, GateResult, IngestResult, PostgresPublishResult,
                                  PurgeStageResult, RedisPublishResult, RegisterResult, ReportResult, ScoredResult,
                                  SummaryResult, TrainResult, ValidationResult, parse)

log = logging.getLogger(__name__)


def summarize(cfg: ChurnConfig, res: Resources, run: dict, stages: dict) -> dict:
    """Collect the run's figures, read one score back from Redis (timed), store and return the summary."""
    from churn.publish.redis_store import lookup_command, lookup_score

    started = time.monotonic()
    ingested, validated = parse(IngestResult, stages["ingested"]), parse(ValidationResult, stages["validated"])
    training, evaluation = TrainResult.from_dict(stages["trained"]), GateResult.from_dict(stages["evaluation"])
    scored, exported = parse(ScoredResult, stages["scored"]), parse(ExportResult, stages["exported"])
    candidates = [Candidate.from_dict(c) for c in evaluation.candidates]
    champion = RegisterResult.from_dict(stages["registered"]).champion
    outcomes = {"train": validated.train, "score": validated.score}
    summary = SummaryResult(
        run_key=run["run_key"], airflow_run_id=run["airflow_run_id"],
        rows_ingested={"train": ingested.train.rows, "score": ingested.score.rows},
        rows_validated={k: v.rows_checked - v.rows_quarantined for k, v in outcomes.items()},
        rows_quarantined={k: v.rows_quarantined for k, v in outcomes.items()},
        retrained=training.retrained, retrain_reason=training.reason,
        candidates=[{"name": c.name, "valid_roc_auc": round(c.valid_roc_auc, 4),
                     "test_roc_auc": round(c.metrics["roc_auc"], 4)} for c in candidates],
        gate={"promote": evaluation.promote, "reason": evaluation.reason},
        champion=champion,
        champion_test_roc_auc=next((c.metrics["roc_auc"] for c in candidates if c.version == champion), None),
        scored=scored.rows, inference_seconds=scored.inference_seconds,
        published_postgres=parse(PostgresPublishResult, stages["pg_published"]).rows,
        published_redis=parse(RedisPublishResult, stages["redis_published"]).rows,
        export_path=exported.path, export_rows=exported.rows, export_delivered_to=exported.delivered_to,
        stage_timings={name: value.get("stage_seconds") for name, value in stages.items() if isinstance(value, dict)},
    )

    sample = None
    if scored.rows:  # the first customer of the file: one row group read, not the whole column
        import pyarrow.parquet as pq

        sample = pq.ParquetFile(scored.path).read_row_group(0, columns=["customer_id"]).column(0)[0].as_py()
    client = res.redis()
    try:
        if sample is not None:
            lookup_score(client, sample, cfg.redis_key_prefix)  # a reader that has read churn:meta once
            t0 = time.perf_counter()
            record = lookup_score(client, sample, cfg.redis_key_prefix)
            summary.sample_lookup = {"customer_id": sample, "record": record,
                                     "lookup_ms": round((time.perf_counter() - t0) * 1000, 3),
                                     "command": lookup_command(client, sample, cfg.redis_key_prefix)}
    finally:
        client.close()
    summary_path = Path(run["run_dir"]) / "summary.json"
    summary.summary_path = str(summary_path)
    summary.stage_seconds = round(time.monotonic() - started, 3)  # what timed() sets, known before it is stored
    stored = summary.as_dict()
    write_text_atomic(summary_path, json.dumps(stored, indent=2, default=str))
    with res.pg_session() as conn:
        with conn.cursor() as cur:
            cur.execute(
                "UPDATE churn.pipeline_runs SET status = 'success', finished_at = now(), summary = %s "
                "WHERE run_key = %s", (to_jsonb(stored), run["run_key"]),
            )
        conn.commit()
    log.info("run summary: %s", json.dumps(stored, default=str))
    return timed(run, "summarize", started, summary)


def report(cfg: ChurnConfig, res: Resources, run: dict, stages: dict, summary: dict) -> dict:
    """Monitoring rows (run metrics, prediction PSI, realized performance), alerts, and <run_dir>/report.html."""
    import os

    from churn import alerts, monitoring
    from churn.report import build_report, write_report

    started = time.monotonic()
    run_dir = Path(run["run_dir"])
    scored = parse(ScoredResult, stages["scored"]) if stages.get("scored") else None
    dry_run = is_dry_run(run)
    closing = parse(SummaryResult, summary)
    # The run's per-stage timings, with summarize's own duration (its stage_seconds).
    summary = {**closing.as_dict(), "stage_timings": {**closing.stage_timings, "summarize": closing.stage_seconds}}
    with res.pg_session() as conn:
        ensure_schema(conn)
        metrics = monitoring.build_run_metrics(conn, run["run_key"], summary, scored.path if scored else None,
                                               scored.model_version if scored else None, cfg.band_cuts, dry_run,
                                               cfg.metrics_sample_rows)
        previous = monitoring.previous_run(conn, run["run_key"])
        realized = monitoring.evaluate_realized(conn, cfg, date.fromisoformat(run["as_of"]))
        judged: list = []
        if not dry_run:  # experiments whose label window closed tonight: per arm, stored in experiment_results
            from churn.experiments.realized import evaluate_experiments

            try:
                judged = evaluate_experiments(conn, cfg, date.fromisoformat(run["as_of"]))
            except Exception:  # noqa: BLE001 - the report, its alerts and retention must still happen
                conn.rollback()
                log.exception("experiments were not judged tonight (the report goes on); fix the cause and "
                              "re-run the night's report task to judge them")
        metrics.report_path = str(run_dir / "report.html")
        monitoring.record_run(conn, metrics)
    view = {"score_summary": metrics.score_summary, "prediction_psi": metrics.prediction_psi,
            "previous_run_key": metrics.previous_run_key, "max_prediction_psi": cfg.max_prediction_psi,
            "previous_score_summary": previous[1] if previous else None}
    html_text = build_report(run, summary, stages, view, realized,
                             data_docs_href=lambda p: os.path.relpath(p, run_dir), experiments=judged)
    path = write_report(run_dir / "report.html", html_text)
    url = f"{cfg.report_base_url.rstrip('/')}/runs/{run['run_key']}/report"
    log.info("run report: %s (file %s)", url, path)

    breaches = []
    if metrics.prediction_psi is not None and metrics.prediction_psi > cfg.max_prediction_psi:
        breaches.append(f"prediction PSI {metrics.prediction_psi:.4f} vs run {metrics.previous_run_key} is above "
                        f"CHURN_MAX_PREDICTION_PSI={cfg.max_prediction_psi}")
    breaches += [reason for record in realized
                 if (reason := monitoring.realized_drop(record, cfg.max_realized_auc_drop))]
    for breach in breaches:
        alerts.send_alert("churn threshold breached", {"run_key": run["run_key"], "breach": breach, "report": url},
                          webhook_conn_id=cfg.alert_webhook_conn_id, email_conn_id=cfg.alert_email_conn_id)
    return timed(run, "report", started, ReportResult(report_path=str(path), report_url=url,
                                                      prediction_psi=metrics.prediction_psi, realized=realized,
                                                      alerts=breaches))


def purge(cfg: ChurnConfig, res: Resources, run: dict) -> dict:
    """Retention: rows and files older than CHURN_RETENTION_DAYS (the served batch and monitoring's kept)."""
    from churn.retention import purge as purge_old

    started = time.monotonic()
    if is_dry_run(run):
        return timed(run, "purge", started, PurgeStageResult(skipped="dry run: nothing is written or removed"))
    with res.pg_session() as conn:
        result = purge_old(conn, cfg, date.fromisoformat(run["as_of"]))
    return timed(run, "purge", started, PurgeStageResult(**result.as_dict()))
