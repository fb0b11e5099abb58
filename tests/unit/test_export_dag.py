"""Airflow semantics of the export task (real DagBag): it only runs when validation and both publishes succeeded.

With the ``all_success`` trigger rule, a failed (or upstream-failed) ancestor marks ``export``
``upstream_failed``: it is skipped and never writes an empty or partial file. The stage's own
guard (``check_published``) is tested functionally in test_export_stage.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.airflow_env import REPO_ROOT

_PROBE = r"""
import json, os
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
dag = bag.dags["churn_nightly"]
task = dag.get_task("export")
print("JSON" + json.dumps({
    "trigger_rule": str(getattr(task.trigger_rule, "value", task.trigger_rule)),
    "upstream": sorted(task.upstream_task_ids),
    "ancestors": sorted(task.get_flat_relative_ids(upstream=True)),
    "downstream": sorted(task.downstream_task_ids),
    "retries": task.retries,
    "outlets": [getattr(o, "name", str(o)) for o in task.outlets],
}))
"""


@pytest.fixture(scope="module")
def export_task(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dagbag_export")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp), "AIRFLOW_HOME": str(tmp / "airflow"),
           "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "PYTHONPATH": str(REPO_ROOT / "include")}
    proc = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("JSON")), None)
    assert line, proc.stderr[-3000:]
    return json.loads(line[4:])


def test_export_runs_only_after_every_upstream_succeeded(export_task):
    assert export_task["trigger_rule"] == "all_success"
    assert {"publish_postgres", "publish_redis"} <= set(export_task["upstream"])
    # a validation failure upstream of the publishes therefore skips the export as well
    assert {"profile_and_validate", "score", "publish_postgres", "publish_redis"} <= set(export_task["ancestors"])


def test_export_task_retries_and_feeds_the_summary(export_task):
    assert export_task["retries"] >= 1
    assert "summarize" in export_task["downstream"]
    assert export_task["outlets"] == ["churn_export_files"]
