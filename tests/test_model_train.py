"""Integration: TPOT runs on a configured Dask cluster under a tiny budget and logs its progress."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from distributed import LocalCluster

from churn.model.train import Candidate, SearchFoundNothing, TrainingError, fit_baseline, fit_tpot
from tests.test_model_features import frame, signature


@pytest.fixture(scope="module")
def cluster():
    """A real Dask cluster in this process (threads), standing in for CHURN_DASK_SCHEDULER_ADDRESS's."""
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp",
                      dashboard_address=":0") as local:
        yield local


def test_tpot_uses_the_configured_cluster_and_logs_progress(cluster, caplog):
    data = frame(1500, seed=4)
    train, valid = data.iloc[:1200], data.iloc[1200:]
    sig = signature(train)
    caplog.set_level(logging.INFO, logger="churn.model.train")
    cand = fit_tpot(train, valid, sig, budget_minutes=0.15, max_eval_minutes=0.1, search_space="linear-light", cv=2,
                    population_size=4, n_jobs=1, random_state=1, dask_scheduler_address=cluster.scheduler_address,
                    progress_seconds=2)
    assert isinstance(cand, Candidate) and cand.name == "tpot"
    assert 0.6 < cand.valid_roc_auc <= 1.0  # the synthetic label has real signal
    assert cand.params["dask_scheduler_address"] == cluster.scheduler_address
    # the search ran on this cluster: its scheduler saw TPOT's evaluation tasks
    assert "eval_objective_list" in cluster.scheduler.task_prefixes, list(cluster.scheduler.task_prefixes)
    messages = [r.getMessage() for r in caplog.records]
    assert any("TPOT uses the Dask cluster at " + cluster.scheduler_address in m for m in messages)
    progress = [m for m in messages if m.startswith("TPOT progress")]
    assert len(progress) >= 2, messages
    # inside a generation (scores arrive only when it ends) the line shows the evaluations in flight
    assert any("pipeline evaluations running" in m for m in progress), progress
    final = [m for m in progress if "(final)" in m]
    assert final and "best CV ROC AUC so far 0." in final[-1] and "s of budget left" in final[-1]
    assert cand.params["pipelines_scored"] >= 1 and cand.params["generations"] >= 1
    # the model works on raw signature columns: preprocessing is inside the pipeline
    proba = cand.pipeline.predict_proba(sig.enforce(valid)[sig.feature_columns])[:, 1]
    assert proba.shape == (300,) and np.all((proba >= 0) & (proba <= 1))


def test_search_that_evaluates_nothing_raises_search_found_nothing(cluster):
    # big enough that no pipeline fits within 0.06 s, whatever the machine's load (3,000 rows sometimes did)
    data = frame(200_000, seed=5)
    sig = signature(data)
    with pytest.raises(SearchFoundNothing, match="CHURN_TRAIN_BUDGET_MINUTES"):
        fit_tpot(data, data, sig, budget_minutes=0.001, max_eval_minutes=0.001, search_space="linear-light", cv=2,
                 population_size=2, n_jobs=1, random_state=1, dask_scheduler_address=cluster.scheduler_address)


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
