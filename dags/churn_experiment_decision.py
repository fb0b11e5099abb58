"""A person decides each experiment that reached its sample size: promote the winning arm's model, stop, or extend.

Scheduled on the ``churn_experiment_results`` asset (the nightly ``report`` task, which judges the experiments,
updates it). ``find_decision`` names the first experiment of ``CHURN_EXPERIMENTS_FILE`` whose arms all hold the
sample size its ``minimum_detectable_effect`` needs and awaits a decision (else the run skips the rest); the
``decide`` task waits for a person's answer in the Airflow UI (Required actions) with the arms' figures; ``apply``
carries it out through the registry (``churn.experiments.decisions``). Unanswered after
``CHURN_EXPERIMENT_DECISION_DAYS``, the question ends as *extend* (asked again at twice the sample size).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import Asset, dag, task

from churn.alerts import ChurnAlertNotifier
from churn.config import ChurnConfig
from churn.experiments.decisions import EXTEND, OPTIONS

CONFIG = ChurnConfig.from_env()  # environment only: no I/O at parse time
EXPERIMENT_RESULTS = Asset("churn_experiment_results")
REQUEST = "ti.xcom_pull(task_ids='find_decision')"


@dag(
    dag_id="churn_experiment_decision",
    schedule=[EXPERIMENT_RESULTS],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # one question at a time: the next run asks about the next experiment
    tags=["churn", "experiments"],
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1), "execution_timeout": timedelta(minutes=15),
                  "on_failure_callback": ChurnAlertNotifier("churn_experiment_decision task failed")},
    doc_md=__doc__,
)
def churn_experiment_decision():
    """find_decision -> decide (a person) -> apply."""

    @task.short_circuit
    def find_decision() -> dict | None:
        from churn.stages import experiments, run_task

        return run_task(experiments.find_decision)

    decide = HITLOperator(
        task_id="decide",
        subject="{{ " + REQUEST + "['subject'] }}",
        body="{{ " + REQUEST + "['body'] }}",
        options=OPTIONS,
        defaults=[EXTEND],
        response_timeout=timedelta(days=CONFIG.experiment_decision_days),
        execution_timeout=None,  # the wait for a person is bounded by response_timeout, not by the task limit
    )

    @task
    def apply(request: dict, response: dict) -> dict:
        from churn.stages import experiments, run_task

        return run_task(experiments.apply_experiment_decision, request, response)

    request = find_decision()
    request >> decide
    apply(request, decide.output)


churn_experiment_decision()
