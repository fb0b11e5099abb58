"""Id-keyed split, the logistic and HistGradientBoosting defaults, and the estimate that selects among candidates.

The TPOT search lives in :mod:`churn.model.automl`.
"""

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


class SearchFoundNothing(TrainingError):
    """The TPOT search ended without any evaluated pipeline (budget too small for the data/machine)."""


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
    return Candidate("logistic_baseline", pipeline, float(auc), time.monotonic() - started,
                     {"estimator": "LogisticRegression", "C": 1.0, "penalty": "l2", "random_state": random_state})


def fit_hist_gradient_boosting(train: pd.DataFrame, valid: pd.DataFrame, signature: ModelSignature,
                               random_state: int) -> Candidate:
    """scikit-learn's HistGradientBoosting with sensible defaults: the strong default every search must beat."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    started = time.monotonic()
    params = {"learning_rate": 0.06, "max_iter": 400, "max_leaf_nodes": 31, "min_samples_leaf": 40,
              "l2_regularization": 1.0, "early_stopping": True, "validation_fraction": 0.1, "n_iter_no_change": 25}
    pipeline = Pipeline([("prep", build_preprocessor(signature)),
                         ("model", HistGradientBoostingClassifier(**params, random_state=random_state))])
    pipeline.fit(to_model_input(train, signature), labels(train, signature))
    auc = roc_auc_score(labels(valid, signature), pipeline.predict_proba(to_model_input(valid, signature))[:, 1])
    log.info("HistGradientBoosting: validation ROC AUC %.4f", auc)
    return Candidate("hist_gradient_boosting", pipeline, float(auc), time.monotonic() - started,
                     {"estimator": "HistGradientBoostingClassifier", **params, "random_state": random_state})


def fit_defaults(train: pd.DataFrame, valid: pd.DataFrame, signature: ModelSignature,
                 random_state: int) -> list[Candidate]:
    """The strong defaults fitted on every retrain (logistic, HistGradientBoosting): what the search must beat."""
    return [fit_baseline(train, valid, signature, random_state),
            fit_hist_gradient_boosting(train, valid, signature, random_state)]


def stratified_sample(x, y, rows: int | None, random_state: int):
    """At most ``rows`` rows of (x, y), stratified on y; all of them when ``rows`` is None or not smaller."""
    if rows is None or rows >= len(y):
        return x, y
    from sklearn.model_selection import train_test_split

    x_kept, _, y_kept, _ = train_test_split(x, y, train_size=rows, stratify=y, random_state=random_state)
    return x_kept, y_kept


def cv_estimate(pipeline: Pipeline, frame: pd.DataFrame, signature: ModelSignature, *, folds: int = 5,
                max_rows: int = 20_000, random_state: int = 0) -> dict:
    """Stratified k-fold ROC AUC of ``pipeline``'s recipe (a fresh clone per fold): mean, spread, folds, rows.

    A lower-variance selection figure than one validation split: the same rows (at most ``max_rows``,
    a stratified sample) and folds for every candidate.
    """
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold

    x, y = stratified_sample(to_model_input(frame, signature), labels(frame, signature), max_rows, random_state)
    scores = []
    for fit_index, test_index in StratifiedKFold(folds, shuffle=True, random_state=random_state).split(x, y):
        model = clone(pipeline).fit(x.iloc[fit_index], y[fit_index])
        scores.append(roc_auc_score(y[test_index], model.predict_proba(x.iloc[test_index])[:, 1]))
    return {"cv_roc_auc": round(float(np.mean(scores)), 5), "cv_roc_auc_std": round(float(np.std(scores)), 5),
            "cv_folds": folds, "cv_rows": int(len(x))}


# A k-fold estimate on a capped sample judges data-hungry models (boosting) by what they learn from a fraction
# of the rows and misranks them on large populations (at 1M customers: k-fold on 20k rows put logistic ahead,
# the test split put boosting ahead by 0.018). When the folds would see less than half the training rows, the
# models fitted on every training row are judged on the validation split instead, if it has enough positives.
VALIDATION_MIN_POSITIVES = 200
BOOTSTRAP_ROUNDS = 200


def selection_estimate(pipeline: Pipeline, train: pd.DataFrame, valid: pd.DataFrame, signature: ModelSignature,
                       *, folds: int = 5, max_rows: int = 20_000, random_state: int = 0) -> dict:
    """The figure that selects the challenger: ROC AUC with its spread, and how it was obtained.

    Small data (each fold fits on at least half as many rows as the training split, or fewer than
    VALIDATION_MIN_POSITIVES positives in the validation split): stratified k-fold on up to ``max_rows``
    train + validation rows (``cv_estimate``). Large data: the fitted ``pipeline`` (it saw every training
    row) on the validation split, the spread being the standard deviation over bootstrap resamples.
    """
    y_valid = labels(valid, signature)
    fold_rows = min(len(train) + len(valid), max_rows) * (folds - 1) / folds
    if fold_rows >= 0.5 * len(train) or int(y_valid.sum()) < VALIDATION_MIN_POSITIVES:
        estimate = cv_estimate(pipeline, pd.concat([train, valid], ignore_index=True), signature, folds=folds,
                               max_rows=max_rows, random_state=random_state)
        return {**estimate, "estimate": f"{folds}-fold cross-validation on {estimate['cv_rows']} rows"}
    proba = pipeline.predict_proba(to_model_input(valid, signature))[:, 1]
    rng = np.random.default_rng(random_state)
    spread = []
    for _ in range(BOOTSTRAP_ROUNDS):
        pick = rng.integers(0, len(y_valid), len(y_valid))
        if 0 < y_valid[pick].sum() < len(pick):
            spread.append(roc_auc_score(y_valid[pick], proba[pick]))
    return {"cv_roc_auc": round(float(roc_auc_score(y_valid, proba)), 5), "cv_roc_auc_std": round(float(np.std(spread)), 5),
            "cv_folds": None, "cv_rows": int(len(y_valid)),
            "estimate": (f"validation split ({len(y_valid)} rows, {int(y_valid.sum())} positives; models fitted on "
                         f"all {len(train)} training rows), spread over {BOOTSTRAP_ROUNDS} bootstrap resamples")}
