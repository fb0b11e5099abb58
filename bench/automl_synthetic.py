"""AutoML quality on the synthetic population against its known ceiling (issue 14).

For each population size and seed: generate the demo's source tables (``churn.data.generate``), load them
into an embedded PostgreSQL started here (free loopback port, temporary folder), extract the training
snapshot with the demo's own feature query, split it by the project's id hash, and train the model
stage's candidates exactly as the ``train`` stage does (logistic and HistGradientBoosting defaults, TPOT
on a budget-sized stratified sample with successive halving, refit on all rows). The champion is the
best k-fold ROC AUC (the stage's selection rule). On the test split it records each candidate's ROC AUC,
the champion's, and the **oracle** ROC AUC (the generator's true probabilities, the ceiling), plus the
TPOT search's sample size, pipelines scored and refit time. The median over seeds goes to the JSON file.

    .venv/bin/python -m bench.automl_synthetic --customers 100000 --seeds 5 --budget-minutes 2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg2
from sklearn.metrics import roc_auc_score


from churn.config import ChurnConfig
from churn.data.generate import generate, load_source_tables
from churn.data.ingest import BOOLEAN_FEATURES, CATEGORICAL_FEATURES, NUMERIC_FEATURES, extract_snapshot
from churn.dev.services import EmbeddedServices, ensure_database
from churn.dev.stack import free_port
from churn.model.features import ModelSignature, labels, to_model_input
from churn.model.train import (cv_estimate, fit_baseline, fit_hist_gradient_boosting, fit_tpot, search_sample_size,
                               split_ids)

ROOT = Path(__file__).resolve().parents[1]
AS_OF = date(2026, 11, 20)
WINDOW = 30
log = logging.getLogger("bench.automl_synthetic")


def one_run(conn, customers: int, seed: int, budget: float, cfg: ChurnConfig, work: Path) -> dict:
    """One population and seed: every candidate's and the oracle's test ROC AUC."""
    tables = generate(customers, AS_OF, seed=seed, label_window_days=WINDOW)
    load_source_tables(conn, tables)
    snapshot = pd.read_parquet(extract_snapshot(conn, AS_OF - timedelta(days=WINDOW), work / "train.parquet",
                                                WINDOW).path)
    part = split_ids(snapshot["customer_id"], cfg.splits)
    train, valid, test = (snapshot[part == name].reset_index(drop=True) for name in ("train", "valid", "test"))
    signature = ModelSignature.infer(train, "customer_id", "churned", NUMERIC_FEATURES, BOOLEAN_FEATURES,
                                     CATEGORICAL_FEATURES)
    rows, why = search_sample_size(len(train), budget, cfg.search_rows_per_minute)
    candidates = [fit_baseline(train, valid, signature, seed), fit_hist_gradient_boosting(train, valid, signature, seed)]
    candidates.append(fit_tpot(train, valid, signature, budget_minutes=budget, max_eval_minutes=cfg.max_eval_minutes,
                               search_space=cfg.tpot_search_space, cv=cfg.tpot_cv,
                               population_size=cfg.tpot_population_size, n_jobs=cfg.n_jobs, random_state=seed,
                               progress_seconds=60, search_rows=rows, search_rows_reason=why))
    estimate_rows = pd.concat([train, valid], ignore_index=True)
    y_test = labels(test, signature)
    out: dict = {"customers": customers, "seed": seed, "budget_minutes": budget, "train_rows": len(train),
                 "test_rows": len(test), "test_positives": int(y_test.sum()), "candidates": {}}
    for cand in candidates:
        estimate = cv_estimate(cand.pipeline, estimate_rows, signature, folds=cfg.cv_folds, max_rows=cfg.cv_max_rows,
                               random_state=seed)
        test_auc = roc_auc_score(y_test, cand.pipeline.predict_proba(to_model_input(test, signature))[:, 1])
        out["candidates"][cand.name] = {"test_roc_auc": round(float(test_auc), 4), **estimate,
                                        "fit_seconds": round(cand.fit_seconds, 1)}
        if cand.name == "tpot":
            out["tpot"] = {key: cand.params.get(key) for key in ("search_rows", "train_rows", "pipelines_scored",
                                                                  "generations", "search_seconds", "refit_seconds",
                                                                  "pipeline")}
    champion = max(out["candidates"], key=lambda name: out["candidates"][name]["cv_roc_auc"])
    oracle = tables.oracle.set_index("customer_id").loc[test["customer_id"], "true_probability"]
    out["champion"] = champion
    out["champion_test_roc_auc"] = out["candidates"][champion]["test_roc_auc"]
    out["oracle_test_roc_auc"] = round(float(roc_auc_score(y_test, oracle.to_numpy())), 4)
    out["best_baseline_test_roc_auc"] = max(out["candidates"][n]["test_roc_auc"]
                                            for n in ("logistic_baseline", "hist_gradient_boosting"))
    log.info("customers %s seed %s: %s", customers, seed, json.dumps(out)[:600])
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write bench/results/automl_synthetic.json."""
    cfg = ChurnConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, nargs="+", default=[100_000])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget-minutes", type=float, nargs="+", default=[cfg.train_budget_minutes])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "automl_synthetic.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    started, load_before = time.monotonic(), os.getloadavg()
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-automl-") as tmp:
        services = EmbeddedServices(Path(tmp) / "services", free_port(), free_port())
        services.start()
        try:
            ensure_database(services.pg_url("postgres"), "bench_automl")
            conn = psycopg2.connect(services.pg_url("bench_automl"))
            for customers in args.customers:
                for budget in args.budget_minutes:
                    for seed in range(args.seeds):
                        runs.append(one_run(conn, customers, seed, budget, cfg, Path(tmp)))
            conn.close()
        finally:
            services.stop()
    summary = []
    for customers in args.customers:
        for budget in args.budget_minutes:
            group = [r for r in runs if r["customers"] == customers and r["budget_minutes"] == budget]
            med = {key: round(float(np.median([r[key] for r in group])), 4) for key in
                   ("champion_test_roc_auc", "best_baseline_test_roc_auc", "oracle_test_roc_auc")}
            med.update({f"{name}_test_roc_auc": round(float(np.median([r["candidates"][name]["test_roc_auc"]
                                                                        for r in group])), 4)
                        for name in group[0]["candidates"]})
            med["champion_minus_best_baseline"] = round(med["champion_test_roc_auc"]
                                                        - med["best_baseline_test_roc_auc"], 4)
            med["oracle_minus_champion"] = round(med["oracle_test_roc_auc"] - med["champion_test_roc_auc"], 4)
            med["tpot_pipelines_scored"] = [r.get("tpot", {}).get("pipelines_scored") for r in group]
            med["champions"] = [r["champion"] for r in group]
            summary.append({"customers": customers, "budget_minutes": budget, "seeds": len(group), **med})
    result = {"benchmark": "automl_synthetic", "measured_at": datetime.now(timezone.utc).isoformat(),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "load_avg_1m_before": load_before[0], "load_avg_1m_after": os.getloadavg()[0]},
              "seconds": round(time.monotonic() - started, 1), "summary": summary, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
