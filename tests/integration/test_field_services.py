"""Issue 26 item 13: the launcher keeps files and processes private (no Airflow stack started here).

The full picture after a real run (modes under the state folder, the admin password in no log) is
asserted by tests/scheduler/test_stack_local.py; this test covers what a run there cannot show cheaply:
who may use the ``make cluster`` Dask cluster (a real Dask scheduler and worker; the state folder an older
checkout left open: tests/unit/test_field_services.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from churn.dev.stack import _bin
from tests.support.net import free_port
from tests.support.offline_stack import SECRETS, offline_stack


def test_dask_of_make_cluster_is_on_loopback_and_takes_only_the_stacks_certificate(tmp_path):
    """A Dask worker runs what any client sends: only holders of the state folder's key may connect."""
    from distributed import Client, Security

    stack = offline_stack(tmp_path, executor="celery", dask_scheduler_port=free_port(), dask_workers=1)
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
