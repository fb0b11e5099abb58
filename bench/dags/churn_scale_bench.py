"""Scale-out benchmark DAG: the nightly DAG's scoring stages alone, on a prepared snapshot.

``plan_scoring -> score_partition (mapped) -> score`` call the same ``churn.stages.scoring`` functions as
``churn_nightly``; the snapshot path and the partition count come from the trigger. Only
``bench/scale_out.py`` loads this folder (it is not in ``dags/``).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task


@dag(
    dag_id="churn_scale_bench",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["churn", "bench"],
    default_args={"retries": 0},
    params={"features_path": Param("", type="string"),
            "score_partitions": Param(2, type="integer", minimum=1, maximum=64)},
    doc_md=__doc__,
)
def churn_scale_bench():
    """Wire the scoring stages."""

    @task
    def start_run() -> dict:
        from churn.stages import start_run_from_airflow

        return start_run_from_airflow()

    @task
    def plan_scoring(run: dict) -> list[dict]:
        from churn.data.validate import ValidationOutcome
        from churn.stages import run_task, scoring
        from churn.stages.results import ValidationResult

        # The scoring snapshot the benchmark prepared, as profile_and_validate would hand it on.
        features = run["params"]["features_path"]
        clean = ValidationOutcome(dataset="score", success=True, rows_checked=0, rows_quarantined=0,
                                  clean_path=features, result_path="")
        return run_task(scoring.plan_scoring, run, ValidationResult(train=clean, score=clean).as_dict(),
                        {"registered": []})

    @task
    def score_partition(run: dict, part: dict) -> dict:
        from churn.stages import run_task, scoring

        return run_task(scoring.score_partition, run, part)

    @task
    def score(run: dict, parts: list[dict]) -> dict:
        from churn.stages import run_task, scoring

        return run_task(scoring.merge_scores, run, list(parts))

    run = start_run()
    score(run, score_partition.partial(run=run).expand(part=plan_scoring(run)))


churn_scale_bench()
