"""The TPOT AutoML search: a budget-sized sample, successive halving, a boosted search space, refit on all rows.

Runs in a child interpreter from the train stage (``churn.model.search``); its progress goes to the task log.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline

from churn.model.features import ModelSignature, build_preprocessor, labels, to_model_input
from churn.model.train import Candidate, SearchFoundNothing, TrainingError, stratified_sample

log = logging.getLogger(__name__)


class SearchProgress:
    """Logs a TPOT search's progress (generation, pipelines evaluated, best score, time left) while it runs.

    TPOT 1.x only draws a tqdm bar; this thread reads the estimator's evolver
    (``_evolver_instance``: its ``generation`` and ``population.evaluated_individuals``)
    and writes ordinary log lines, so the progress shows in the Airflow task log.
    A line is written when a generation finishes and at least every ``every_seconds``.
    """

    def __init__(self, search, budget_minutes: float, every_seconds: float = 15.0, poll_seconds: float = 1.0):
        self.search = search
        self.budget_seconds = budget_minutes * 60.0
        self.every_seconds = every_seconds
        self.poll_seconds = poll_seconds
        self.lines = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tpot-progress", daemon=True)
        self._started = 0.0

    def __enter__(self) -> "SearchProgress":
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.report(final=True)

    def snapshot(self) -> dict | None:
        """Current generation, evaluated pipelines and best score, or None before the search starts."""
        evolver = getattr(self.search, "_evolver_instance", None)
        if evolver is None or getattr(evolver, "population", None) is None:
            return None
        try:
            # The search thread mutates this frame in place; read a copy and tolerate a torn read.
            frame = evolver.population.evaluated_individuals.copy()
            names = list(evolver.objective_names)
            raw = frame[names[0]] if len(frame) else pd.Series(dtype=object)
            scores = pd.to_numeric(raw, errors="coerce")
            failed = int(raw.isin(["INVALID", "TIMEOUT"]).sum())
        except (KeyError, ValueError, IndexError, AttributeError, TypeError, RuntimeError):
            return None
        best = float(scores.max()) if scores.notna().any() else None
        return {"generation": int(evolver.generation), "evaluated": int(scores.notna().sum()), "failed": failed,
                "best": best, "generation_running": self._running(getattr(evolver, "_client", None))}

    @staticmethod
    def _running(client) -> int | None:
        """Pipeline evaluations in flight, from the Dask client's futures (None without a client).

        TPOT records scores only when a whole generation is back, which can take minutes;
        its evaluation futures (key prefix ``eval_objective_list``) show the search is busy inside one.
        """
        if client is None:
            return None
        try:
            return sum(st.status == "pending" for key, st in list(client.futures.items())
                       if str(key).startswith("eval_objective_list"))
        except (AttributeError, RuntimeError):  # dict changed size while the client's loop updated it
            return None

    def report(self, final: bool = False) -> None:
        """Write one progress line."""
        state = self.snapshot()
        elapsed = time.monotonic() - self._started
        left = max(self.budget_seconds - elapsed, 0.0)
        if state is None:
            log.info("TPOT progress: starting (%.0f s elapsed, %.0f s of budget left)", elapsed, left)
        else:
            inside = "" if final or state["generation_running"] is None else (
                f" ({state['generation_running']} pipeline evaluations running)")
            log.info(
                "TPOT progress%s: generation %s%s, %s pipelines scored (%s failed/timed out), best CV ROC AUC so far "
                "%s, %.0f s elapsed, %.0f s of budget left",
                " (final)" if final else "", state["generation"], inside, state["evaluated"], state["failed"],
                "n/a" if state["best"] is None else f"{state['best']:.4f}", elapsed, left,
            )
        self.lines += 1

    def _run(self) -> None:
        last_line = time.monotonic()
        last_generation = None
        while not self._stop.wait(self.poll_seconds):
            state = self.snapshot()
            generation = None if state is None else state["generation"]
            if generation != last_generation or time.monotonic() - last_line >= self.every_seconds:
                self.report()
                last_line = time.monotonic()
                last_generation = generation


SEARCH_MIN_ROWS = 5_000
# Successive halving inside TPOT: the first generation screens pipelines on a quarter of the search sample,
# the survivors and every later generation are scored on all of it; a pipeline whose first folds fall below
# the 30th (rising to the 60th) percentile of the scores seen so far is cut before its remaining folds run.
# The winner is the best full-sample score (``full_sample_winner``): a quarter-sample score is noisier, and
# TPOT's own pick would take a lucky one.
SEARCH_BUDGET_RANGE = [0.25, 1.0]
SEARCH_GENERATIONS_UNTIL_FULL = 1
SEARCH_PRUNING_PERCENTILES = [30, 60]


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


def full_sample_winner(evaluated: pd.DataFrame | None, score_column: str) -> tuple[object, float, int] | None:
    """The unfitted pipeline with the best score on the whole search sample, its score, and how many competed."""
    if evaluated is None or score_column not in evaluated or "Individual" not in evaluated:
        return None
    frame = _scored_on_full_sample(evaluated)
    scores = pd.to_numeric(frame[score_column], errors="coerce").dropna()
    if scores.empty:
        return None
    best = scores.idxmax()
    return frame.loc[best, "Individual"].export_pipeline(), float(scores.max()), int(len(scores))


def refit_on_all(model, x, y):
    """A fresh copy of ``model``'s recipe fitted on every row given (the search's winner saw only its sample)."""
    from sklearn.base import clone

    return clone(model).fit(x, y)


class _RemoteCluster:
    """Stand-in for ``client.cluster`` when the client was opened by address.

    TPOT 1.1 sizes its submission queue with ``len(client.cluster.workers)``, but a
    ``distributed.Client(address)`` has ``cluster = None`` (only clients built from a
    cluster object have one), so TPOT crashes with AttributeError on a remote scheduler.
    One slot per worker thread keeps every thread busy, as TPOT's own local cluster does.
    """

    def __init__(self, slots: int):
        self.workers = list(range(max(slots, 1)))


def _attach_remote_cluster(client) -> int:
    """Give an address-opened Dask client the ``cluster.workers`` TPOT reads; returns the slot count."""
    workers = client.scheduler_info().get("workers", {})
    slots = sum(int(w.get("nthreads", 1)) for w in workers.values())
    if getattr(client, "cluster", None) is None:
        client.cluster = _RemoteCluster(slots)
    return max(slots, 1)


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
        slots = _attach_remote_cluster(client)
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
    chosen = full_sample_winner(getattr(search, "evaluated_individuals", None), search.objective_names[0])
    if chosen is None:  # nothing scored on the full sample yet (a very short budget): TPOT's own pick
        recipe, rule = search.fitted_pipeline_, "TPOT's pick (no pipeline was scored on the full search sample)"
    else:
        recipe, score, competed = chosen
        rule = f"best of {competed} full-sample scores (CV ROC AUC {score:.4f})"
    refit_started = time.monotonic()
    winner = refit_on_all(recipe, x_train, y_train)
    refit_seconds = time.monotonic() - refit_started
    log.info("TPOT winner (%s) refitted on all %s training rows in %.1f s", rule, len(y_train), refit_seconds)
    pipeline = Pipeline([("prep", prep), ("model", winner)])
    auc = roc_auc_score(labels(valid, signature), pipeline.predict_proba(to_model_input(valid, signature))[:, 1])
    elapsed = time.monotonic() - started
    log.info("TPOT search done in %.0f s: best %s, validation ROC AUC %.4f", elapsed, winner, auc)
    params = {"search_space": search_space, "budget_minutes": budget_minutes, "max_eval_minutes": max_eval_minutes,
              "cv": cv, "population_size": population_size, "random_state": random_state,
              "n_jobs": n_jobs if client is None else None, "dask_scheduler_address": dask_scheduler_address or None,
              "generations": state.get("generation"), "pipelines_scored": state.get("evaluated"),
              "best_cv_roc_auc": state.get("best"), "pipeline": str(winner)[:2000], "winner_rule": rule,
              "search_rows": int(len(y_search)), "search_rows_reason": search_rows_reason or None,
              "train_rows": int(len(y_train)), "search_seconds": round(searched, 1),
              "refit_seconds": round(refit_seconds, 1), "successive_halving": {
                  "budget_range": SEARCH_BUDGET_RANGE, "generations_until_full": SEARCH_GENERATIONS_UNTIL_FULL,
                  "pruning_percentiles": SEARCH_PRUNING_PERCENTILES},
              "search_trace": search_trace(getattr(search, "evaluated_individuals", None),
                                           search.objective_names[0], search_started_at)}
    return Candidate("tpot", pipeline, float(auc), elapsed, params)
