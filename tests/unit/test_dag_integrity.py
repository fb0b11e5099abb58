"""DAG integrity: every DAG file imports, has tags and retries, and parses fast (real Airflow DagBag)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.airflow_env import REPO_ROOT, run_probe

# The DagBag is built in a child process so that Airflow's settings come from a clean environment.
_PROBE = r"""
import json, os, time
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
out = {"errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": {},
       "stats": [{"file": s.file, "duration": s.duration.total_seconds()} for s in bag.dagbag_stats]}
for dag_id, dag in bag.dags.items():
    out["dags"][dag_id] = {"tags": sorted(dag.tags), "retries": [t.retries for t in dag.tasks],
                           "schedule": str(dag.schedule), "catchup": dag.catchup,
                           "tasks": [t.task_id for t in dag.tasks],
                           "upstream": {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks},
                           "deadline": [{"reference": type(d.reference).__name__,
                                         "interval_s": d.interval.total_seconds(),
                                         "callback": getattr(d.callback, "path", str(d.callback))}
                                        for d in (dag.deadline if isinstance(dag.deadline, list)
                                                  else [dag.deadline] if dag.deadline else [])],
                           "watchers": [[asset.name, w.name, w.trigger.serialize()[0],
                                         w.trigger.serialize()[1].get("poll_seconds")]
                                        for asset in (getattr(getattr(dag.timetable, "asset_condition", None),
                                                              "objects", None) or [])
                                        for w in asset.watchers],
                           "max_active_runs": dag.max_active_runs}
print("JSON" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    return run_probe(_PROBE, tmp_path_factory.mktemp("dagbag"))


def test_no_import_errors(dagbag):
    assert dagbag["errors"] == {}
    assert "churn_nightly" in dagbag["dags"]


def test_every_dag_has_tags_and_retries(dagbag):
    for dag_id, dag in dagbag["dags"].items():
        assert dag["tags"], f"{dag_id} has no tags"
        assert min(dag["retries"]) >= 1, f"{dag_id} has a task without retries"


def test_nightly_is_cron_scheduled_without_catchup(dagbag):
    dag = dagbag["dags"]["churn_nightly"]
    assert dag["schedule"] == "0 2 * * *" and dag["catchup"] is False
    assert dag["tasks"][:5] == ["start_run", "ingest", "profile_and_validate", "drift", "split"]
    for stage in ("train", "evaluate_and_gate", "register", "score", "publish_postgres", "publish_redis", "export"):
        assert stage in dag["tasks"]


def test_report_gets_every_stage_result_from_the_stage_graph(dagbag):
    upstream = dagbag["dags"]["churn_nightly"]["upstream"]
    # drift included: the report reads it from the task's XCom, not back from the database
    assert {"drift", "ingest", "profile_and_validate", "score", "export", "summarize"} <= set(upstream["report"])
    assert "report" in upstream["purge"]  # retention after the report


def test_scheduled_runs_carry_the_deadline_alert(dagbag):
    """Outside `airflow dags test`, a run not finished CHURN_RUN_DEADLINE_MINUTES after queueing alerts."""
    deadlines = dagbag["dags"]["churn_nightly"]["deadline"]
    assert len(deadlines) == 1, deadlines
    assert deadlines[0]["interval_s"] == 240 * 60  # CHURN_RUN_DEADLINE_MINUTES default
    assert deadlines[0]["reference"] == "DagRunQueuedAtDeadline", deadlines
    assert deadlines[0]["callback"] == "churn.alerts.deadline_missed"


def test_rescore_is_scheduled_by_the_outbox_watcher_in_the_triggerer(dagbag):
    dag = dagbag["dags"]["churn_rescore"]
    assert dag["watchers"] == [["churn_rescore_outbox", "churn_rescore_outbox_watcher",
                                "churn.data.outbox_trigger.OutboxTrigger", 2.0]]
    assert dag["tasks"] == ["rescore"] and dag["max_active_runs"] == 2 and dag["catchup"] is False


def test_dag_files_parse_in_under_a_second(dagbag):
    assert dagbag["stats"], "DagBag recorded no files"
    for stat in dagbag["stats"]:
        assert stat["duration"] < 1.0, f"{stat['file']} took {stat['duration']:.2f} s to parse"


def test_dag_files_do_no_heavy_imports_at_parse_time():
    probe = ("import sys, runpy; runpy.run_path(sys.argv[1]); "
             "heavy = [m for m in ('tpot', 'great_expectations', 'sklearn', 'pandas', 'psycopg2', 'redis') "
             "if m in sys.modules]; print('HEAVY', heavy)")
    for dag_file in (REPO_ROOT / "dags").glob("*.py"):
        proc = subprocess.run([sys.executable, "-c", probe, str(dag_file)], capture_output=True, text=True,
                              env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT / "include"),
                                   "AIRFLOW_HOME": "/tmp/airflow-parse-probe"}, timeout=120)
        assert "HEAVY []" in proc.stdout, f"{dag_file.name}: {proc.stdout[-500:]} {proc.stderr[-1500:]}"


def test_scoring_waits_for_the_experiment_arms_and_the_decision_dag_follows_the_report(dagbag):
    nightly = dagbag["dags"]["churn_nightly"]["upstream"]
    assert "assign_experiments" in nightly["plan_scoring"] and "register" in nightly["assign_experiments"]
    decision = dagbag["dags"]["churn_experiment_decision"]
    assert "churn_experiment_results" in decision["schedule"] and decision["max_active_runs"] == 1
    assert decision["upstream"] == {"find_decision": [], "decide": ["find_decision"],
                                    "apply": ["decide", "find_decision"]}
