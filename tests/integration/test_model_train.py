"""Integration: TPOT runs on a configured Dask cluster under a tiny budget and logs its progress."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from distributed import LocalCluster

from churn.model.automl import fit_tpot
from churn.model.train import Candidate, SearchFoundNothing
from tests.support.model_frames import frame, signature


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
    caplog.set_level(logging.INFO, logger="churn.model.automl")
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


def test_the_search_runs_on_a_sample_and_the_winner_is_refitted_on_every_training_row(cluster):
    data = frame(4000, seed=6)
    train, valid = data.iloc[:3000], data.iloc[3000:]
    sig = signature(train)
    cand = fit_tpot(train, valid, sig, budget_minutes=0.15, max_eval_minutes=0.1, search_space="linear-light", cv=2,
                    population_size=4, n_jobs=1, random_state=1, dask_scheduler_address=cluster.scheduler_address,
                    progress_seconds=2, search_rows=1000, search_rows_reason="test")
    assert cand.params["search_rows"] == 1000 and cand.params["train_rows"] == 3000
    assert cand.params["successive_halving"]["budget_range"] == [0.25, 1.0]
    assert cand.params["refit_seconds"] >= 0 and 0.5 < cand.valid_roc_auc <= 1.0


def test_the_boosted_search_space_finds_and_refits_a_boosted_or_logistic_winner(cluster):
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    data = frame(4000, seed=8)
    train, valid = data.iloc[:3000], data.iloc[3000:]
    sig = signature(train)
    cand = fit_tpot(train, valid, sig, budget_minutes=0.2, max_eval_minutes=0.1, search_space="churn-boosted", cv=2,
                    population_size=4, n_jobs=1, random_state=2, dask_scheduler_address=cluster.scheduler_address,
                    progress_seconds=2, search_rows=1500, search_rows_reason="test")
    winner = cand.pipeline.named_steps["model"]
    assert isinstance(winner, (HistGradientBoostingClassifier, LogisticRegression)), winner
    assert cand.params["search_space"] == "churn-boosted" and cand.params["pipelines_scored"] >= 1
    # the winner is the best full-sample score (or TPOT's pick when none was scored on the full sample)
    assert cand.params["winner_rule"].startswith(("best of ", "TPOT's pick"))
    # the time-to-quality curve: rising best scores at increasing times, full-sample evaluations only
    trace = cand.params["search_trace"]
    assert all(a[0] <= b[0] and a[1] < b[1] for a, b in zip(trace, trace[1:]))


def test_a_sampled_search_on_large_data_refits_finalists_and_keeps_the_best_on_validation(cluster):
    data = frame(5000, seed=9)
    train, valid = data.iloc[:4000], data.iloc[4000:]  # ~350 validation positives: enough to judge on
    sig = signature(train)
    cand = fit_tpot(train, valid, sig, budget_minutes=0.3, max_eval_minutes=0.1, search_space="churn-boosted", cv=2,
                    population_size=6, n_jobs=1, random_state=3, dask_scheduler_address=cluster.scheduler_address,
                    progress_seconds=5, search_rows=1000, search_rows_reason="test")  # 1000 < half of 4000
    finalists = cand.params["finalists"]
    assert len(finalists) >= 2, finalists
    assert cand.params["winner_rule"].startswith("best validation ROC AUC of"), cand.params["winner_rule"]
    refitted = [f for f in finalists if "skipped" not in f]
    assert all(f["refit_seconds"] >= 0 and 0.5 < f["valid_roc_auc"] <= 1 for f in refitted)
    (chosen,) = [f for f in finalists if f.get("chosen")]
    assert chosen["valid_roc_auc"] == max(f["valid_roc_auc"] for f in refitted)
    assert abs(chosen["valid_roc_auc"] - cand.valid_roc_auc) < 1e-5  # the candidate is the chosen refit
    assert cand.pipeline.named_steps["model"].n_features_in_ > 0
    assert len({f["pipeline"] for f in finalists}) == len(finalists)  # distinct pipelines
