"""Training without a cluster: the baseline and default models, the search's sample size, options and finalists,
the selection estimate, and the refusals that come before any search (TPOT on a Dask cluster:
tests/integration/test_model_train.py)."""

from __future__ import annotations

import numpy as np
import pytest

from churn.model.automl import fit_tpot
from churn.model.train import TrainingError, fit_baseline
from tests.support.model_frames import frame, signature


def test_unreachable_cluster_fails_with_the_fix():
    data = frame(300)
    sig = signature(data)
    with pytest.raises(TrainingError, match="CHURN_DASK_SCHEDULER_ADDRESS"):
        fit_tpot(data, data, sig, budget_minutes=0.1, max_eval_minutes=0.05, search_space="linear-light", cv=2,
                 population_size=2, n_jobs=1, random_state=1, dask_scheduler_address="tcp://127.0.0.1:9",
                 connect_timeout_seconds=2)


def test_non_positive_budget_is_refused_with_the_variable_name():
    data = frame(300)
    with pytest.raises(TrainingError, match="CHURN_TRAIN_BUDGET_MINUTES"):
        fit_tpot(data, data, signature(data), budget_minutes=0, max_eval_minutes=0.1, search_space="linear-light",
                 cv=2, population_size=2, n_jobs=1, random_state=1)


def test_baseline_is_a_regularized_logistic_regression_on_the_shared_preprocessing():
    data = frame(1500, seed=2)
    sig = signature(data)
    cand = fit_baseline(data.iloc[:1200], data.iloc[1200:], sig, random_state=0)
    assert cand.name == "logistic_baseline" and cand.params["C"] == 1.0
    assert [name for name, _ in cand.pipeline.steps] == ["prep", "model"]
    assert 0.6 < cand.valid_roc_auc < 1.0
    again = fit_baseline(data.iloc[:1200], data.iloc[1200:], sig, random_state=0)
    assert again.valid_roc_auc == cand.valid_roc_auc  # deterministic
    proba = cand.pipeline.predict_proba(sig.enforce(data)[sig.feature_columns])[:, 1]
    assert proba.shape == (len(data),) and ((proba >= 0) & (proba <= 1)).all()
    assert proba.std() > 0.05  # the fitted pipeline separates customers, it does not return one constant


def test_search_sample_is_sized_to_the_budget_and_says_why():
    from churn.model.automl import SEARCH_MIN_ROWS, search_sample_size

    assert search_sample_size(3_000, 2.0, 10_000)[0] == 3_000  # small data: every row
    rows, why = search_sample_size(418_000, 2.0, 10_000)
    assert rows == 20_000 and "stratified sample of 20000 of 418000" in why and "CHURN_SEARCH_ROWS_PER_MINUTE" in why
    assert search_sample_size(418_000, 0.1, 10_000)[0] == SEARCH_MIN_ROWS  # never below the floor
    assert search_sample_size(418_000, 60, 10_000)[0] == 418_000


def test_search_options_carry_the_config_into_fit_tpot_with_the_sample_size():
    import inspect

    from churn.config import ChurnConfig
    from churn.model.automl import search_options

    cfg = ChurnConfig().replace(train_budget_minutes=3, search_rows_per_minute=4_000, tpot_cv=4, random_state=11,
                                tpot_search_space="linear-light", dask_scheduler_address="tcp://127.0.0.1:8786")
    options = search_options(cfg, 100_000)
    assert set(options) <= set(inspect.signature(fit_tpot).parameters)  # the stage and benches call fit_tpot(**options)
    assert (options["budget_minutes"], options["cv"], options["random_state"]) == (3, 4, 11)
    assert options["search_space"] == "linear-light" and options["dask_scheduler_address"] == "tcp://127.0.0.1:8786"
    assert options["search_rows"] == 12_000 and "12000 of 100000" in options["search_rows_reason"]
    assert search_options(cfg, 9_000)["search_rows"] == 9_000  # fewer rows than the sample: all of them


def test_the_defaults_are_the_logistic_baseline_and_hist_gradient_boosting():
    from churn.model.train import fit_defaults

    data = frame(1500, seed=4)
    sig = signature(data)
    defaults = fit_defaults(data.iloc[:1200], data.iloc[1200:], sig, random_state=0)
    assert [c.name for c in defaults] == ["logistic_baseline", "hist_gradient_boosting"]
    assert all(0.5 < c.valid_roc_auc <= 1 for c in defaults)  # both learned something from the rows given


def test_refit_on_all_rows_gives_the_model_fitted_on_every_row():
    from sklearn.linear_model import LogisticRegression

    from churn.model.automl import refit_on_all

    rng = np.random.default_rng(3)
    x = rng.normal(size=(2000, 4))
    y = (x[:, 0] + rng.normal(size=2000) > 0).astype(int)
    on_sample = LogisticRegression().fit(x[:200], y[:200])
    refitted = refit_on_all(on_sample, x, y)
    assert refitted is not on_sample and np.allclose(on_sample.coef_, LogisticRegression().fit(x[:200], y[:200]).coef_)
    assert np.allclose(refitted.coef_, LogisticRegression().fit(x, y).coef_)
    assert not np.allclose(refitted.coef_, on_sample.coef_)


def test_finalists_are_full_sample_scores_led_by_the_best_of_each_model_family():
    import pandas as pd
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    from churn.model.automl import full_sample_finalists

    class Individual:  # stands in for TPOT's individual objects: only export_pipeline is read
        def __init__(self, recipe):
            self.recipe = recipe

        def export_pipeline(self):
            return self.recipe

    lucky, linear_a, linear_b, boosted = (HistGradientBoostingClassifier(max_leaf_nodes=63),
                                          LogisticRegression(C=1.0), LogisticRegression(C=2.0),
                                          HistGradientBoostingClassifier(max_leaf_nodes=7))
    evaluated = pd.DataFrame({
        "roc_auc_score": [0.95, 0.84, 0.84, 0.83, 0.80, "TIMEOUT"], "Budget": [0.25, 1.0, 1.0, 1.0, 1.0, 1.0],
        "Individual": [Individual(lucky), Individual(linear_a), Individual(LogisticRegression(C=1.0)),
                       Individual(linear_b), Individual(boosted), Individual(LogisticRegression(C=9.0))]})
    finalists, competed = full_sample_finalists(evaluated, "roc_auc_score", limit=3)
    assert competed == 4  # the quarter-sample score and the timeout do not compete
    # each family's best first (the best overall leading), then the next best; the boosted model is in
    # although three linear ones scored higher; the duplicate of linear_a (bred twice) counts once
    assert [(type(r).__name__, r.get_params().get("C", r.get_params().get("max_leaf_nodes")), s)
            for r, s in finalists] == [("LogisticRegression", 1.0, 0.84), ("HistGradientBoostingClassifier", 7, 0.80),
                                       ("LogisticRegression", 2.0, 0.83)]
    assert full_sample_finalists(evaluated, "roc_auc_score", limit=1)[0] == [(linear_a, 0.84)]
    assert full_sample_finalists(evaluated[evaluated["Budget"] < 1], "roc_auc_score") == ([], 0)


def test_finalists_refitted_on_all_rows_are_judged_on_validation_when_asked():
    import numpy as np
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression

    from churn.model.automl import choose_finalist

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 3))
    y = (x[:, 0] + rng.normal(scale=0.5, size=4000) > 0).astype(int)
    # the base-rate model had the higher search score (as a sample can mislead); the validation split says no
    finalists = [(DummyClassifier(strategy="prior"), 0.90), (LogisticRegression(), 0.85)]
    model, records = choose_finalist(finalists, x[:3000], y[:3000], x[3000:], y[3000:], judge_on_validation=True)
    assert isinstance(model, LogisticRegression) and model.n_features_in_ == 3
    assert [r.get("chosen", False) for r in records] == [False, True]
    assert records[1]["valid_roc_auc"] > 0.9 and records[0]["valid_roc_auc"] == 0.5
    # refits out of time after the first: the others are skipped and say why
    model, records = choose_finalist(finalists, x[:3000], y[:3000], x[3000:], y[3000:], judge_on_validation=True,
                                     refit_budget_seconds=0)
    assert isinstance(model, DummyClassifier) and records[0]["chosen"] and "skipped" not in records[0]
    assert "valid_roc_auc" not in records[1] and records[1]["skipped"].startswith("refits had taken")
    # small data: the search score decides and only that pipeline is refitted
    model, records = choose_finalist(finalists, x[:3000], y[:3000], x[3000:], y[3000:], judge_on_validation=False)
    assert isinstance(model, DummyClassifier) and len(records) == 1 and "valid_roc_auc" not in records[0]


def test_the_search_trace_keeps_full_sample_improvements_in_time_order():
    import pandas as pd

    from churn.model.automl import search_trace

    evaluated = pd.DataFrame({
        "roc_auc_score": [0.70, 0.90, 0.75, "INVALID", 0.74, 0.80],
        "Budget": [1.0, 0.25, 1.0, 1.0, 1.0, 1.0],  # the 0.90 came from a quarter of the sample: not comparable
        "Completed Timestamp": [110.0, 105.0, 130.0, 131.0, 120.0, 150.0],
    })
    assert search_trace(evaluated, "roc_auc_score", 100.0) == [[10.0, 0.7], [20.0, 0.74], [30.0, 0.75], [50.0, 0.8]]
    assert search_trace(None, "roc_auc_score", 0.0) == []


def test_selection_uses_k_fold_on_small_data():
    from churn.model.train import selection_estimate

    data = frame(3000, seed=9)
    train, valid = data.iloc[:2700], data.iloc[2700:]
    sig = signature(train)
    model = fit_baseline(train, valid, sig, 0).pipeline
    estimate = selection_estimate(model, train, valid, sig, folds=4, max_rows=20_000, random_state=0)
    assert estimate["cv_folds"] == 4 and estimate["cv_rows"] == 3000
    assert estimate["estimate"] == "4-fold cross-validation on 3000 rows" and estimate["cv_roc_auc_std"] > 0


def test_selection_judges_the_fitted_model_on_a_large_validation_split():
    from sklearn.metrics import roc_auc_score

    from churn.model.features import labels, to_model_input
    from churn.model.train import VALIDATION_MIN_POSITIVES, selection_estimate

    data = frame(30_000, seed=10)
    train, valid = data.iloc[:24_000], data.iloc[24_000:]
    sig = signature(train)
    assert labels(valid, sig).sum() >= VALIDATION_MIN_POSITIVES
    model = fit_baseline(train, valid, sig, 0).pipeline
    # folds of at most 5,000 rows would see a sixth of the 24,000 training rows
    estimate = selection_estimate(model, train, valid, sig, folds=5, max_rows=5_000, random_state=0)
    expected = roc_auc_score(labels(valid, sig), model.predict_proba(to_model_input(valid, sig))[:, 1])
    assert estimate["cv_roc_auc"] == pytest.approx(expected, abs=1e-5)
    assert estimate["cv_folds"] is None and estimate["cv_rows"] == 6000
    assert "validation split (6000 rows" in estimate["estimate"] and "all 24000 training rows" in estimate["estimate"]
    assert 0.001 < estimate["cv_roc_auc_std"] < 0.03  # bootstrap spread of an AUC on ~2,000 positives
    # folds that see at least half the training rows: k-fold; too few validation positives: k-fold
    assert selection_estimate(model, train, valid, sig, folds=5, max_rows=20_000)["cv_folds"] == 5
    few = valid.iloc[:300]
    assert labels(few, sig).sum() < VALIDATION_MIN_POSITIVES
    assert selection_estimate(model, train, few, sig, folds=5, max_rows=5_000)["cv_folds"] == 5
