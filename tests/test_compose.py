"""docker-compose.yaml stays consistent with the code (no Docker engine here, so it is checked by reading it).

Same Airflow version as the pinned requirements, the official compose's services, the project's folders
mounted, the connection ids the code uses, and only ``CHURN_*`` variables that ``ChurnConfig`` knows.
"""

from __future__ import annotations

import re

import pytest
import yaml

from churn.config import ChurnConfig
from tests.airflow_env import REPO_ROOT

COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.yaml").read_text())
SERVICES = COMPOSE["services"]
AIRFLOW_SERVICES = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                    "airflow-worker")


def _pinned(package: str) -> str:
    match = re.search(rf"^{re.escape(package)}==(\S+)$", (REPO_ROOT / "requirements.txt").read_text(), re.M)
    assert match, f"{package} is not pinned in requirements.txt"
    return match.group(1)


def test_images_use_the_pinned_airflow_version():
    version = _pinned("apache-airflow")
    assert f"FROM apache/airflow:{version}-python3.11" in (REPO_ROOT / "Dockerfile").read_text()
    for name in (*AIRFLOW_SERVICES, "airflow-init", "dask-scheduler", "dask-worker"):
        assert SERVICES[name]["image"] == f"churn-platform-airflow:{version}", name


@pytest.mark.parametrize("name, command", [
    ("airflow-apiserver", "api-server"), ("airflow-scheduler", "scheduler"),
    ("airflow-dag-processor", "dag-processor"), ("airflow-triggerer", "triggerer"),
    ("airflow-worker", "celery worker"),
])
def test_airflow_components_mount_the_project(name, command):
    service = SERVICES[name]
    assert service["command"] == command
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in service["volumes"]}
    assert mounts["/opt/airflow/dags"] == "./dags" and mounts["/opt/airflow/plugins"] == "./plugins"
    assert mounts["/opt/airflow/include"] == "./include"
    assert service["environment"]["PYTHONPATH"] == "/opt/airflow/include"
    assert service["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    assert "healthcheck" in service


def test_connections_and_churn_variables_match_the_code():
    env = SERVICES["airflow-scheduler"]["environment"]
    cfg = ChurnConfig()
    for conn_id in (cfg.postgres_conn_id, cfg.redis_conn_id):
        assert f"AIRFLOW_CONN_{conn_id.upper()}" in env, conn_id
    assert env[f"AIRFLOW_CONN_{cfg.redis_conn_id.upper()}"].startswith("redis://churn-redis:")
    assert "/churn" in env[f"AIRFLOW_CONN_{cfg.postgres_conn_id.upper()}"]
    fields = {f"CHURN_{name.upper()}" for name in ChurnConfig.model_fields}
    unknown = sorted(k for k in env if k.startswith("CHURN_") and k not in fields)
    assert not unknown, f"compose sets CHURN_* variables ChurnConfig does not read: {unknown}"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["CHURN_DASK_SCHEDULER_ADDRESS"] == "tcp://dask-scheduler:8786"


def test_dask_workers_can_import_the_package():
    for name in ("dask-scheduler", "dask-worker"):
        service = SERVICES[name]
        assert "./include:/opt/airflow/include:ro" in service["volumes"]
        assert service["environment"]["PYTHONPATH"] == "/opt/airflow/include"


def test_churn_database_is_created_for_the_platform():
    init = (REPO_ROOT / "docker" / "init-churn-db.sql").read_text()
    assert "CREATE DATABASE churn" in init
    assert any(v.endswith("/docker-entrypoint-initdb.d/10-churn.sql:ro") for v in SERVICES["postgres"]["volumes"])


def test_compose_runs_the_topology_the_celery_tests_run():
    """CeleryExecutor with a broker apart from the serving Redis, several workers, Dask for TPOT, partitions."""
    env = COMPOSE["x-airflow-common"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    broker_host = env["AIRFLOW__CELERY__BROKER_URL"].split("@")[-1].split(":")[0]
    scores_host = env["AIRFLOW_CONN_CHURN_REDIS"].split("//")[1].split(":")[0]
    assert broker_host != scores_host  # the broker never shares the score keyspace
    assert SERVICES["airflow-worker"]["deploy"]["replicas"] >= 2
    assert SERVICES["dask-worker"]["deploy"]["replicas"] >= 2
    assert env["CHURN_DASK_SCHEDULER_ADDRESS"] == "tcp://dask-scheduler:8786"
    assert "8786" in " ".join(SERVICES["dask-scheduler"]["command"])
    assert int(env["CHURN_SCORE_PARTITIONS"]) >= 2
    # the provider the executor comes from is pinned, as the local `make cluster` uses it
    assert _pinned("apache-airflow-providers-celery")
