"""Quality benchmark: the model stage's champion vs plain baselines on the public Telco churn data.

On ``../shared/datasets/telco_customer_churn.csv`` (relative to the project root), for each seed one
stratified 80/20 split and, for each TPOT budget, measured on the 20 % test part:

* logistic regression and HistGradientBoosting (one-hot + standard scaling), fitted on the 80 %;
* the project's champion: the model stage's own candidates (the logistic and HistGradientBoosting
  defaults and TPOT under the budget, on the project's preprocessing ``churn.model.features``),
  picked by the stage's selection estimate (k-fold here: the data is small). As in the pipeline, the
  validation rows are held out of training: 1/8 of the 80 % (= 10 % of all rows, stratified),
  so the champion's models see less training data than the baselines do.

The JSON file has every run and, per budget, the medians over the seeds (issue 14's target: champion
>= 0.845 with a 2-minute budget).

    .venv/bin/python bench/telco_quality.py                       # 5 seeds x budgets 1, 2, 5 minutes
    .venv/bin/python bench/telco_quality.py --seeds 1 --budget-minutes 1 --out /tmp/quick.json
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
sys.path.insert(0, str(ROOT))

from bench.paired import paired_difference  # noqa: E402

from churn.config import ChurnConfig  # noqa: E402
from churn.model.features import ModelSignature, labels, to_model_input  # noqa: E402
from churn.model.automl import fit_tpot, search_options  # noqa: E402
from churn.model.train import fit_defaults, selection_estimate  # noqa: E402

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


def one_run(frame: pd.DataFrame, seed: int, budget: float, args: argparse.Namespace, defaults: ChurnConfig) -> dict:
    """One seed's stratified 80/20 split and one TPOT budget: the baselines' and the stage's candidates' test AUC."""
    train, test = train_test_split(frame, test_size=0.2, stratify=frame[LABEL], random_state=seed)
    base = baselines(train, test, seed)
    # the model stage: its own split of the 80 % into train / validation, candidates, the stage's selection rule
    fit_part, valid = train_test_split(train, test_size=0.125, stratify=train[LABEL], random_state=seed)
    signature = ModelSignature.infer(fit_part, ID, LABEL, NUMERIC, BOOLEAN, CATEGORICAL)
    candidates = fit_defaults(fit_part, valid, signature, seed)
    cfg = defaults.replace(train_budget_minutes=budget, max_eval_minutes=args.max_eval_minutes,
                           tpot_search_space=args.search_space, tpot_cv=args.cv,
                           tpot_population_size=args.population_size, n_jobs=args.n_jobs, random_state=seed)
    candidates.append(fit_tpot(fit_part, valid, signature, **{**search_options(cfg, len(fit_part)),
                                                              "progress_seconds": 60}))  # the train stage's search
    x_test, y_test = to_model_input(signature.enforce(test), signature), labels(test, signature)
    project = {c.name: {"valid_roc_auc": round(c.valid_roc_auc, 4),
                        **selection_estimate(c.pipeline, fit_part, valid, signature, folds=defaults.cv_folds,
                                             max_rows=defaults.cv_max_rows, random_state=seed),
                        "test_roc_auc": round(float(roc_auc_score(y_test, c.pipeline.predict_proba(x_test)[:, 1])), 4)}
               for c in candidates}
    champion = max(project, key=lambda name: project[name]["cv_roc_auc"])  # as evaluate_and_gate picks it
    best_baseline = max(base, key=base.get)
    tpot = candidates[-1].params
    out = {"seed": seed, "budget_minutes": budget, "baselines_test_roc_auc": {k: round(v, 4) for k, v in base.items()},
           "project_candidates": project, "champion": champion,
           "champion_test_roc_auc": project[champion]["test_roc_auc"], "best_baseline": best_baseline,
           "best_baseline_test_roc_auc": round(base[best_baseline], 4),
           "tpot": {key: tpot.get(key) for key in ("search_seconds", "generations", "pipelines_scored",
                                                   "best_cv_roc_auc", "pipeline", "winner_rule", "finalists",
                                                   "search_trace")}}
    log.info("seed %s budget %s: champion %s %.4f, best baseline %s %.4f", seed, budget, champion,
             out["champion_test_roc_auc"], best_baseline, base[best_baseline])
    return out


def main(argv: list[str] | None = None) -> int:
    """Run every seed and budget and write the JSON result with the medians."""
    defaults = ChurnConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--budget-minutes", type=float, nargs="+", default=[1.0, 2.0, 5.0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--max-eval-minutes", type=float, default=defaults.max_eval_minutes)
    parser.add_argument("--population-size", type=int, default=defaults.tpot_population_size)
    parser.add_argument("--search-space", default=defaults.tpot_search_space)
    parser.add_argument("--cv", type=int, default=defaults.tpot_cv)
    parser.add_argument("--n-jobs", type=int, default=defaults.n_jobs)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "telco_quality.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not args.data.exists():
        raise SystemExit(f"{args.data} not found: the shared datasets live in ../shared/datasets next to the project")
    started, load_before = time.monotonic(), os.getloadavg()
    frame = load(args.data)
    runs = []
    for seed in range(args.seeds):
        for budget in args.budget_minutes:
            runs.append(one_run(frame, seed, budget, args, defaults))
            write(args, frame, runs, started, load_before)
    return 0


def write(args: argparse.Namespace, frame: pd.DataFrame, runs: list[dict], started: float,
          load_before: tuple) -> None:
    """Medians per budget (target: champion >= 0.845 at 2 minutes) and every run, to ``args.out``."""
    summary = []
    for budget in args.budget_minutes:
        group = [r for r in runs if r["budget_minutes"] == budget]
        if not group:
            continue
        med = {"budget_minutes": budget, "seeds": len(group),
               "champion_test_roc_auc": round(float(np.median([r["champion_test_roc_auc"] for r in group])), 4),
               "best_baseline_test_roc_auc": round(float(np.median([r["best_baseline_test_roc_auc"] for r in group])), 4)}
        for name in group[0]["baselines_test_roc_auc"]:
            med[f"baseline_{name}"] = round(float(np.median([r["baselines_test_roc_auc"][name] for r in group])), 4)
        for name in group[0]["project_candidates"]:
            med[f"candidate_{name}"] = round(float(np.median([r["project_candidates"][name]["test_roc_auc"]
                                                               for r in group])), 4)
        med["champions"] = [r["champion"] for r in group]
        med["tpot_pipelines_scored"] = [r["tpot"]["pipelines_scored"] for r in group]
        gain = paired_difference(group, "champion_test_roc_auc", "best_baseline_test_roc_auc")
        med.update({"champion_minus_best_baseline_per_seed": gain["per_seed"],
                    "champion_minus_best_baseline": gain["median"],
                    "champion_minus_best_baseline_unpaired": gain["unpaired"]})
        med["target_0.845"] = med["champion_test_roc_auc"] >= 0.845
        summary.append(med)
    result = {
        "benchmark": "telco_quality",
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": f"python bench/telco_quality.py --seeds {args.seeds} --budget-minutes "
                   + " ".join(f"{b:g}" for b in args.budget_minutes),
        "data": {"path": str(args.data.relative_to(ROOT.parent)) if args.data.is_relative_to(ROOT.parent)
                 else str(args.data), "sha256": hashlib.sha256(args.data.read_bytes()).hexdigest(),
                 "rows": len(frame), "positives": int(frame[LABEL].sum()),
                 "total_charges_blank": int(frame["TotalCharges"].isna().sum())},
        "split": "per seed: stratified 80/20; the stage's candidates fit on 7/8 of the 80 % and select on the rest",
        "search": {"space": args.search_space, "population_size": args.population_size, "cv": args.cv,
                   "max_eval_minutes": args.max_eval_minutes, "n_jobs": args.n_jobs},
        "summary": summary, "runs": runs,
        "machine": {"cpus": os.cpu_count(), "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version()},
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":  # TPOT starts a Dask LocalCluster with worker processes: keep imports side-effect free
    sys.exit(main())
