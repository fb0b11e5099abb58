"""Issue 26 item 13: the launcher keeps files and processes private (no Airflow stack started here).

The full picture after a real run (modes under the state folder, the admin password in no log) is
asserted by tests/scheduler/test_stack_local.py; these tests cover what a run there cannot show cheaply: a
state folder an older checkout left open, and who may use the ``make cluster`` Dask cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from churn.dev.stack import AirflowStack, _bin, _without_password
from tests.support.net import free_port

SECRETS = ("pg-secret", "redis-secret")


def _stack(tmp: Path, **kwargs) -> AirflowStack:
    return AirflowStack(state_dir=tmp / "state", churn_pg_url=f"postgresql://postgres:{SECRETS[0]}@127.0.0.1:1/churn",
                        redis_url=f"redis://churn:{SECRETS[1]}@127.0.0.1:2/0",
                        metadata_url=f"postgresql+psycopg2://postgres:{SECRETS[0]}@127.0.0.1:1/af",
                        celery_broker_url=f"redis://churn:{SECRETS[1]}@127.0.0.1:2/1", **kwargs)


def test_an_open_state_folder_from_an_older_checkout_is_closed_and_its_exposed_password_replaced(tmp_path):
    tmp_path.chmod(0o755)
    ancestors = {p: p.stat().st_mode for p in [tmp_path, *tmp_path.parents]}
    stack = _stack(tmp_path)
    for folder in (stack.home, stack.run_dir, stack.state_dir / "exports"):
        folder.mkdir(parents=True, mode=0o755)
    stack.state_dir.chmod(0o755)
    stack.password_file.write_text(json.dumps({"admin": "old-password"}))
    stack.password_file.chmod(0o644)
    (stack.run_dir / "api-server.log").write_text("Password for user 'admin': old-password\n")
    (stack.state_dir / "exports" / "scores.csv").write_text("customer_id,p\n")
    for path in stack.state_dir.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)

    stack.prepare()

    assert {p: p.stat().st_mode for p in ancestors} == ancestors
    assert stack.state_dir.stat().st_mode & 0o777 == 0o700
    assert not [str(p) for p in stack.state_dir.rglob("*") if p.stat().st_mode & 0o077]
    password = stack.password()
    assert password != "old-password" and len(password) >= 20  # it was readable by anyone: replaced
    assert stack.password_file.stat().st_mode & 0o777 == 0o600
    stack.prepare()
    assert stack.password() == password  # a private one is kept
    assert stack.env()["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] == str(stack.password_file)


def test_a_new_state_folder_gets_the_admin_password_before_any_airflow_process(tmp_path):
    """Given a file naming ``admin``, Airflow's simple auth manager reads it and never prints a password."""
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

    stack = _stack(tmp_path)
    stack.prepare()
    assert stack.password_file.stat().st_mode & 0o777 == 0o600 and stack.run_dir.stat().st_mode & 0o777 == 0o700
    with open(stack.password_file) as handle:
        assert SimpleAuthManager._get_passwords(handle) == {"admin": stack.password()}


def test_printed_urls_hide_their_password():
    assert _without_password("redis://churn:s3cret@127.0.0.1:6379/1") == "redis://churn:***@127.0.0.1:6379/1"
    assert _without_password("redis://127.0.0.1:6379/1") == "redis://127.0.0.1:6379/1"


@pytest.mark.integration
def test_dask_of_make_cluster_is_on_loopback_and_takes_only_the_stacks_certificate(tmp_path):
    """A Dask worker runs what any client sends: only holders of the state folder's key may connect."""
    from distributed import Client, Security

    stack = _stack(tmp_path, executor="celery", dask_scheduler_port=free_port(), dask_workers=1)
    stack.prepare()
    env = stack.dask_env()
    leaked = [k for k, v in env.items() if any(s in v for s in SECRETS) or k.startswith(("AIRFLOW", "CHURN_"))]
    assert not leaked, leaked
    assert all(p.stat().st_mode & 0o077 == 0 for p in stack.dask_tls_dir.iterdir())
    logs = {name: tmp_path / f"{name}.log" for name in ("scheduler", "worker")}
    procs = [subprocess.Popen([_bin("dask"), "scheduler", "--host", "127.0.0.1", "--port",
                               str(stack.dask_scheduler_port), "--dashboard-address", "127.0.0.1:0"],
                              env=env, stdout=open(logs["scheduler"], "wb"), stderr=subprocess.STDOUT,
                              start_new_session=True)]
    procs.append(subprocess.Popen([_bin("dask"), "worker", stack.dask_address, "--nthreads", "1", "--host",
                                   "127.0.0.1", "--dashboard-address", "127.0.0.1:0"], env=env,
                                  stdout=open(logs["worker"], "wb"), stderr=subprocess.STDOUT, start_new_session=True))
    try:
        probe = ("import sys; from distributed import Client; c = Client(sys.argv[1], timeout=30); "
                 "c.wait_for_workers(1, timeout=30); print('SUM', c.submit(sum, [1, 2]).result()); c.close()")
        # an Airflow component's environment (what the TPOT search's client runs with) holds the certificate
        ok = subprocess.run([sys.executable, "-c", probe, stack.dask_address], env=stack.env(), capture_output=True,
                            text=True, timeout=120)
        assert "SUM 3" in ok.stdout, ok.stderr[-2000:]
        plain = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
        for address in (stack.dask_address.replace("tls://", "tcp://"), stack.dask_address):
            refused = subprocess.run([sys.executable, "-c", probe.replace("timeout=30)", "timeout=5)", 1), address],
                                     env=plain, capture_output=True, text=True, timeout=120)
            assert refused.returncode != 0 and "SUM" not in refused.stdout
        with pytest.raises(Exception):  # another certificate, not signed by the stack's: refused by the scheduler
            Client(stack.dask_address, security=Security.temporary(), timeout=5)
        with Client(stack.dask_address, security=stack.dask_security(), timeout=30) as client:  # tests' own client
            assert client.submit(sum, [2, 3]).result() == 5
        scheduler_log = logs["scheduler"].read_text()
        assert "dashboard at:" in scheduler_log and "0.0.0.0" not in scheduler_log and "://:" not in scheduler_log
        dashboards = [line for line in scheduler_log.splitlines() if "dashboard at:" in line.lower()]
        assert dashboards and all("127.0.0.1" in line for line in dashboards), dashboards
    finally:
        for proc in reversed(procs):
            os.killpg(proc.pid, 15)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
        time.sleep(0.1)
