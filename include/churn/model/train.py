"""Deterministic id-keyed split and candidate training: TPOT AutoML plus a logistic baseline."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline

from churn.model.features import ModelSignature, build_preprocessor, labels, to_model_input

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training could not produce a usable model; the message says what to change."""


def split_ids(ids: pd.Series, fractions: tuple[float, float, float]) -> pd.Series:
    """'train' / 'valid' / 'test' per id from a stable hash of the id alone.

    Keyed on the id (not on row order or the population), so a customer keeps its
    split across runs and can never be in two splits. With thousands of rows the
    hash spreads both classes evenly, which keeps the split stratified in expectation.
    """
    hashed = pd.util.hash_pandas_object(ids.astype("str").reset_index(drop=True), index=False).to_numpy()
    position = (hashed % np.uint64(1_000_000)).astype(np.float64) / 1_000_000.0
    train_cut, valid_cut = fractions[0], fractions[0] + fractions[1]
    names = np.where(position < train_cut, "train", np.where(position < valid_cut, "valid", "test"))
    return pd.Series(names, index=ids.index, name="split")


@dataclass
class Candidate:
    """One trained model with its validation score."""

    name: str
    pipeline: Pipeline
    valid_roc_auc: float
    fit_seconds: float
    params: dict


def fit_baseline(train: pd.DataFrame, valid: pd.DataFrame, signature: ModelSignature, random_state: int) -> Candidate:
    """Regularized logistic regression on the shared preprocessing: the candidate to beat."""
    started = time.monotonic()
    pipeline = Pipeline(
        [
            ("prep", build_preprocessor(signature)),
            ("model", LogisticRegression(C=1.0, max_iter=2000, random_state=random_state)),
        ]
    )
    pipeline.fit(to_model_input(train, signature), labels(train, signature))
    auc = roc_auc_score(labels(valid, signature), pipeline.predict_proba(to_model_input(valid, signature))[:, 1])
    log.info("baseline logistic regression: validation ROC AUC %.4f", auc)
    return Candidate("logistic_baseline", pipeline, float(auc), time.monotonic() - started, {"C": 1.0})


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
) -> Candidate:
    """TPOT 1.x search maximizing ROC AUC within the budget, on the shared preprocessing."""
    from tpot import TPOTClassifier  # heavy import, only inside the training task

    started = time.monotonic()
    prep = build_preprocessor(signature)
    x_train = prep.fit_transform(to_model_input(train, signature))
    y_train = labels(train, signature)
    client = None
    if dask_scheduler_address:
        from distributed import Client

        client = Client(dask_scheduler_address)
        log.info("TPOT uses the Dask cluster at %s", dask_scheduler_address)
    search = TPOTClassifier(
        search_space=search_space,
        scorers=["roc_auc"],
        scorers_weights=[1],
        cv=cv,
        max_time_mins=budget_minutes,
        max_eval_time_mins=max_eval_minutes,
        population_size=population_size,
        n_jobs=n_jobs,
        random_state=random_state,
        verbose=2,
        client=client,
    )
    log.info(
        "TPOT search started: %s rows, %s features, budget %.1f min, space %s, n_jobs %s",
        x_train.shape[0], x_train.shape[1], budget_minutes, search_space, n_jobs,
    )
    try:
        search.fit(x_train, y_train)
    finally:
        if client is not None:
            client.close()
    if getattr(search, "fitted_pipeline_", None) is None:
        raise TrainingError("TPOT found no pipeline within the budget: raise CHURN_TRAIN_BUDGET_MINUTES")
    pipeline = Pipeline([("prep", prep), ("model", search.fitted_pipeline_)])
    auc = roc_auc_score(labels(valid, signature), pipeline.predict_proba(to_model_input(valid, signature))[:, 1])
    elapsed = time.monotonic() - started
    log.info("TPOT search done in %.0f s: best %s, validation ROC AUC %.4f", elapsed, search.fitted_pipeline_, auc)
    params = {"search_space": search_space, "budget_minutes": budget_minutes, "cv": cv,
              "population_size": population_size, "pipeline": str(search.fitted_pipeline_)[:2000]}
    return Candidate("tpot", pipeline, float(auc), elapsed, params)
