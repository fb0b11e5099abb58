"""Quality benchmark: the model stage's champion vs plain baselines on the public Telco churn data.

On ``../shared/datasets/telco_customer_churn.csv`` (relative to the project root), one
stratified 80/20 split; in the same run it measures on the 20 % test part:

* logistic regression and HistGradientBoosting (one-hot + standard scaling), fitted on the 80 %;
* the project's champion: the model stage's own candidates (the logistic and HistGradientBoosting
  defaults and TPOT under the budget, on the project's preprocessing ``churn.model.features``),
  picked by the same k-fold ROC AUC estimate ``evaluate_and_gate`` uses. As in the pipeline, the
  validation rows are held out of training: 1/8 of the 80 % (= 10 % of all rows, stratified),
  so the champion's models see less training data than the baselines do.

It records the test ROC AUCs and whether champion >= max(baselines) in a JSON file.

    .venv/bin/python bench/telco_quality.py                # 5-minute TPOT budget (--budget-minutes 2: issue 14)
    .venv/bin/python bench/telco_quality.py --budget-minutes 1 --out /tmp/quick.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))

from churn.config import ChurnConfig  # noqa: E402
from churn.model.features import ModelSignature, labels, to_model_input  # noqa: E402
from churn.model.automl import fit_tpot  # noqa: E402
from churn.model.train import cv_estimate, fit_baseline, fit_hist_gradient_boosting  # noqa: E402

log = logging.getLogger("bench.telco_quality")

DATA = ROOT.parent / "shared" / "datasets" / "telco_customer_churn.csv"
ID, LABEL = "customerID", "Churn"
NUMERIC = ["tenure", "MonthlyCharges", "TotalCharges"]
BOOLEAN = ["SeniorCitizen", "Partner", "Dependents", "PhoneService", "PaperlessBilling"]
CATEGORICAL = ["gender", "MultipleLines", "InternetService", "OnlineSecurity", "OnlineBackup", "DeviceProtection",
               "TechSupport", "StreamingTV", "StreamingMovies", "Contract", "PaymentMethod"]


def load(path: Path) -> pd.DataFrame:
    """The CSV with its documented dirt handled: blank TotalCharges -> NaN, Yes/No and 0/1 -> booleans."""
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame = pd.DataFrame({ID: raw[ID]})
    for column in NUMERIC:
        # TotalCharges is " " for 11 tenure-0 customers: missing, imputed inside the models
        frame[column] = pd.to_numeric(raw[column].str.strip().replace("", np.nan), errors="raise")
    for column in BOOLEAN:
        values = raw[column].str.strip()
        mapped = values.map({"Yes": True, "No": False, "1": True, "0": False})
        if mapped.isna().any():
            raise ValueError(f"{column} has values other than Yes/No/1/0: {sorted(set(values[mapped.isna()]))}")
        frame[column] = mapped.astype(bool)
    for column in CATEGORICAL:
        frame[column] = raw[column].str.strip()
    frame[LABEL] = raw[LABEL].str.strip().map({"Yes": 1, "No": 0}).astype("int8")
    return frame


def baseline_pipeline(model) -> Pipeline:
    """One-hot + standard scaling (the dataset README's reference setup), median imputation for blanks."""
    prep = ColumnTransformer([
        ("num", Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]),
         NUMERIC + BOOLEAN),
        ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), CATEGORICAL),
    ])
    return Pipeline([("prep", prep), ("model", model)])


def baselines(train: pd.DataFrame, test: pd.DataFrame, seed: int) -> dict[str, float]:
    """Test ROC AUC of logistic regression and HistGradientBoosting fitted on ``train``."""
    x_train, x_test = train[NUMERIC + BOOLEAN + CATEGORICAL], test[NUMERIC + BOOLEAN + CATEGORICAL]
    out = {}
    for name, model in (("logistic_regression", LogisticRegression(max_iter=2000)),
                        ("hist_gradient_boosting", HistGradientBoostingClassifier(random_state=seed))):
        fitted = baseline_pipeline(model).fit(x_train, train[LABEL])
        out[name] = float(roc_auc_score(test[LABEL], fitted.predict_proba(x_test)[:, 1]))
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark once and write the JSON result."""
    defaults = ChurnConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--budget-minutes", type=float, default=5.0)
    parser.add_argument("--max-eval-minutes", type=float, default=defaults.max_eval_minutes)
    parser.add_argument("--population-size", type=int, default=defaults.tpot_population_size)
    parser.add_argument("--search-space", default=defaults.tpot_search_space)
    parser.add_argument("--cv", type=int, default=defaults.tpot_cv)
    parser.add_argument("--n-jobs", type=int, default=defaults.n_jobs)
    parser.add_argument("--seed", type=int, default=defaults.random_state)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "telco_quality.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not args.data.exists():
        raise SystemExit(f"{args.data} not found: the shared datasets live in ../shared/datasets next to the project")

    started = time.monotonic()
    load_before = os.getloadavg()
    frame = load(args.data)
    train, test = train_test_split(frame, test_size=0.2, stratify=frame[LABEL], random_state=args.seed)
    base = baselines(train, test, args.seed)
    # context: the dataset README's figures are means over 5 seeds; the same here, baselines only
    seeds = {name: [] for name in base}
    for seed in range(5):
        tr, te = train_test_split(frame, test_size=0.2, stratify=frame[LABEL], random_state=seed)
        for name, auc in baselines(tr, te, seed).items():
            seeds[name].append(auc)

    # the model stage: its own split of the 80 % into train / validation, candidates, choice by validation
    fit_part, valid = train_test_split(train, test_size=0.125, stratify=train[LABEL], random_state=args.seed)
    signature = ModelSignature.infer(fit_part, ID, LABEL, NUMERIC, BOOLEAN, CATEGORICAL)
    candidates = [fit_baseline(fit_part, valid, signature, args.seed),
                  fit_hist_gradient_boosting(fit_part, valid, signature, args.seed)]
    tpot_started = time.monotonic()
    candidates.append(fit_tpot(
        fit_part, valid, signature, budget_minutes=args.budget_minutes, max_eval_minutes=args.max_eval_minutes,
        search_space=args.search_space, cv=args.cv, population_size=args.population_size, n_jobs=args.n_jobs,
        random_state=args.seed,
    ))
    tpot_seconds = time.monotonic() - tpot_started
    x_test, y_test = to_model_input(signature.enforce(test), signature), labels(test, signature)
    # the stage's selection figure: the same k-fold estimate of every candidate's recipe on train + validation
    estimate_rows = pd.concat([fit_part, valid], ignore_index=True)
    project = {c.name: {"valid_roc_auc": c.valid_roc_auc,
                        **cv_estimate(c.pipeline, estimate_rows, signature, folds=defaults.cv_folds,
                                      max_rows=defaults.cv_max_rows, random_state=args.seed),
                        "test_roc_auc": float(roc_auc_score(y_test, c.pipeline.predict_proba(x_test)[:, 1]))}
               for c in candidates}
    champion = max(project, key=lambda name: project[name]["cv_roc_auc"])  # as evaluate_and_gate picks it
    best_baseline = max(base, key=base.get)
    result = {
        "benchmark": "telco_quality",
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": {"path": str(args.data.relative_to(ROOT.parent)) if args.data.is_relative_to(ROOT.parent)
                 else str(args.data), "sha256": hashlib.sha256(args.data.read_bytes()).hexdigest(),
                 "rows": len(frame), "positives": int(frame[LABEL].sum()),
                 "total_charges_blank": int(frame["TotalCharges"].isna().sum())},
        "split": {"kind": "stratified 80/20", "seed": args.seed, "train_rows": len(train), "test_rows": len(test),
                  "champion_fit_rows": len(fit_part), "champion_valid_rows": len(valid)},
        "baselines_test_roc_auc": base,
        "baselines_5_seed_mean_roc_auc": {k: float(np.mean(v)) for k, v in seeds.items()},
        "project_candidates": project,
        "champion": champion,
        "champion_test_roc_auc": project[champion]["test_roc_auc"],
        "best_baseline": best_baseline,
        "best_baseline_test_roc_auc": base[best_baseline],
        "champion_minus_best_baseline": project[champion]["test_roc_auc"] - base[best_baseline],
        "champion_ge_best_baseline": project[champion]["test_roc_auc"] >= base[best_baseline],
        "tpot": {"budget_minutes": args.budget_minutes, "max_eval_minutes": args.max_eval_minutes,
                 "search_space": args.search_space, "population_size": args.population_size, "cv": args.cv,
                 "n_jobs": args.n_jobs, "seconds": round(tpot_seconds, 1),
                 "generations": candidates[-1].params.get("generations"),
                 "pipelines_scored": candidates[-1].params.get("pipelines_scored"),
                 "best_cv_roc_auc": candidates[-1].params.get("best_cv_roc_auc"),
                 "pipeline": candidates[-1].params.get("pipeline")},
        "machine": {"cpus": os.cpu_count(), "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version(),
                    "note": "2 shared cores; other engineers' jobs were running at the same time"},
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log.info("champion %s test ROC AUC %.4f vs best baseline %s %.4f -> %s; written to %s", champion,
             result["champion_test_roc_auc"], best_baseline, base[best_baseline],
             "OK" if result["champion_ge_best_baseline"] else "BELOW", args.out)
    return 0


if __name__ == "__main__":  # TPOT starts a Dask LocalCluster with worker processes: keep imports side-effect free
    sys.exit(main())
