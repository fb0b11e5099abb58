"""Environment for running the project's DAGs under real Airflow in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support import REPO_ROOT

AIRFLOW_BIN = str(Path(sys.executable).parent / "airflow")


def airflow_env(tmp: Path, pg_url: str, redis_url: str, **churn: str) -> dict[str, str]:
    """Environment pointing Airflow at the repo's DAGs, a private AIRFLOW_HOME and the test servers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CHURN_"))}
    env.update(
        AIRFLOW_HOME=str(tmp / "airflow"),
        AIRFLOW__CORE__DAGS_FOLDER=str(REPO_ROOT / "dags"),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(REPO_ROOT / "plugins"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW_CONN_CHURN_POSTGRES=pg_url,
        AIRFLOW_CONN_CHURN_REDIS=redis_url,
        CHURN_STATE_DIR=str(tmp / "state"),
        PYTHONPATH=str(REPO_ROOT / "include"),
        NO_COLOR="1",
    )
    env.update({f"CHURN_{k.upper()}": str(v) for k, v in churn.items()})
    return env


def run_airflow(args: list[str], env: dict[str, str], log_path: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run an airflow CLI command, keeping its full output in ``log_path``."""
    with open(log_path, "w") as log:
        return subprocess.run([AIRFLOW_BIN, *args], env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout,
                              cwd=REPO_ROOT)


def run_probe(code: str, tmp: Path, *args: str) -> dict:
    """Run ``code`` (a script printing ``JSON<payload>``) against the repo's DAGs folder in a clean interpreter."""
    env = {
        "PATH": "/usr/bin:/bin", "HOME": str(tmp), "AIRFLOW_HOME": str(tmp / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PYTHONPATH": str(REPO_ROOT / "include"),
    }
    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("JSON")), None)
    assert line, proc.stderr[-3000:]
    return json.loads(line[4:])
