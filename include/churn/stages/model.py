"""Model stages: the retrain decision, training (baseline + TPOT in a child interpreter), the gate, the registry."""

from __future__ import annotations

import logging
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd

from churn.config import ChurnConfig
from churn.connections import Resources
from churn.stages.common import cfg_for, timed
from churn.stages.results import Candidate, DriftResult, GateResult, RegisterResult, SplitResult, TrainResult, parse

log = logging.getLogger(__name__)


def retrain_decision(cfg: ChurnConfig, res: Resources, run: dict, drift: dict | None = None) -> tuple[bool, str]:
    """Retrain when forced, without a champion, on feature drift above the threshold, or when the champion is old."""
    from churn.model import registry

    if run.get("params", {}).get("retrain"):
        return True, "retrain requested by the trigger"
    with res.pg_session() as conn:
        champ = registry.champion(conn)
        if champ is None:
            return True, "no champion yet"
        report = parse(DriftResult, drift) if drift else None
        if report is not None and report.computed and report.drifted:
            return True, (f"feature drift vs {report.reference_version}: PSI of {report.max_psi_feature} is "
                          f"{report.max_psi} > CHURN_DRIFT_PSI_THRESHOLD={cfg.drift_psi_threshold} "
                          f"({len(report.drifted)} feature(s) drifted)")
        with conn.cursor() as cur:
            cur.execute("SELECT created_at FROM churn.model_registry WHERE version = %s", (champ.version,))
            created = cur.fetchone()[0]
        conn.commit()
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

    with res.pg_session() as conn:
        return realized_retrain_trigger(conn, cfg, champion_version)


def train(cfg: ChurnConfig, res: Resources, run: dict, splits: dict, drift: dict | None = None) -> dict:
    """Fit the defaults (logistic, HistGradientBoosting) and the TPOT search, each with a k-fold estimate (if retraining)."""
    import joblib

    from churn.data.spec import load_run_spec
    from churn.model.features import ModelSignature
    from churn.model.registry import file_sha256, version_name
    from churn.model.automl import search_options
    from churn.model.search import run_search
    from churn.model.train import SearchFoundNothing, fit_defaults, selection_estimate

    started = time.monotonic()
    cfg = cfg_for(cfg, run)
    retrain, why = retrain_decision(cfg, res, run, drift)
    if not retrain:
        log.info("not retraining: %s", why)
        return timed(run, "train", started, TrainResult(retrained=False, reason=why).as_dict())
    split_files = parse(SplitResult, splits).paths
    train_df = pd.read_parquet(split_files["train"])
    valid_df = pd.read_parquet(split_files["valid"])
    spec = load_run_spec(run["run_dir"])  # the dataset's columns and kinds, whatever the source
    signature = ModelSignature.infer(train_df, spec.id_column, spec.label_column, spec.numeric, spec.boolean,
                                     spec.categorical)
    # The defaults are trained every time: the champion is never below the best of them on the selection figure.
    candidates = fit_defaults(train_df, valid_df, signature, cfg.random_state)
    tpot_error = None
    if not cfg.train_tpot:
        log.info("CHURN_TRAIN_TPOT=false: baseline only, no TPOT search")
    else:
        options = search_options(cfg, len(train_df))
        log.info("TPOT search rows: %s", options["search_rows_reason"])
        try:
            # In a child interpreter: TPOT's Dask processes cannot start inside an executor's task process.
            candidates.append(run_search({
                "train_path": split_files["train"], "valid_path": split_files["valid"],
                "signature": signature.as_dict(), "fit": options,
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
        # One selection figure for every candidate, on the same rows: k-fold on small data (the recipe refitted
        # per fold), the validation split for the models fitted on every row on large data.
        estimate = selection_estimate(cand.pipeline, train_df, valid_df, signature, folds=cfg.cv_folds,
                                      max_rows=cfg.cv_max_rows, random_state=cfg.random_state)
        log.info("%s: selection ROC AUC %.4f ± %.4f (%s)", cand.name, estimate["cv_roc_auc"],
                 estimate["cv_roc_auc_std"], estimate["estimate"])
        path = out_dir / f"{cand.name}.joblib"
        joblib.dump({"model": cand.pipeline, "signature": signature.as_dict()}, path)
        # The hash travels with the reference: evaluate and register unpickle only these bytes.
        described.append(Candidate(name=cand.name, version=version_name(run["run_key"], cand.name, attempt),
                                   path=str(path), sha256=file_sha256(path), valid_roc_auc=cand.valid_roc_auc,
                                   fit_seconds=round(cand.fit_seconds, 2), params=cand.params,
                                   **estimate).as_dict())
    return timed(run, "train", started, TrainResult(retrained=True, reason=why, attempt=attempt,
                                                    candidates=described, tpot_error=tpot_error).as_dict())


def evaluate_and_gate(cfg: ChurnConfig, res: Resources, run: dict, splits: dict, trained: dict) -> dict:
    """Test-split metrics for every candidate and the champion on the same rows; gate the best challenger."""
    from churn.model import registry
    from churn.model.evaluate import classification_metrics, gate
    from churn.model.features import ModelSignature, SignatureMismatch, labels, to_model_input

    started = time.monotonic()
    training = TrainResult.from_dict(trained)
    if not training.retrained:
        return timed(run, "evaluate_and_gate", started,
                     GateResult(evaluated=False, promote=False, reason=training.reason).as_dict())
    test_df = pd.read_parquet(parse(SplitResult, splits).paths["test"])
    results = []
    for cand in map(Candidate.from_dict, training.candidates):
        payload = registry.read_verified(cand.path, cand.sha256)  # as the train task wrote it
        signature = ModelSignature.from_dict(payload["signature"])
        proba = payload["model"].predict_proba(to_model_input(test_df, signature))[:, 1]
        cand.metrics = classification_metrics(labels(test_df, signature), proba)
        results.append(cand)
    # The selection estimate selects (k-fold on small data, the validation split on large data); older results
    # without it fall back to the validation ROC AUC.
    challenger = max(results, key=lambda c: c.cv_roc_auc if c.cv_roc_auc is not None else c.valid_roc_auc)
    champion_auc = None
    champion_metrics = None  # full test metrics of the champion on the same rows (run report)
    champion_version = None
    with res.pg_session() as conn:
        champ = registry.champion(conn)
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
    decision = gate(challenger.metrics["roc_auc"], champion_auc, cfg.min_roc_auc, cfg.max_auc_drop,
                    challenger_auc_ci_low=challenger.metrics.get("roc_auc_ci_low"),
                    champion_incomparable=incomparable, allow_incomparable=cfg.promote_without_comparison)
    log.info("gate: challenger %s -> promote=%s (%s)", challenger.name, decision.promote, decision.reason)
    return timed(run, "evaluate_and_gate", started, GateResult(
        evaluated=True, challenger=challenger.name, promote=decision.promote, reason=decision.reason,
        champion_version=champion_version, champion_test_roc_auc=champion_auc,
        candidates=[c.as_dict() for c in results], champion_metrics=champion_metrics,
    ).as_dict())


def register(cfg: ChurnConfig, res: Resources, run: dict, splits: dict, evaluation: dict) -> dict:
    """Store every candidate in the registry; move the champion pointer if the gate said so."""
    from churn.model import registry
    from churn.model.features import ModelSignature

    started = time.monotonic()
    decision = GateResult.from_dict(evaluation)
    split = parse(SplitResult, splits)
    train_df = pd.read_parquet(split.paths["train"]) if decision.candidates else None
    test_df = pd.read_parquet(split.paths["test"]) if decision.candidates else None
    with res.pg_session() as conn:
        registered = []
        for cand in map(Candidate.from_dict, decision.candidates):
            # Each training attempt names its own versions (train assigns them): a second retrain of the
            # same date can never rewrite a version readers trust, a re-run of this task finds its rows.
            version = cand.version or registry.version_name(run["run_key"], cand.name, cand.sha256[:8])
            is_challenger = cand.name == decision.challenger
            if is_challenger:
                status = "challenger" if decision.promote else "refused"
                reason = decision.reason
            else:
                status = "refused"
                figure = "selection" if cand.cv_roc_auc is not None else "validation"
                reason = f"lower {figure} ROC AUC than {decision.challenger}"
            existing = registry.find(conn, version)
            if existing is not None:
                # Same attempt registered before (a cleared task): its files and row stay as they are.
                log.info("version %s is already registered (%s); not rewritten", version, existing.status)
                formats, reference_path = existing.formats, str(existing.reference_path)
            else:
                payload = registry.read_verified(cand.path, cand.sha256)
                signature = ModelSignature.from_dict(payload["signature"])
                # artifact + reference.parquet (drift stage) + ONNX and PMML where convertible, in models_dir/version
                pkg = registry.package(payload["model"], signature, cfg.models_dir, version, train_rows=train_df,
                                       test_rows=test_df, reference_rows=cfg.reference_rows,
                                       onnx_tolerance=cfg.onnx_parity_tolerance, pmml=cfg.export_pmml,
                                       pmml_tolerance=cfg.pmml_parity_tolerance, random_state=cfg.random_state)
                registry.register(
                    conn, version=version, run_key=run["run_key"], model_name=cand.name, status=status,
                    reason=reason, metrics={**cand.metrics, "valid_roc_auc": cand.valid_roc_auc},
                    params={**cand.params, "fit_seconds": cand.fit_seconds,
                            "reference_rows": pkg.reference_rows, "onnx": pkg.onnx, "pmml": pkg.pmml,
                            "split_counts": splits.get("counts")},
                    signature=signature, artifact_path=pkg.artifact_path, artifact_sha256=pkg.artifact_sha256,
                    data_fingerprint=split.data_fingerprint, formats=pkg.formats,
                )
                formats, reference_path = pkg.formats, pkg.reference_path
            # Promote only a challenger that was never champion: a re-run must not bring back a version a
            # later promotion retired.
            promoted = is_challenger and decision.promote
            if promoted and (existing is None or existing.status == "challenger"):
                registry.promote(conn, version, decision.reason, kind="gate",
                                 actor=f"churn_nightly gate (run {run['run_key']})")
            registered.append({"version": version, "status": "champion" if promoted else status, "reason": reason,
                               "test_roc_auc": cand.metrics["roc_auc"], "formats": formats,
                               "reference_path": reference_path})
        champ = registry.champion(conn)
    return timed(run, "register", started,
                 RegisterResult(registered=registered, champion=champ.version if champ else None).as_dict())
