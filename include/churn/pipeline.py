"""The nightly job's stages as plain functions: ``stage(cfg, resources, run, *inputs) -> reference dict``.

Airflow tasks call these through :func:`run_stage`; tests call them directly.
Inputs and outputs are small JSON-able dicts of references (paths, table names,
versions, counts), never data. Every stage is idempotent for a run key (the
logical date): re-running it replaces its own outputs.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from churn.config import ChurnConfig, ConfigError
from churn.connections import Resources
from churn.db import ensure_schema, to_jsonb

log = logging.getLogger(__name__)

# Per-run overrides accepted from the Airflow trigger form (param name -> config field).
PARAM_FIELDS = {"train_budget_minutes": "train_budget_minutes", "max_eval_minutes": "max_eval_minutes",
                "min_roc_auc": "min_roc_auc", "score_partitions": "score_partitions"}


class NoChampionError(RuntimeError):
    """There is no promoted model to score with."""


def _cfg_for(cfg: ChurnConfig, run: dict) -> ChurnConfig:
    overrides = {field: run["params"][param] for param, field in PARAM_FIELDS.items()
                 if run.get("params", {}).get(param) is not None}
    return cfg.replace(**overrides) if overrides else cfg


def _dry_run(run: dict) -> bool:
    """True when the trigger asked to score and report but publish nothing."""
    return bool(run.get("params", {}).get("dry_run"))


def _sample_snapshot(path: str, fraction: float, seed: int, id_column: str = "customer_id",
                     chunk_rows: int = 100_000) -> int:
    """Keep about ``fraction`` of a snapshot's rows, chosen by id hash; streamed, written atomically."""
    from churn.data.stream import write_sample

    return write_sample(path, fraction, id_column, seed, chunk_rows)


def _timed(run: dict, stage: str, started: float, result: dict) -> dict:
    result["stage_seconds"] = round(time.monotonic() - started, 3)
    log.info("stage %s of run %s took %.2f s", stage, run["run_key"], result["stage_seconds"])
    return result


def start_run(cfg: ChurnConfig, res: Resources, as_of: date, airflow_run_id: str, params: dict | None = None) -> dict:
    """Open (or re-open) the run for ``as_of`` and return its reference."""
    run_key = as_of.isoformat()
    run_dir = cfg.runs_dir / run_key
    run_dir.mkdir(parents=True, exist_ok=True)
    conn = res.pg()
    try:
        ensure_schema(conn)
        with conn.cursor() as cur:
            cur.execute(
                """INSERT INTO churn.pipeline_runs (run_key, airflow_run_id, status) VALUES (%s, %s, 'running')
                   ON CONFLICT (run_key) DO UPDATE SET airflow_run_id = EXCLUDED.airflow_run_id,
                   status = 'running', started_at = now(), finished_at = NULL""",
                (run_key, airflow_run_id),
            )
        conn.commit()
    finally:
        conn.close()
    return {"run_key": run_key, "as_of": run_key, "run_dir": str(run_dir), "airflow_run_id": airflow_run_id,
            "params": dict(params or {})}


def ingest(cfg: ChurnConfig, res: Resources, run: dict) -> dict:
    """Point-in-time snapshots (training with labels, scoring) from the configured source, plus its dataset spec.

    Postgres source: training features as of ``as_of - label_window_days`` with the label "churned within
    the window", scoring features as of ``as_of``. File source: the file(s) delivered for the run date are
    that date's snapshot (a file has no time dimension); labelled rows train, and the same rows (or
    ``CHURN_FILE_SCORE_PATH``) are scored. The spec is written to ``<run_dir>/dataset_spec.json``.
    """
    from churn.data.spec import spec_from_config

    started = time.monotonic()
    as_of = date.fromisoformat(run["as_of"])
    spec = spec_from_config(cfg)
    run_dir = Path(run["run_dir"])
    if spec.source == "file":
        from churn.data.sources import read_file_snapshot, resolve_files

        options = {"delimiter": cfg.file_delimiter, "encoding": cfg.file_encoding, "chunk_rows": cfg.ingest_chunk_rows}
        train = read_file_snapshot(spec, resolve_files(cfg.file_path, as_of), run_dir / "train_raw.parquet", as_of,
                                   labelled=True, **options)
        score = read_file_snapshot(spec, resolve_files(cfg.file_score_path or cfg.file_path, as_of),
                                   run_dir / "score_raw.parquet", as_of, labelled=False, **options)
    else:
        from churn.data.ingest import extract_snapshot

        train_date = as_of - timedelta(days=cfg.label_window_days)
        conn = res.pg()
        try:
            train = extract_snapshot(conn, train_date, run_dir / "train_raw.parquet", cfg.label_window_days)
            score = extract_snapshot(conn, as_of, run_dir / "score_raw.parquet")
        finally:
            conn.close()
    out = {"train": dict(train.__dict__), "score": dict(score.__dict__)}
    fraction = float(run.get("params", {}).get("sample_fraction") or 1.0)
    if fraction < 1.0:
        # A published batch must cover everyone (publish_redis deletes customers not scored), so the
        # scored population is sampled only in a dry run; training rows are sampled in every run.
        for dataset in ("train", "score") if _dry_run(run) else ("train",):
            out[dataset]["rows"] = _sample_snapshot(out[dataset]["path"], fraction, cfg.random_state,
                                                    spec.id_column, cfg.ingest_chunk_rows)
            out[dataset]["sample_fraction"] = fraction
        log.info("sampled %s of the population: %s", fraction, {k: v["rows"] for k, v in out.items()})
    out["dataset"] = spec.name
    out["spec_path"] = str(spec.write(run_dir))  # a reference: split/train/validate read the spec from here
    return _timed(run, "ingest", started, out)


def profile_and_validate(cfg: ChurnConfig, res: Resources, run: dict, ingested: dict) -> dict:
    """Profile both snapshots, validate them with the dataset's GX suite, quarantine bad rows, build Data Docs."""
    from churn.data.profile import profile_snapshot
    from churn.data.spec import load_run_spec
    from churn.data.validate import validate_snapshot

    started = time.monotonic()
    spec = load_run_spec(run["run_dir"])
    docs_dir = Path(run["run_dir"]) / "data_docs"
    out: dict[str, Any] = {}
    conn = res.pg()
    try:
        for dataset in ("train", "score"):
            path = ingested[dataset]["path"]
            profile_snapshot(conn, path, run["run_key"], dataset, id_column=spec.id_column,
                             chunk_rows=cfg.ingest_chunk_rows,
                             sample_rows=cfg.profile_sample_rows, seed=cfg.random_state)
            outcome = validate_snapshot(
                conn, path, run["run_key"], dataset, run["run_dir"], cfg.max_bad_row_fraction,
                training=dataset == "train", spec=spec, as_of=date.fromisoformat(run["as_of"]),
                max_row_count_change=cfg.max_row_count_change, max_data_age_days=cfg.max_data_age_days,
                docs_dir=docs_dir, chunk_rows=cfg.ingest_chunk_rows,
            )
            out[dataset] = outcome.as_dict()
    finally:
        conn.close()
    out["data_docs_path"] = str(docs_dir / "index.html")  # HTML per dataset, linked from this index
    return _timed(run, "profile_and_validate", started, out)


def drift(cfg: ChurnConfig, res: Resources, run: dict, validated: dict) -> dict:
    """PSI (every feature) and KS (numeric) of the clean scoring snapshot vs the champion's training reference."""
    from churn.data.drift import drift_against_champion
    from churn.model import registry
    from churn.model.features import ModelSignature

    started = time.monotonic()
    conn = res.pg()
    try:
        champ = registry.champion(conn)
        signature = ModelSignature.from_dict(champ.signature) if champ is not None else None
        report = drift_against_champion(conn, champ, signature, validated["score"]["clean_path"], run["run_key"],
                                        cfg.drift_psi_threshold, cfg.drift_sample_rows)
    finally:
        conn.close()
    return _timed(run, "drift", started, report.as_dict())


def split(cfg: ChurnConfig, res: Resources, run: dict, validated: dict) -> dict:
    """Deterministic id-keyed train/valid/test split of the clean training rows."""
    from churn.data.spec import load_run_spec
    from churn.data.stream import sample_frame
    from churn.model.registry import file_sha256
    from churn.model.train import split_ids

    started = time.monotonic()
    spec = load_run_spec(run["run_dir"])
    LABEL_COLUMN = spec.label_column  # noqa: N806 - the dataset's label column (from its spec)
    # At most about max_train_rows rows, chosen by id hash while streaming (each class keeps its share in
    # expectation): the split's memory does not grow with the population.
    frame, available = sample_frame(validated["train"]["clean_path"], cfg.max_train_rows, spec.id_column,
                                    cfg.random_state, chunk_rows=cfg.ingest_chunk_rows)
    assignment = split_ids(frame[spec.id_column], cfg.splits)
    paths: dict[str, str] = {}
    counts: dict[str, dict] = {}
    for name in ("train", "valid", "test"):
        part = frame[assignment == name]
        if part[LABEL_COLUMN].nunique() < 2:
            raise ValueError(
                f"the {name} split has only one class ({len(part)} rows): the population is too small "
                "or the label window too short; raise CHURN_DEMO_CUSTOMERS or CHURN_LABEL_WINDOW_DAYS"
            )
        path = Path(run["run_dir"]) / f"split_{name}.parquet"
        part.to_parquet(path, index=False)
        paths[name] = str(path)
        counts[name] = {"rows": len(part), "positives": int(part[LABEL_COLUMN].sum())}
    fingerprint = file_sha256(validated["train"]["clean_path"])  # read in blocks, not whole
    return _timed(run, "split", started, {"paths": paths, "counts": counts, "data_fingerprint": fingerprint,
                                          "rows_available": available, "rows_used": len(frame)})


def retrain_decision(cfg: ChurnConfig, res: Resources, run: dict, drift: dict | None = None) -> tuple[bool, str]:
    """Retrain when forced, without a champion, on feature drift above the threshold, or when the champion is old."""
    from churn.model import registry

    if run.get("params", {}).get("retrain"):
        return True, "retrain requested by the trigger"
    conn = res.pg()
    try:
        champ = registry.champion(conn)
        if champ is None:
            return True, "no champion yet"
        if drift and drift.get("computed") and drift.get("drifted"):
            return True, (f"feature drift vs {drift.get('reference_version')}: PSI of {drift['max_psi_feature']} is "
                          f"{drift['max_psi']} > CHURN_DRIFT_PSI_THRESHOLD={cfg.drift_psi_threshold} "
                          f"({len(drift['drifted'])} feature(s) drifted)")
        with conn.cursor() as cur:
            cur.execute("SELECT created_at FROM churn.model_registry WHERE version = %s", (champ.version,))
            created = cur.fetchone()[0]
        conn.commit()
    finally:
        conn.close()
    age = datetime.now(timezone.utc) - created
    if age > timedelta(days=cfg.max_champion_age_days):
        return True, f"champion {champ.version} is {age.days} days old (> {cfg.max_champion_age_days})"
    decayed, decay_reason = _realized_decay(cfg, res, champ.version)
    if decayed:
        return True, decay_reason
    return False, f"champion {champ.version} is fresh ({age.days} days old)"


def _realized_decay(cfg: ChurnConfig, res: Resources, champion_version: str) -> tuple[bool, str]:
    """Monitoring's retrain trigger: the champion's realized ROC AUC dropped more than configured."""
    from churn.monitoring import realized_retrain_trigger

    conn = res.pg()
    try:
        return realized_retrain_trigger(conn, cfg, champion_version)
    finally:
        conn.close()


def train(cfg: ChurnConfig, res: Resources, run: dict, splits: dict, drift: dict | None = None) -> dict:
    """Fit the logistic baseline and the TPOT search on the training split (if the policy, drift included, says so)."""
    import joblib

    from churn.data.spec import load_run_spec
    from churn.model.features import ModelSignature
    from churn.model.registry import file_sha256, version_name
    from churn.model.search import run_search
    from churn.model.train import SearchFoundNothing, fit_baseline

    started = time.monotonic()
    cfg = _cfg_for(cfg, run)
    retrain, why = retrain_decision(cfg, res, run, drift)
    if not retrain:
        log.info("not retraining: %s", why)
        return _timed(run, "train", started, {"retrained": False, "reason": why, "candidates": []})
    train_df = pd.read_parquet(splits["paths"]["train"])
    valid_df = pd.read_parquet(splits["paths"]["valid"])
    spec = load_run_spec(run["run_dir"])  # the dataset's columns and kinds, whatever the source
    signature = ModelSignature.infer(train_df, spec.id_column, spec.label_column, spec.numeric, spec.boolean,
                                     spec.categorical)
    candidates = [fit_baseline(train_df, valid_df, signature, cfg.random_state)]
    tpot_error = None
    if not cfg.train_tpot:
        log.info("CHURN_TRAIN_TPOT=false: baseline only, no TPOT search")
    else:
        try:
            # In a child interpreter: TPOT's Dask processes cannot start inside an executor's task process.
            candidates.append(run_search({
                "train_path": splits["paths"]["train"], "valid_path": splits["paths"]["valid"],
                "signature": signature.as_dict(),
                "fit": {"budget_minutes": cfg.train_budget_minutes, "max_eval_minutes": cfg.max_eval_minutes,
                        "search_space": cfg.tpot_search_space, "cv": cfg.tpot_cv,
                        "population_size": cfg.tpot_population_size, "n_jobs": cfg.n_jobs,
                        "random_state": cfg.random_state, "dask_scheduler_address": cfg.dask_scheduler_address,
                        "progress_seconds": cfg.train_progress_seconds},
            }, Path(run["run_dir"]) / "search"))
        except SearchFoundNothing as exc:
            # The baseline is a full candidate: an empty search must not stop the night's scoring.
            log.warning("TPOT produced no candidate, continuing with the baseline only: %s", exc)
            tpot_error = str(exc)
    # One folder and one set of version names per training attempt: a retrain of the same date (a UI
    # trigger, a cleared task) never overwrites the candidates or the registry versions of an earlier one.
    attempt = uuid.uuid4().hex[:6]
    out_dir = Path(run["run_dir"]) / "candidates" / attempt
    out_dir.mkdir(parents=True, exist_ok=True)
    described = []
    for cand in candidates:
        path = out_dir / f"{cand.name}.joblib"
        joblib.dump({"model": cand.pipeline, "signature": signature.as_dict()}, path)
        # The hash travels with the reference: evaluate and register unpickle only these bytes.
        described.append({"name": cand.name, "version": version_name(run["run_key"], cand.name, attempt),
                          "path": str(path), "sha256": file_sha256(path),
                          "valid_roc_auc": cand.valid_roc_auc,
                          "fit_seconds": round(cand.fit_seconds, 2), "params": cand.params})
    return _timed(run, "train", started, {"retrained": True, "reason": why, "attempt": attempt,
                                          "candidates": described, "tpot_error": tpot_error})


def evaluate_and_gate(cfg: ChurnConfig, res: Resources, run: dict, splits: dict, trained: dict) -> dict:
    """Test-split metrics for every candidate and the champion on the same rows; gate the best challenger."""
    from churn.model import registry
    from churn.model.evaluate import classification_metrics, gate
    from churn.model.features import ModelSignature, SignatureMismatch, labels, to_model_input

    started = time.monotonic()
    if not trained["retrained"]:
        return _timed(run, "evaluate_and_gate", started, {"evaluated": False, "promote": False,
                                                          "reason": trained["reason"], "candidates": []})
    test_df = pd.read_parquet(splits["paths"]["test"])
    results = []
    for cand in trained["candidates"]:
        payload = registry.read_verified(cand["path"], cand["sha256"])  # as the train task wrote it
        signature = ModelSignature.from_dict(payload["signature"])
        proba = payload["model"].predict_proba(to_model_input(test_df, signature))[:, 1]
        results.append({**cand, "metrics": classification_metrics(labels(test_df, signature), proba)})
    challenger = max(results, key=lambda r: r["valid_roc_auc"])
    champion_auc = None
    champion_metrics = None  # full test metrics of the champion on the same rows (run report)
    champion_version = None
    conn = res.pg()
    try:
        champ = registry.champion(conn)
    finally:
        conn.close()
    incomparable = None  # why a champion exists but cannot be compared on these rows
    if champ is not None:
        champion_version = champ.version
        model, champ_sig = registry.load_verified(champ.artifact_path, champ.artifact_sha256)
        try:
            frame = champ_sig.enforce(test_df)
            champion_proba = model.predict_proba(frame[champ_sig.feature_columns])[:, 1]
            champion_metrics = classification_metrics(labels(test_df, champ_sig), champion_proba)
            champion_auc = champion_metrics["roc_auc"]
        except SignatureMismatch as exc:
            incomparable = f"champion {champ.version} cannot score this data: {exc}"
            log.warning("%s; the gate cannot compare (CHURN_PROMOTE_WITHOUT_COMPARISON=%s)", incomparable,
                        cfg.promote_without_comparison)
    decision = gate(challenger["metrics"]["roc_auc"], champion_auc, cfg.min_roc_auc, cfg.max_auc_drop,
                    challenger_auc_ci_low=challenger["metrics"].get("roc_auc_ci_low"),
                    champion_incomparable=incomparable, allow_incomparable=cfg.promote_without_comparison)
    log.info("gate: challenger %s -> promote=%s (%s)", challenger["name"], decision.promote, decision.reason)
    return _timed(run, "evaluate_and_gate", started, {
        "evaluated": True, "challenger": challenger["name"], "promote": decision.promote, "reason": decision.reason,
        "champion_version": champion_version, "champion_test_roc_auc": champion_auc, "candidates": results,
        "champion_metrics": champion_metrics,
    })


def register(cfg: ChurnConfig, res: Resources, run: dict, splits: dict, evaluation: dict) -> dict:
    """Store every candidate in the registry; move the champion pointer if the gate said so."""
    from churn.model import registry
    from churn.model.features import ModelSignature

    started = time.monotonic()
    train_df = pd.read_parquet(splits["paths"]["train"]) if evaluation["candidates"] else None
    test_df = pd.read_parquet(splits["paths"]["test"]) if evaluation["candidates"] else None
    conn = res.pg()
    try:
        registered = []
        for cand in evaluation["candidates"]:
            # Each training attempt names its own versions (train assigns them): a second retrain of the
            # same date can never rewrite a version readers trust, a re-run of this task finds its rows.
            version = cand.get("version") or registry.version_name(run["run_key"], cand["name"], cand["sha256"][:8])
            is_challenger = cand["name"] == evaluation["challenger"]
            if is_challenger:
                status = "challenger" if evaluation["promote"] else "refused"
                reason = evaluation["reason"]
            else:
                status = "refused"
                reason = f"lower validation ROC AUC than {evaluation['challenger']}"
            existing = registry.find(conn, version)
            if existing is not None:
                # Same attempt registered before (a cleared task): its files and row stay as they are.
                log.info("version %s is already registered (%s); not rewritten", version, existing.status)
                formats, reference_path = existing.formats, str(existing.reference_path)
            else:
                payload = registry.read_verified(cand["path"], cand["sha256"])
                signature = ModelSignature.from_dict(payload["signature"])
                # artifact + reference.parquet (drift stage) + ONNX where convertible, in models_dir/version
                pkg = registry.package(payload["model"], signature, cfg.models_dir, version, train_rows=train_df,
                                       test_rows=test_df, reference_rows=cfg.reference_rows,
                                       onnx_tolerance=cfg.onnx_parity_tolerance, random_state=cfg.random_state)
                registry.register(
                    conn, version=version, run_key=run["run_key"], model_name=cand["name"], status=status,
                    reason=reason, metrics={**cand["metrics"], "valid_roc_auc": cand["valid_roc_auc"]},
                    params={**cand["params"], "fit_seconds": cand["fit_seconds"],
                            "reference_rows": pkg.reference_rows, "onnx": pkg.onnx,
                            "split_counts": splits.get("counts")},
                    signature=signature, artifact_path=pkg.artifact_path, artifact_sha256=pkg.artifact_sha256,
                    data_fingerprint=splits["data_fingerprint"], formats=pkg.formats,
                )
                formats, reference_path = pkg.formats, pkg.reference_path
            # Promote only a challenger that was never champion: a re-run must not bring back a version a
            # later promotion retired.
            promoted = is_challenger and evaluation["promote"]
            if promoted and (existing is None or existing.status == "challenger"):
                registry.promote(conn, version, evaluation["reason"])
            registered.append({"version": version, "status": "champion" if promoted else status, "reason": reason,
                               "test_roc_auc": cand["metrics"]["roc_auc"], "formats": formats,
                               "reference_path": reference_path})
        champ = registry.champion(conn)
    finally:
        conn.close()
    return _timed(run, "register", started, {"registered": registered,
                                             "champion": champ.version if champ else None})


def plan_scoring(cfg: ChurnConfig, res: Resources, run: dict, validated: dict, registered: dict) -> list[dict]:
    """The champion to score with (pinned for every partition) and one reference per hash partition."""
    from churn.model import registry

    conn = res.pg()
    try:
        champ = registry.champion(conn)
    finally:
        conn.close()
    if champ is None:
        raise NoChampionError(
            "no champion model to score with: the first challenger was refused by the gate "
            f"({registered['registered']}); lower CHURN_MIN_ROC_AUC or retrain with more data"
        )
    if cfg.score_partitions < 1:
        raise ConfigError(f"CHURN_SCORE_PARTITIONS={cfg.score_partitions} must be at least 1")
    # The plan pins one model version: a promotion while partitions run cannot mix two models in one batch.
    return [{"partition": p, "partitions": cfg.score_partitions, "features_path": validated["score"]["clean_path"],
             "model_version": champ.version, "artifact_path": champ.artifact_path,
             "artifact_sha256": champ.artifact_sha256, "scored_at": datetime.now(timezone.utc).isoformat()}
            for p in range(cfg.score_partitions)]


def score_partition(cfg: ChurnConfig, res: Resources, run: dict, part: dict) -> dict:
    """Score one hash partition of the scoring snapshot with the planned (verified) champion."""
    import socket

    from churn.model import registry
    from churn.model.score import score_partition as score_one_partition

    started = time.monotonic()
    model, signature = registry.load_verified(part["artifact_path"], part["artifact_sha256"])
    load_seconds = time.monotonic() - started  # imports, hash check and unpickle: a fixed cost per partition
    result = score_one_partition(model, signature, part["features_path"], Path(run["run_dir"]) / "score_parts",
                                 partition=part["partition"], partitions=part["partitions"],
                                 chunk_rows=cfg.score_chunk_rows)
    # Which worker scored it: shown in the run's XCom, and how the Celery test sees both workers at work.
    worker = f"{socket.gethostname()}:{os.environ.get('CHURN_WORKER_NAME') or os.getpid()}"
    return _timed(run, f"score_partition[{part['partition']}]", started, {
        **result.as_dict(), "model_version": part["model_version"], "scored_at": part["scored_at"],
        "worker": worker, "load_seconds": round(load_seconds, 3),
        "rows_per_second": round(result.rows / max(result.inference_seconds, 1e-9), 1)})


def merge_scores(cfg: ChurnConfig, res: Resources, run: dict, parts: list[dict]) -> dict:
    """Global exact deciles over every partition and the run's one score file (what publish reads)."""
    from churn.model.score import PartitionScores, merge_partitions

    started = time.monotonic()
    parts = list(parts)  # Airflow hands a reduce step a lazy sequence
    versions = {p["model_version"] for p in parts}
    if len(versions) != 1:
        raise RuntimeError(f"partitions were scored by different models {sorted(versions)}: clear the run's "
                           "plan_scoring task so every partition is re-scored with one plan")
    fields = PartitionScores.__dataclass_fields__
    result = merge_partitions([PartitionScores(**{k: v for k, v in p.items() if k in fields}) for p in parts],
                              Path(run["run_dir"]) / "scores.parquet", model_version=versions.pop(),
                              run_id=run["run_key"], scored_at=datetime.fromisoformat(parts[0]["scored_at"]),
                              band_cuts=cfg.band_cuts, chunk_rows=cfg.score_chunk_rows)
    return _timed(run, "score", started, {
        "path": result.path, "rows": result.rows, "model_version": parts[0]["model_version"],
        "inference_seconds": round(result.inference_seconds, 3), "other_seconds": round(result.other_seconds, 3),
        "rows_per_second": round(result.rows_per_second, 1), "partitions": len(parts),
        "workers": sorted({p.get("worker", "") for p in parts}),
    })


def score(cfg: ChurnConfig, res: Resources, run: dict, validated: dict, registered: dict) -> dict:
    """Plan, score every partition and merge, in this process (the DAG maps the partitions over workers)."""
    parts = [score_partition(cfg, res, run, part) for part in plan_scoring(cfg, res, run, validated, registered)]
    return merge_scores(cfg, res, run, parts)


def publish_postgres(cfg: ChurnConfig, res: Resources, run: dict, scored: dict) -> dict:
    """COPY into the run's table, then switch ``churn.scores_current`` atomically."""
    from churn.publish.postgres import connect_for_publish, publish_scores

    started = time.monotonic()
    if _dry_run(run):
        return _timed(run, "publish_postgres", started, {"skipped": True, "rows": 0, "is_current": False,
                                                         "table": None, "reason": "dry run: nothing published"})
    conn = connect_for_publish(res.pg, run["run_key"])
    try:
        published = publish_scores(conn, scored["path"], run["run_key"], scored["model_version"],
                                   cfg.score_history_runs, lock_wait_seconds=cfg.publish_lock_wait_seconds)
        reader_role = _reader_role(conn, cfg)
    finally:
        conn.close()
    return _timed(run, "publish_postgres", started, {**published.__dict__, "reader_role": reader_role})


def _reader_role(conn, cfg: ChurnConfig) -> str:
    """Keep the read-only consumer role; a missing privilege is logged with the DBA's fix, not a failed publish."""
    from churn.publish.postgres import ReaderRoleError, ensure_reader_role

    if not cfg.pg_reader_role:
        return "not managed (CHURN_PG_READER_ROLE is empty)"
    try:
        # The password is a secret: only from the environment, never config or XCom.
        ensure_reader_role(conn, cfg.pg_reader_role, os.environ.get("CHURN_PG_READER_PASSWORD") or None)
    except ReaderRoleError as exc:
        # The scores are already switched; failing here would make the retry loop on a grant, not on data.
        log.error("read-only role not updated: %s", exc)
        return f"not updated: {exc}"
    return cfg.pg_reader_role


def publish_redis(cfg: ChurnConfig, res: Resources, run: dict, scored: dict, pg_published: dict) -> dict:
    """Bulk-write the run's scores to Redis, move the marker, delete customers no longer scored."""
    from churn.publish.postgres import connect_for_publish, current_run, stale_customers
    from churn.publish.redis_store import OlderRunRefused, publish_scores

    started = time.monotonic()
    if _dry_run(run):
        return _timed(run, "publish_redis", started, {"skipped": True, "rows": 0,
                                                      "reason": "dry run: nothing published"})
    if not pg_published["is_current"]:
        return _timed(run, "publish_redis", started, {
            "skipped": True, "rows": 0,
            "reason": "a newer run is already served; this (back-filled) run stays in Postgres history only"})
    client = res.redis()
    conn = connect_for_publish(res.pg, run["run_key"])
    try:
        # Asked now, not from the XCom of when publish_postgres ran: a cleared task of an older date
        # must not put yesterday's scores in Redis while Postgres serves today's.
        served_pg = current_run(conn)
        if served_pg != run["run_key"]:
            return _timed(run, "publish_redis", started, {
                "skipped": True, "rows": 0,
                "reason": f"Postgres serves run {served_pg}, not {run['run_key']}: Redis keeps the newer batch"})
        try:
            published = publish_scores(client, scored["path"], run["run_key"], scored["model_version"],
                                       lambda sources: stale_customers(conn, sources, pg_published["table"]),
                                       prefix=cfg.redis_key_prefix, layout=cfg.redis_layout,
                                       buckets=cfg.redis_hash_buckets,
                                       lock_wait_seconds=cfg.publish_lock_wait_seconds,
                                       lock_lease_seconds=cfg.publish_lease_seconds)
        except OlderRunRefused as exc:
            log.warning("%s", exc)
            return _timed(run, "publish_redis", started, {"skipped": True, "rows": 0, "reason": str(exc)})
    finally:
        conn.close()
        client.close()
    return _timed(run, "publish_redis", started, dict(published.__dict__))


def export(cfg: ChurnConfig, res: Resources, run: dict, scored: dict, pg_published: dict,
           validated: dict | None = None) -> dict:
    """Write the configured exports (CSV + manifest each); deliver them over SFTP when the connection exists.

    Customer attributes come from ``src.customers`` for the Postgres source and from the run's clean
    scoring snapshot (``validated['score']['clean_path']``) for a file source.
    """
    from churn.data.spec import load_run_spec
    from churn.publish.files import (SOURCE_ATTRIBUTES_TABLE, ExportRefused, check_published, export_spec,
                                     load_file_attributes, parse_exports)
    from churn.publish.sftp import deliver_files, hook_sftp_factory, sftp_connection_configured, sftp_location

    started = time.monotonic()
    if _dry_run(run):
        return _timed(run, "export", started, {"skipped": True, "rows": 0, "path": None,
                                               "reason": "dry run: nothing exported"})
    spec = load_run_spec(run["run_dir"])
    from_file = spec.source == "file"
    # a config mistake fails before anything is written; a file source has no src.customers to default to
    specs = parse_exports(cfg.exports, cfg.export_band, default_attributes=not from_file)
    if pg_published.get("skipped") or not pg_published.get("table"):
        # Skipped, not emptied: yesterday's complete files stay where the consumer picks them up.
        raise ExportRefused(f"run {run['run_key']}: publish_postgres published nothing "
                            f"({pg_published.get('reason')}); no export is written or delivered")
    table = pg_published["table"].split(".", 1)[1]
    attributes = sorted({c for s in specs for c in s.attributes})
    conn = res.pg()
    try:
        check_published(conn, run["run_key"], table, pg_published["rows"])
        attributes_table = SOURCE_ATTRIBUTES_TABLE
        if from_file and attributes:
            if not validated:
                raise ExportRefused(f"run {run['run_key']}: exports select file columns {attributes} but the "
                                    "export task was given no validated scoring snapshot to read them from")
            attributes_table = load_file_attributes(conn, validated["score"]["clean_path"], spec.id_column,
                                                    attributes, batch_rows=cfg.export_chunk_rows)
        written = [export_spec(conn, export_def, table, cfg.exports_dir, run["run_key"], scored["model_version"],
                               airflow_run_id=run.get("airflow_run_id", ""), chunk_rows=cfg.export_chunk_rows,
                               attributes_table=attributes_table)
                   for export_def in specs]
    finally:
        conn.close()
    remote: list[str] = []
    if sftp_connection_configured(cfg.sftp_conn_id):
        files = [path for w in written for path in (w.path, w.manifest_path)]  # each manifest after its file
        remote = deliver_files(files, cfg.export_remote_dir, hook_sftp_factory(cfg.sftp_conn_id),
                               attempts=cfg.export_upload_attempts, backoff_seconds=cfg.export_retry_seconds)
        delivered_to = sftp_location(cfg.sftp_conn_id, cfg.export_remote_dir)
    else:
        delivered_to = str(cfg.exports_dir)
        log.info("no Airflow connection '%s': exports stay in %s", cfg.sftp_conn_id, delivered_to)
    return _timed(run, "export", started, {
        **written[0].__dict__, "exports": [w.__dict__ for w in written], "delivered_to": delivered_to,
        "delivery": "sftp" if remote else "local", "remote_paths": remote,
    })


def summarize(cfg: ChurnConfig, res: Resources, run: dict, stages: dict) -> dict:
    """Collect the run's figures, read one score back from Redis (timed), store and return the summary."""
    from churn.publish.redis_store import lookup_score

    started = time.monotonic()
    summary: dict[str, Any] = {"run_key": run["run_key"], "airflow_run_id": run["airflow_run_id"]}
    validated = stages["validated"]
    summary["rows_ingested"] = {k: v["rows"] for k, v in stages["ingested"].items() if isinstance(v, dict)}
    summary["rows_validated"] = {k: v["rows_checked"] - v["rows_quarantined"] for k, v in validated.items()
                                 if isinstance(v, dict)}
    summary["rows_quarantined"] = {k: v["rows_quarantined"] for k, v in validated.items() if isinstance(v, dict)}
    evaluation = stages["evaluation"]
    summary["retrained"] = stages["trained"]["retrained"]
    summary["retrain_reason"] = stages["trained"]["reason"]
    summary["candidates"] = [
        {"name": c["name"], "valid_roc_auc": round(c["valid_roc_auc"], 4),
         "test_roc_auc": round(c["metrics"]["roc_auc"], 4)} for c in evaluation.get("candidates", [])
    ]
    summary["gate"] = {"promote": evaluation["promote"], "reason": evaluation["reason"]}
    summary["champion"] = stages["registered"]["champion"]
    champion_auc = next((c["metrics"]["roc_auc"] for c in evaluation.get("candidates", [])
                         if c.get("version") == summary["champion"]), None)
    summary["champion_test_roc_auc"] = champion_auc
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
    conn = res.pg()
    try:
        with conn.cursor() as cur:
            cur.execute(
                "UPDATE churn.pipeline_runs SET status = 'success', finished_at = now(), summary = %s "
                "WHERE run_key = %s", (to_jsonb(summary), run["run_key"]),
            )
        conn.commit()
    finally:
        conn.close()
    log.info("run summary: %s", json.dumps(summary, default=str))
    return _timed(run, "summarize", started, summary)


def report(cfg: ChurnConfig, res: Resources, run: dict, stages: dict, summary: dict) -> dict:
    """Monitoring rows (run metrics, prediction PSI, realized performance), alerts, and <run_dir>/report.html."""
    import os

    from churn import alerts, monitoring
    from churn.report import build_report, write_report

    started = time.monotonic()
    run_dir = Path(run["run_dir"])
    scored = stages.get("scored") or {}
    dry_run = _dry_run(run)
    # summarize's returned "stage_seconds" is its own duration (set by _timed); the per-stage dict is in summary.json.
    summarize_seconds = summary.get("stage_seconds")
    if summary.get("summary_path") and Path(summary["summary_path"]).exists():
        summary = {**json.loads(Path(summary["summary_path"]).read_text()), **{
            k: v for k, v in summary.items() if k != "stage_seconds"}}
    per_stage = summary.get("stage_seconds") if isinstance(summary.get("stage_seconds"), dict) else {}
    if isinstance(summarize_seconds, (int, float)):
        per_stage = {**per_stage, "summarize": summarize_seconds}
    summary = {**summary, "stage_seconds": per_stage}
    conn = res.pg()
    try:
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
    finally:
        conn.close()
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
    return _timed(run, "report", started, {"report_path": path, "report_url": url,
                                           "prediction_psi": metrics.prediction_psi, "realized": realized,
                                           "alerts": breaches})


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


def run_stage(stage: str, *args: Any) -> dict:
    """Entry point for Airflow tasks: config from the environment, clients from Airflow connections."""
    cfg = ChurnConfig.from_env()
    res = Resources.from_airflow(cfg)
    if args and isinstance(args[0], dict) and "run_key" in args[0]:
        cfg = _cfg_for(cfg, args[0])  # per-run overrides from the trigger form apply to every stage
    return globals()[stage](cfg, res, *args)


def start_run_from_airflow() -> dict:
    """``start_run`` for the current Airflow task: as-of date from the run's logical date (or run_after)."""
    from airflow.sdk import get_current_context

    context = get_current_context()
    dag_run = context["dag_run"]
    moment = context.get("logical_date") or dag_run.run_after
    params = dict(context.get("params") or {})
    cfg = ChurnConfig.from_env()
    return start_run(cfg, Resources.from_airflow(cfg), moment.date(), dag_run.run_id, params)
