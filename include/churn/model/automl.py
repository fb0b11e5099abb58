"""The TPOT AutoML search: a budget-sized sample, successive halving, a boosted search space, refit on all rows.

Runs in a child interpreter from the train stage (``churn.model.search``); its progress goes to the task log.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline

from churn.model.features import ModelSignature, build_preprocessor, labels, to_model_input
from churn.model.train import (VALIDATION_MIN_POSITIVES, Candidate, SearchFoundNothing, TrainingError,
                               stratified_sample)
from churn.model.tpot_runtime import SearchProgress, attach_remote_cluster

if TYPE_CHECKING:
    from churn.config import ChurnConfig

log = logging.getLogger(__name__)


SEARCH_MIN_ROWS = 5_000
# Successive halving inside TPOT: the first generation screens pipelines on a quarter of the search sample,
# the survivors and every later generation are scored on all of it; a pipeline whose first folds fall below
# the 30th (rising to the 60th) percentile of the scores seen so far is cut before its remaining folds run.
# Only full-sample scores compete for the win (``full_sample_finalists``): a quarter-sample score is noisier,
# and TPOT's own pick would take a lucky one.
SEARCH_BUDGET_RANGE = [0.25, 1.0]
SEARCH_GENERATIONS_UNTIL_FULL = 1
SEARCH_PRUNING_PERCENTILES = [30, 60]
# Pipelines refitted on every training row after a sampled search, judged on the validation split.
SEARCH_FINALISTS = 3


BOOSTED_SPACE = "churn-boosted"


def churn_search_space(name: str, random_state: int):
    """The TPOT search space for ``name``: our own ``churn-boosted``, else one of TPOT's templates by name.

    ``churn-boosted`` tunes the two model families that win on tabular churn data, on the shared
    preprocessing: scikit-learn's HistGradientBoosting (learning rate, tree size, leaf size, L2, feature
    fraction; up to 1,000 rounds, early stopping picks how many) and an L1/L2 logistic regression. TPOT's ``linear-light``
    has no boosting at all and its stacking slots spend the budget on invalid or slow pipelines;
    both families here convert to PMML.
    """
    if name != BOOSTED_SPACE:
        return name
    from ConfigSpace import Categorical, ConfigurationSpace, Float, Integer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from tpot.search_spaces.nodes import EstimatorNode
    from tpot.search_spaces.pipelines import ChoicePipeline

    boosted = ConfigurationSpace(space={
        "learning_rate": Float("learning_rate", bounds=(0.02, 0.3), log=True),
        # rounds are not tuned: early stopping picks them, on the search sample and again at the refit on all
        # rows (a round count tuned on a sample would underfit the full data)
        "max_iter": 1000,
        "max_leaf_nodes": Integer("max_leaf_nodes", bounds=(4, 64), log=True),
        "min_samples_leaf": Integer("min_samples_leaf", bounds=(10, 400), log=True),
        "l2_regularization": Float("l2_regularization", bounds=(1e-3, 10.0), log=True),
        "max_features": Float("max_features", bounds=(0.3, 1.0)),
        "early_stopping": True, "validation_fraction": 0.1, "n_iter_no_change": 20,
        "random_state": random_state,
    })
    linear = ConfigurationSpace(space={
        "C": Float("C", bounds=(1e-3, 10.0), log=True),
        "penalty": Categorical("penalty", ["l1", "l2"]),
        # liblinear: saga took 106-259 s to refit an L1/L2 winner on 283k rows in the 1M benchmark
        "solver": "liblinear", "max_iter": 2000, "random_state": random_state,
    })
    return ChoicePipeline([EstimatorNode(HistGradientBoostingClassifier, boosted),
                           EstimatorNode(LogisticRegression, linear)])


def search_sample_size(train_rows: int, budget_minutes: float, rows_per_minute: int) -> tuple[int, str]:
    """Rows the TPOT search evaluates pipelines on, sized to its budget, and why (for the train result)."""
    target = max(SEARCH_MIN_ROWS, int(budget_minutes * rows_per_minute))
    if train_rows <= target:
        return train_rows, (f"all {train_rows} training rows: within {budget_minutes:g} min x "
                            f"CHURN_SEARCH_ROWS_PER_MINUTE={rows_per_minute}")
    return target, (f"stratified sample of {target} of {train_rows} training rows: {budget_minutes:g} min of budget "
                    f"x CHURN_SEARCH_ROWS_PER_MINUTE={rows_per_minute} (at least {SEARCH_MIN_ROWS}), so the "
                    "search scores many pipelines; the winner is refitted on every training row")


def search_options(cfg: ChurnConfig, train_rows: int) -> dict:
    """``fit_tpot``'s keyword arguments from the config, the search sample sized for ``train_rows`` included."""
    search_rows, search_reason = search_sample_size(train_rows, cfg.train_budget_minutes, cfg.search_rows_per_minute)
    return {"budget_minutes": cfg.train_budget_minutes, "max_eval_minutes": cfg.max_eval_minutes,
            "search_space": cfg.tpot_search_space, "cv": cfg.tpot_cv, "population_size": cfg.tpot_population_size,
            "n_jobs": cfg.n_jobs, "random_state": cfg.random_state, "dask_scheduler_address": cfg.dask_scheduler_address,
            "progress_seconds": cfg.train_progress_seconds, "search_rows": search_rows,
            "search_rows_reason": search_reason}


def _scored_on_full_sample(evaluated: pd.DataFrame) -> pd.DataFrame:
    """TPOT's evaluated individuals scored on the whole search sample (successive halving's rungs dropped)."""
    if "Budget" not in evaluated:
        return evaluated
    return evaluated[pd.to_numeric(evaluated["Budget"], errors="coerce") >= 1.0]


def search_trace(evaluated: pd.DataFrame, score_column: str, started_at: float) -> list[list[float]]:
    """[seconds since ``started_at``, best score so far] each time a full-sample evaluation set a new best.

    Only rows scored on the whole search sample count (successive halving scores early generations on
    a fraction of it, which is not comparable); this is the search's time-to-quality curve.
    """
    if evaluated is None or score_column not in evaluated or "Completed Timestamp" not in evaluated:
        return []
    frame = _scored_on_full_sample(evaluated)
    scores = pd.to_numeric(frame[score_column], errors="coerce")
    done = pd.to_numeric(frame["Completed Timestamp"], errors="coerce")
    rows = pd.DataFrame({"at": done, "score": scores}).dropna().sort_values("at")
    trace, best = [], -np.inf
    for at, score in rows.itertuples(index=False):
        if score > best:
            best = score
            trace.append([round(float(at - started_at), 1), round(float(score), 5)])
    return trace


def model_family(recipe) -> str:
    """The estimator class a recipe ends in (``HistGradientBoostingClassifier``, ``LogisticRegression``, ...)."""
    final = recipe.steps[-1][1] if isinstance(recipe, Pipeline) else recipe
    return type(final).__name__


def full_sample_finalists(evaluated: pd.DataFrame | None, score_column: str,
                          limit: int = 3) -> tuple[list[tuple[object, float]], int]:
    """Up to ``limit`` distinct unfitted pipelines scored on the full search sample, and how many competed.

    The best pipeline of each model family comes first (best overall leading), then the next best overall:
    a search sample can rank a family high that the full data does not (logistic regression on 20k rows
    of a million-customer population), so the refit compares families on every row.
    """
    if evaluated is None or score_column not in evaluated or "Individual" not in evaluated:
        return [], 0
    frame = _scored_on_full_sample(evaluated)
    scores = pd.to_numeric(frame[score_column], errors="coerce").dropna().sort_values(ascending=False, kind="stable")
    ranked, seen = [], set()
    for index, score in scores.items():
        recipe = frame.loc[index, "Individual"].export_pipeline()
        if repr(recipe) not in seen:  # TPOT re-evaluates identical pipelines bred twice
            seen.add(repr(recipe))
            ranked.append((recipe, float(score)))
    leaders, families = [], set()
    for recipe, score in ranked:
        if model_family(recipe) not in families:
            families.add(model_family(recipe))
            leaders.append((recipe, score))
    chosen = leaders[:limit]  # family leaders first: if refits run out of time, each family was still tried
    chosen += [pick for pick in ranked if all(pick[0] is not c[0] for c in chosen)][:limit - len(chosen)]
    return chosen, int(len(scores))


def choose_finalist(finalists: list[tuple[object, float]], x_train, y_train, x_valid, y_valid,
                    judge_on_validation: bool, refit_budget_seconds: float | None = None) -> tuple[object, list[dict]]:
    """Refit finalists on every training row and keep the best: on the validation split, or by search score.

    ``judge_on_validation`` is for large data searched on a sample: the refitted models' validation ROC
    AUC shows full-data behaviour the sample cannot. Otherwise only the best search score is refitted.
    Once the refits have taken ``refit_budget_seconds``, the finalists not yet refitted are skipped (the
    first always is). Returns the fitted winner and one record per finalist (what it was, its scores,
    its refit time, or why it was skipped).
    """
    records, fitted, started_all = [], [], time.monotonic()
    for recipe, search_score in finalists if judge_on_validation else finalists[:1]:
        record = {"family": model_family(recipe), "search_cv_roc_auc": round(search_score, 5),
                  "pipeline": repr(recipe)[:500]}
        records.append(record)
        spent = time.monotonic() - started_all
        if fitted and refit_budget_seconds is not None and spent >= refit_budget_seconds:
            record["skipped"] = f"refits had taken {spent:.0f} s of their {refit_budget_seconds:.0f} s"
            fitted.append(None)
            continue
        started = time.monotonic()
        model = refit_on_all(recipe, x_train, y_train)
        record["refit_seconds"] = round(time.monotonic() - started, 1)
        if judge_on_validation:
            record["valid_roc_auc"] = round(float(roc_auc_score(y_valid, model.predict_proba(x_valid)[:, 1])), 5)
        log.info("finalist %s (search CV ROC AUC %.4f) refitted in %.1f s, validation ROC AUC %s", record["family"],
                 search_score, record["refit_seconds"], record.get("valid_roc_auc", "not judged"))
        fitted.append(model)
    key = "valid_roc_auc" if judge_on_validation else "search_cv_roc_auc"
    best = max((i for i in range(len(records)) if fitted[i] is not None), key=lambda i: records[i][key])
    records[best]["chosen"] = True
    return fitted[best], records


def refit_on_all(model, x, y):
    """A fresh copy of ``model``'s recipe fitted on every row given (the search's winner saw only its sample)."""
    from sklearn.base import clone

    return clone(model).fit(x, y)


def fit_tpot(
    train: pd.DataFrame,
    valid: pd.DataFrame,
    signature: ModelSignature,
    *,
    budget_minutes: float,
    max_eval_minutes: float,
    search_space: str,
    cv: int,
    population_size: int,
    n_jobs: int,
    random_state: int,
    dask_scheduler_address: str = "",
    progress_seconds: float = 15.0,
    connect_timeout_seconds: float = 30.0,
    search_rows: int | None = None,
    search_rows_reason: str = "",
) -> Candidate:
    """TPOT 1.x search maximizing ROC AUC within the budget, on the shared preprocessing.

    Runs on the Dask cluster at ``dask_scheduler_address`` when given (TPOT then starts
    no cluster of its own), else on a local cluster of ``n_jobs`` worker processes.
    Progress is logged every ``progress_seconds`` and at each generation. The search evaluates
    pipelines on a stratified sample of ``search_rows`` training rows (all when None) with successive
    halving and early pruning of weak pipelines; the winner is then refitted on every training row.
    """
    from tpot import TPOTClassifier  # heavy import, only inside the training task

    if budget_minutes <= 0 or max_eval_minutes <= 0:
        raise TrainingError(
            f"TPOT needs a positive budget and per-pipeline limit, got {budget_minutes} / {max_eval_minutes} min: "
            "fix CHURN_TRAIN_BUDGET_MINUTES / CHURN_MAX_EVAL_MINUTES (or the run's train_budget_minutes)"
        )
    started = time.monotonic()
    prep = build_preprocessor(signature)
    x_train = prep.fit_transform(to_model_input(train, signature))
    y_train = labels(train, signature)
    x_search, y_search = stratified_sample(x_train, y_train, search_rows, random_state)
    client = None
    if dask_scheduler_address:
        from distributed import Client

        try:
            client = Client(dask_scheduler_address, timeout=connect_timeout_seconds)
        except (OSError, TimeoutError) as exc:
            raise TrainingError(
                f"cannot reach the Dask scheduler at {dask_scheduler_address} ({exc}): start it, fix "
                "CHURN_DASK_SCHEDULER_ADDRESS, or unset it to let TPOT start a local cluster"
            ) from exc
        slots = attach_remote_cluster(client)
        log.info("TPOT uses the Dask cluster at %s (%s worker threads)", dask_scheduler_address, slots)
    search = TPOTClassifier(
        search_space=churn_search_space(search_space, random_state),
        scorers=["roc_auc"],
        scorers_weights=[1],
        cv=cv,
        max_time_mins=budget_minutes,
        max_eval_time_mins=max_eval_minutes,
        population_size=population_size,
        n_jobs=n_jobs,
        random_state=random_state,
        verbose=1,  # 1 = tqdm bar only; the readable progress comes from SearchProgress
        client=client,
        budget_range=SEARCH_BUDGET_RANGE,
        generations_until_end_budget=SEARCH_GENERATIONS_UNTIL_FULL,
        threshold_evaluation_pruning=SEARCH_PRUNING_PERCENTILES,
    )
    log.info(
        "TPOT search started: %s rows, %s features, budget %.2f min, per-pipeline limit %.2f min, space %s, %s",
        x_search.shape[0], x_search.shape[1], budget_minutes, max_eval_minutes, search_space,
        f"Dask cluster {dask_scheduler_address}" if client is not None else f"{n_jobs} local workers",
    )
    search_started_at = time.time()  # TPOT stamps evaluations with time.time()
    try:
        with SearchProgress(search, budget_minutes, every_seconds=progress_seconds) as progress:
            try:
                search.fit(x_search, y_search)
            except Exception as exc:  # noqa: BLE001 - TPOT 1.1 raises a plain Exception when nothing finished
                if "No individuals could be evaluated" not in str(exc):
                    raise
                raise SearchFoundNothing(
                    f"TPOT evaluated no pipeline within the budget ({budget_minutes} min, {max_eval_minutes} min "
                    "per pipeline): raise CHURN_TRAIN_BUDGET_MINUTES / CHURN_MAX_EVAL_MINUTES (or the run's "
                    "train_budget_minutes), or give TPOT more workers"
                ) from exc
        state = progress.snapshot() or {}
    finally:
        if client is not None:
            client.close()
    if getattr(search, "fitted_pipeline_", None) is None:
        raise SearchFoundNothing("TPOT found no pipeline within the budget: raise CHURN_TRAIN_BUDGET_MINUTES")
    searched = time.monotonic() - started
    finalists, competed = full_sample_finalists(getattr(search, "evaluated_individuals", None),
                                                search.objective_names[0], SEARCH_FINALISTS)
    x_valid, y_valid = prep.transform(to_model_input(valid, signature)), labels(valid, signature)
    # Large data searched on a sample: the finalists are judged refitted on every row, on the validation split
    # (the stage's own selection rule for such data). Small data: the search's CV on (nearly) all rows decides.
    judge_on_validation = (len(y_search) < 0.5 * len(y_train) and len(finalists) > 1
                           and int(y_valid.sum()) >= VALIDATION_MIN_POSITIVES)
    refit_started = time.monotonic()
    if not finalists:  # nothing scored on the full sample yet (a very short budget): TPOT's own pick
        rule, finalist_records = "TPOT's pick (no pipeline was scored on the full search sample)", []
        winner = refit_on_all(search.fitted_pipeline_, x_train, y_train)
    else:
        # the refits may take about the search budget again (plus the one running when it is spent)
        winner, finalist_records = choose_finalist(finalists, x_train, y_train, x_valid, y_valid, judge_on_validation,
                                                   refit_budget_seconds=budget_minutes * 60)
        rule = (f"best validation ROC AUC of {len(finalists)} finalists (best per model family, then by score, of "
                f"{competed} full-sample scores) refitted on all training rows" if judge_on_validation else
                f"best of {competed} full-sample scores (CV ROC AUC {finalists[0][1]:.4f})")
    refit_seconds = time.monotonic() - refit_started
    log.info("TPOT winner (%s) refitted on all %s training rows; refits took %.1f s", rule, len(y_train),
             refit_seconds)
    pipeline = Pipeline([("prep", prep), ("model", winner)])
    auc = roc_auc_score(y_valid, winner.predict_proba(x_valid)[:, 1])  # = the pipeline's: x_valid is prep's output
    elapsed = time.monotonic() - started
    log.info("TPOT search done in %.0f s: best %s, validation ROC AUC %.4f", elapsed, winner, auc)
    params = {"search_space": search_space, "budget_minutes": budget_minutes, "max_eval_minutes": max_eval_minutes,
              "cv": cv, "population_size": population_size, "random_state": random_state,
              "n_jobs": n_jobs if client is None else None, "dask_scheduler_address": dask_scheduler_address or None,
              "generations": state.get("generation"), "pipelines_scored": state.get("evaluated"),
              "best_cv_roc_auc": state.get("best"), "pipeline": str(winner)[:2000], "winner_rule": rule,
              "search_rows": int(len(y_search)), "search_rows_reason": search_rows_reason or None,
              "train_rows": int(len(y_train)), "search_seconds": round(searched, 1),
              "refit_seconds": round(refit_seconds, 1), "finalists": finalist_records, "successive_halving": {
                  "budget_range": SEARCH_BUDGET_RANGE, "generations_until_full": SEARCH_GENERATIONS_UNTIL_FULL,
                  "pruning_percentiles": SEARCH_PRUNING_PERCENTILES},
              "search_trace": search_trace(getattr(search, "evaluated_individuals", None),
                                           search.objective_names[0], search_started_at)}
    return Candidate("tpot", pipeline, float(auc), elapsed, params)
