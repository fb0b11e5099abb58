"""AutoML quality on the synthetic population against its known ceiling (issue 14).

For each population size and seed: generate the demo's source tables (``churn.data.generate``), load them
into an embedded PostgreSQL started here (free loopback port, temporary folder), extract the training
snapshot with the demo's own feature query, split it by the project's id hash, and train the model
stage's candidates exactly as the ``train`` stage does (logistic and HistGradientBoosting defaults, TPOT
on a budget-sized stratified sample with successive halving, refit on all rows). The champion is the
best selection estimate (the stage's rule: k-fold on small data, the validation split on large data). On the test split it records each candidate's ROC AUC,
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
from sklearn.base import clone
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_score


from bench.paired import paired_difference
from churn.config import ChurnConfig
from churn.data.generate import generate, load_source_tables
from churn.data.ingest import BOOLEAN_FEATURES, CATEGORICAL_FEATURES, NUMERIC_FEATURES, extract_snapshot
from churn.dev.services import EmbeddedServices, ensure_database
from churn.dev.stack import free_port
from churn.model.features import ModelSignature, build_preprocessor, labels, to_model_input
from churn.model.automl import fit_tpot, search_options
from churn.model.train import fit_defaults, selection_estimate, split_ids, stratified_sample

ROOT = Path(__file__).resolve().parents[1]
AS_OF = date(2026, 11, 20)
WINDOW = 30
log = logging.getLogger("bench.automl_synthetic")


def prepare(conn, customers: int, seed: int, cfg: ChurnConfig, work: Path) -> dict:
    """One population and seed: the split snapshot, the oracle, and the two defaults with their estimates."""
    tables = generate(customers, AS_OF, seed=seed, label_window_days=WINDOW)
    load_source_tables(conn, tables)
    snapshot = pd.read_parquet(extract_snapshot(conn, AS_OF - timedelta(days=WINDOW), work / "train.parquet",
                                                WINDOW).path)
    part = split_ids(snapshot["customer_id"], cfg.splits)
    train, valid, test = (snapshot[part == name].reset_index(drop=True) for name in ("train", "valid", "test"))
    signature = ModelSignature.infer(train, "customer_id", "churned", NUMERIC_FEATURES, BOOLEAN_FEATURES,
                                     CATEGORICAL_FEATURES)
    defaults = fit_defaults(train, valid, signature, seed)
    y_test = labels(test, signature)
    oracle = tables.oracle.set_index("customer_id").loc[test["customer_id"], "true_probability"]
    return {"train": train, "valid": valid, "test": test, "signature": signature, "y_test": y_test,
            "defaults": [(cand, score(cand, train, valid, test, signature, cfg, seed)) for cand in defaults],
            "oracle_test_roc_auc": round(float(roc_auc_score(y_test, oracle.to_numpy())), 4)}


def score(cand, train, valid, test, signature, cfg: ChurnConfig, seed: int) -> dict:
    """A candidate's selection estimate (the train stage's) and its test ROC AUC."""
    estimate = selection_estimate(cand.pipeline, train, valid, signature, folds=cfg.cv_folds,
                                  max_rows=cfg.cv_max_rows, random_state=seed)
    test_auc = roc_auc_score(labels(test, signature), cand.pipeline.predict_proba(to_model_input(test, signature))[:, 1])
    return {"test_roc_auc": round(float(test_auc), 4), **estimate, "fit_seconds": round(cand.fit_seconds, 1)}


def defaults_on_search_sample(prepared: dict, rows: int, cfg: ChurnConfig, seed: int) -> float:
    """Best default's ROC AUC on TPOT's own search sample and folds: the bar for time-to-quality."""
    signature, train = prepared["signature"], prepared["train"]
    x = build_preprocessor(signature).fit_transform(to_model_input(train, signature))
    x_search, y_search = stratified_sample(x, labels(train, signature), rows, seed)
    folds = StratifiedKFold(cfg.tpot_cv, shuffle=True, random_state=seed)  # what TPOT builds from cv=int
    return max(float(np.mean(cross_val_score(clone(cand.pipeline.named_steps["model"]), x_search, y_search,
                                             cv=folds, scoring="roc_auc")))
               for cand, _ in prepared["defaults"])


def one_run(prepared: dict, customers: int, seed: int, budget: float, cfg: ChurnConfig) -> dict:
    """One budget on a prepared population: every candidate's, the champion's and the oracle's test ROC AUC."""
    train, valid, test, signature = (prepared[k] for k in ("train", "valid", "test", "signature"))
    options = search_options(cfg.replace(train_budget_minutes=budget, random_state=seed), len(train))
    tpot = fit_tpot(train, valid, signature, **{**options, "progress_seconds": 60})  # the train stage's search
    rows = options["search_rows"]
    out: dict = {"customers": customers, "seed": seed, "budget_minutes": budget, "train_rows": len(train),
                 "test_rows": len(test), "test_positives": int(prepared["y_test"].sum()),
                 "candidates": {cand.name: scores for cand, scores in prepared["defaults"]}}
    out["candidates"]["tpot"] = score(tpot, train, valid, test, signature, cfg, seed)
    out["tpot"] = {key: tpot.params.get(key) for key in ("search_rows", "train_rows", "pipelines_scored",
                                                         "generations", "search_seconds", "refit_seconds",
                                                         "pipeline", "winner_rule", "finalists",
                                                         "search_trace")}
    bar = defaults_on_search_sample(prepared, rows, cfg, seed)
    beaten = [at for at, best in tpot.params["search_trace"] if best > bar]
    out["tpot"]["best_default_on_search_sample"] = round(bar, 5)
    out["tpot"]["seconds_to_beat_best_default"] = beaten[0] if beaten else None
    champion = max(out["candidates"], key=lambda name: out["candidates"][name]["cv_roc_auc"])
    out["champion"] = champion
    out["champion_test_roc_auc"] = out["candidates"][champion]["test_roc_auc"]
    out["oracle_test_roc_auc"] = prepared["oracle_test_roc_auc"]
    out["best_baseline_test_roc_auc"] = max(out["candidates"][n]["test_roc_auc"]
                                            for n in ("logistic_baseline", "hist_gradient_boosting"))
    log.info("customers %s seed %s budget %s: %s", customers, seed, budget,
             json.dumps({k: v for k, v in out.items() if k != "tpot"})[:800])
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write bench/results/automl_synthetic.json."""
    cfg = ChurnConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, nargs="+", default=[100_000])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget-minutes", type=float, nargs="+", default=[cfg.train_budget_minutes])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "automl_synthetic.json")
    parser.add_argument("--summarize-only", action="store_true",
                        help="recompute the summary of the runs already in --out (no measuring)")
    args = parser.parse_args(argv)
    if args.summarize_only:
        result = json.loads(args.out.read_text())
        runs = result["runs"]
        result["summary"] = summarize(runs, sorted({r["customers"] for r in runs}),
                                      sorted({r["budget_minutes"] for r in runs}))
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(json.dumps(result["summary"], indent=2))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    started, load_before = time.monotonic(), os.getloadavg()
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-automl-") as tmp:
        services = EmbeddedServices(Path(tmp) / "services", free_port(), free_port())
        services.start()
        try:
            ensure_database(services.pg_url("postgres"), "bench_automl")
            conn = psycopg2.connect(services.pg_url("bench_automl"))
            # seed-major, so a run cut short still has the same seeds for every population size
            for seed in range(args.seeds):
                for customers in args.customers:
                    # the population, the defaults and their estimates do not depend on the budget
                    prepared = prepare(conn, customers, seed, cfg, Path(tmp))
                    for budget in args.budget_minutes:
                        runs.append(one_run(prepared, customers, seed, budget, cfg))
                    # written after every population: a long run that is cut short keeps what it measured
                    write_result(args, runs, started, load_before)
            conn.close()
        finally:
            services.stop()
    summary = write_result(args, runs, started, load_before)
    print(json.dumps(summary, indent=2))
    return 0


def write_result(args: argparse.Namespace, runs: list[dict], started: float, load_before: tuple) -> list[dict]:
    """Medians per population size and budget, with the issue's targets checked, written to ``args.out``."""
    summary = summarize(runs, args.customers, args.budget_minutes)
    result = {"benchmark": "automl_synthetic", "measured_at": datetime.now(timezone.utc).isoformat(),
              "command": "python -m bench.automl_synthetic " + " ".join(
                  [f"--customers {' '.join(map(str, args.customers))}", f"--seeds {args.seeds}",
                   f"--budget-minutes {' '.join(f'{b:g}' for b in args.budget_minutes)}"]),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "load_avg_1m_before": load_before[0], "load_avg_1m_after": os.getloadavg()[0]},
              "seconds": round(time.monotonic() - started, 1), "summary": summary, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return summary


def summarize(runs: list[dict], populations: list[int], budgets: list[float]) -> list[dict]:
    """Per population size and budget: medians over seeds and the issue's targets.

    The targets are checked on **paired** medians (per seed, champion minus best default and oracle minus
    champion on that seed's test split, then the median): a seed's test split is easier or harder for every
    model alike (100k customers: ~170 test positives), and a difference of unpaired medians mixes seeds.
    The unpaired difference is reported too.
    """
    summary = []
    for customers in populations:
        for budget in budgets:
            group = [r for r in runs if r["customers"] == customers and r["budget_minutes"] == budget]
            if not group:
                continue
            med = {key: round(float(np.median([r[key] for r in group])), 4) for key in
                   ("champion_test_roc_auc", "best_baseline_test_roc_auc", "oracle_test_roc_auc")}
            med.update({f"{name}_test_roc_auc": round(float(np.median([r["candidates"][name]["test_roc_auc"]
                                                                        for r in group])), 4)
                        for name in group[0]["candidates"]})
            gain = paired_difference(group, "champion_test_roc_auc", "best_baseline_test_roc_auc")
            gap = paired_difference(group, "oracle_test_roc_auc", "champion_test_roc_auc")
            med["champion_minus_best_baseline_per_seed"] = gain["per_seed"]
            med["champion_minus_best_baseline"] = gain["median"]
            med["champion_minus_best_baseline_unpaired"] = gain["unpaired"]
            med["oracle_minus_champion_per_seed"] = gap["per_seed"]
            med["oracle_minus_champion"] = gap["median"]
            scored = [r["tpot"]["pipelines_scored"] or 0 for r in group]
            to_beat = [r["tpot"]["seconds_to_beat_best_default"] for r in group]
            med["tpot_pipelines_scored"] = scored
            med["tpot_search_rows"] = group[0]["tpot"]["search_rows"]
            med["tpot_seconds_to_beat_best_default"] = to_beat
            med["champions"] = [r["champion"] for r in group]
            med["targets"] = {
                "champion >= best baseline + 0.005 (paired median)": med["champion_minus_best_baseline"] >= 0.005,
                "champion within 0.01 of the oracle (paired median)": med["oracle_minus_champion"] <= 0.01,
                ">= 30 pipelines scored (median)": float(np.median(scored)) >= 30,
            }
            summary.append({"customers": customers, "budget_minutes": budget, "seeds": len(group), **med})
    return summary

if __name__ == "__main__":
    raise SystemExit(main())
