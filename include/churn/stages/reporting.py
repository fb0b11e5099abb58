"""Closing stages: the run summary (with a timed Redis read-back) and the HTML run report."""

from __future__ import annotations

import json
import logging
import time
from datetime import date
from pathlib import Path
from typing import Any

from churn.config import ChurnConfig
from churn.connections import Resources
from churn.db import ensure_schema, to_jsonb
from churn.stages.common import is_dry_run, timed
from churn.stages.results import Candidate, GateResult, RegisterResult, TrainResult

log = logging.getLogger(__name__)


def summarize(cfg: ChurnConfig, res: Resources, run: dict, stages: dict) -> dict:
    """Collect the run's figures, read one score back from Redis (timed), store and return the summary."""
    from churn.publish.redis_store import lookup_score

    started = time.monotonic()
    summary: dict[str, Any] = {"run_key": run["run_key"], "airflow_run_id": run["airflow_run_id"]}
    validated = stages["validated"]
    summary["rows_ingested"] = {k: stages["ingested"][k]["rows"] for k in ("train", "score")}
    summary["rows_validated"] = {k: v["rows_checked"] - v["rows_quarantined"] for k, v in validated.items()
                                 if isinstance(v, dict)}
    summary["rows_quarantined"] = {k: v["rows_quarantined"] for k, v in validated.items() if isinstance(v, dict)}
    training, evaluation = TrainResult.from_dict(stages["trained"]), GateResult.from_dict(stages["evaluation"])
    candidates = [Candidate.from_dict(c) for c in evaluation.candidates]
    summary["retrained"] = training.retrained
    summary["retrain_reason"] = training.reason
    summary["candidates"] = [{"name": c.name, "valid_roc_auc": round(c.valid_roc_auc, 4),
                              "test_roc_auc": round(c.metrics["roc_auc"], 4)} for c in candidates]
    summary["gate"] = {"promote": evaluation.promote, "reason": evaluation.reason}
    summary["champion"] = RegisterResult.from_dict(stages["registered"]).champion
    summary["champion_test_roc_auc"] = next((c.metrics["roc_auc"] for c in candidates
                                             if c.version == summary["champion"]), None)
    summary["scored"] = stages["scored"]["rows"]
    summary["inference_seconds"] = stages["scored"]["inference_seconds"]
    summary["published_postgres"] = stages["pg_published"]["rows"]
    summary["published_redis"] = stages["redis_published"]["rows"]
    summary["export_path"] = stages["exported"]["path"]
    summary["export_rows"] = stages["exported"]["rows"]
    summary["export_delivered_to"] = stages["exported"].get("delivered_to")
    summary["stage_seconds"] = {name: value.get("stage_seconds") for name, value in stages.items()
                                if isinstance(value, dict)}

    sample = None
    if stages["scored"]["rows"]:  # the first customer of the file: one row group read, not the whole column
        import pyarrow.parquet as pq

        sample = pq.ParquetFile(stages["scored"]["path"]).read_row_group(0, columns=["customer_id"]).column(0)[0]
        sample = sample.as_py()
    client = res.redis()
    try:
        if sample is not None:
            client.ping()
            t0 = time.perf_counter()
            record = lookup_score(client, sample, cfg.redis_key_prefix)
            summary["sample_lookup"] = {"customer_id": sample, "record": record,
                                        "lookup_ms": round((time.perf_counter() - t0) * 1000, 3)}
    finally:
        client.close()
    summary_path = Path(run["run_dir"]) / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2, default=str))
    summary["summary_path"] = str(summary_path)
    with res.pg_session() as conn:
        with conn.cursor() as cur:
            cur.execute(
                "UPDATE churn.pipeline_runs SET status = 'success', finished_at = now(), summary = %s "
                "WHERE run_key = %s", (to_jsonb(summary), run["run_key"]),
            )
        conn.commit()
    log.info("run summary: %s", json.dumps(summary, default=str))
    return timed(run, "summarize", started, summary)


def report(cfg: ChurnConfig, res: Resources, run: dict, stages: dict, summary: dict) -> dict:
    """Monitoring rows (run metrics, prediction PSI, realized performance), alerts, and <run_dir>/report.html."""
    import os

    from churn import alerts, monitoring
    from churn.report import build_report, write_report

    started = time.monotonic()
    run_dir = Path(run["run_dir"])
    scored = stages.get("scored") or {}
    dry_run = is_dry_run(run)
    # summarize's returned "stage_seconds" is its own duration (set by timed); the per-stage dict is in summary.json.
    summarize_seconds = summary.get("stage_seconds")
    if summary.get("summary_path") and Path(summary["summary_path"]).exists():
        summary = {**json.loads(Path(summary["summary_path"]).read_text()), **{
            k: v for k, v in summary.items() if k != "stage_seconds"}}
    per_stage = summary.get("stage_seconds") if isinstance(summary.get("stage_seconds"), dict) else {}
    if isinstance(summarize_seconds, (int, float)):
        per_stage = {**per_stage, "summarize": summarize_seconds}
    summary = {**summary, "stage_seconds": per_stage}
    with res.pg_session() as conn:
        ensure_schema(conn)
        metrics = monitoring.build_run_metrics(conn, run["run_key"], summary, scored.get("path"),
                                               scored.get("model_version"), cfg.band_cuts, dry_run,
                                               cfg.metrics_sample_rows)
        previous = monitoring.previous_run(conn, run["run_key"])
        realized = monitoring.evaluate_realized(conn, cfg, date.fromisoformat(run["as_of"]))
        if not stages.get("drift"):
            stages = {**stages, "drift": _stored_drift(conn, run["run_key"])}
        metrics.report_path = str(run_dir / "report.html")
        monitoring.record_run(conn, metrics)
    view = {"score_summary": metrics.score_summary, "prediction_psi": metrics.prediction_psi,
            "previous_run_key": metrics.previous_run_key, "max_prediction_psi": cfg.max_prediction_psi,
            "previous_score_summary": previous[1] if previous else None}
    html_text = build_report(run, summary, stages, view, realized,
                             data_docs_href=lambda p: os.path.relpath(p, run_dir))
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
    return timed(run, "report", started, {"report_path": path, "report_url": url,
                                           "prediction_psi": metrics.prediction_psi, "realized": realized,
                                           "alerts": breaches})


def purge(cfg: ChurnConfig, res: Resources, run: dict) -> dict:
    """Retention: rows and files older than CHURN_RETENTION_DAYS (the served batch and monitoring's kept)."""
    from churn.retention import purge as purge_old

    started = time.monotonic()
    if is_dry_run(run):
        return timed(run, "purge", started, {"skipped": "dry run: nothing is written or removed"})
    with res.pg_session() as conn:
        result = purge_old(conn, cfg, date.fromisoformat(run["as_of"]))
    return timed(run, "purge", started, result.as_dict())


def _stored_drift(conn, run_key: str) -> dict:
    """Per-feature drift of the run from ``churn.drift_metrics`` (written by the drift stage), if any."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('churn.drift_metrics')")
        if cur.fetchone()[0] is None:
            conn.commit()
            return {}
        cur.execute("SELECT feature, psi, ks_statistic FROM churn.drift_metrics WHERE run_key = %s", (run_key,))
        rows = cur.fetchall()
    conn.commit()
    return {"features": {f: {"psi": p, "ks_statistic": ks} for f, p, ks in rows if p is not None}} if rows else {}
