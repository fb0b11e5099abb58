"""Integration: the TPOT search in its own interpreter works where executors run tasks, and leaves nothing behind.

TPOT 1.x starts a Dask LocalCluster of worker processes. These tests run the real search
(default configuration: a local cluster, no address) from the places Airflow runs tasks:
a daemonic process, like a Celery prefork child, and a plain process that is then
SIGKILLed or SIGTERMed mid-search, like a task being killed.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from churn.model.registry import ArtifactIntegrityError, read_verified
from churn.model.search import SearchProcessError, run_search
from churn.model.train import Candidate, SearchFoundNothing
from tests.support import REPO_ROOT
from tests.support.model_frames import frame, signature


def _request(tmp: Path, rows: int = 1500, **fit) -> dict:
    data = frame(rows, seed=4)
    train, valid = data.iloc[: int(rows * 0.8)], data.iloc[int(rows * 0.8):]
    train.to_parquet(tmp / "train.parquet", index=False)
    valid.to_parquet(tmp / "valid.parquet", index=False)
    # 45 s: the Dask cluster (two spawned processes importing TPOT) starts inside the budget, and beside another
    # xdist worker's tests that took most of it: 9 s and 15 s budgets scored no pipeline on 2 cores (CI runs 30, 31)
    params = {"budget_minutes": 0.75, "max_eval_minutes": 0.1, "search_space": "linear-light", "cv": 2,
              "population_size": 4, "n_jobs": 2, "random_state": 1, "dask_scheduler_address": "",
              "progress_seconds": 2}
    params.update(fit)
    return {"train_path": str(tmp / "train.parquet"), "valid_path": str(tmp / "valid.parquet"),
            "signature": signature(train).as_dict(), "fit": params}


def test_default_search_runs_in_a_child_interpreter_and_relays_progress(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="churn.model.search")
    cand = run_search(_request(tmp_path), tmp_path / "search")
    assert isinstance(cand, Candidate) and cand.name == "tpot"
    assert 0.6 < cand.valid_roc_auc <= 1.0
    assert cand.params["n_jobs"] == 2 and cand.params["pipelines_scored"] >= 1
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("[search]") and "TPOT progress" in m for m in messages), messages
    # the child wrote the artifact and a result naming its hash; the parent loaded exactly those bytes
    result = json.loads((tmp_path / "search" / "tpot_result.json").read_text())
    assert result["pid"] != os.getpid()
    assert len(result["artifact_sha256"]) == 64


def _search_in_daemon(request: dict, work_dir: str, queue) -> None:
    """Body of a daemonic process: the situation of a task inside a Celery prefork worker."""
    try:
        cand = run_search(request, Path(work_dir))
        queue.put(("ok", cand.valid_roc_auc))
    except BaseException as exc:  # report any failure to the test process
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def test_search_runs_from_a_daemonic_process_like_a_celery_prefork_child(tmp_path):
    # multiprocessing refuses children to daemonic processes, which is what breaks TPOT in Celery
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_search_in_daemon, args=(_request(tmp_path), str(tmp_path / "search"), queue),
                       daemon=True)
    proc.start()
    status, value = queue.get(timeout=300)
    proc.join(timeout=30)
    assert status == "ok", value
    assert 0.6 < value <= 1.0


def test_search_that_evaluates_nothing_raises_search_found_nothing_from_the_child(tmp_path):
    with pytest.raises(SearchFoundNothing, match="CHURN_TRAIN_BUDGET_MINUTES"):
        # 200,000 rows: no pipeline fits within 0.06 s, whatever the machine's load
        run_search(_request(tmp_path, rows=200_000, budget_minutes=0.001, max_eval_minutes=0.001,
                            population_size=2),
                   tmp_path / "search")


def test_search_over_its_time_limit_is_stopped_with_its_group(tmp_path):
    started = time.monotonic()
    with pytest.raises(SearchProcessError, match="limit"):
        run_search(_request(tmp_path, budget_minutes=5), tmp_path / "search", timeout_seconds=15)
    assert time.monotonic() - started < 60


def test_a_tampered_artifact_is_never_unpickled(tmp_path):
    path = tmp_path / "model.joblib"
    path.write_bytes(b"not what was hashed")
    with pytest.raises(ArtifactIntegrityError, match="does not match"):
        read_verified(path, "0" * 64)


_KILLABLE_TASK = textwrap.dedent("""
    import json, signal, sys
    from pathlib import Path
    sys.path[:0] = [{include!r}, {repo!r}]
    # Like Airflow 3's task runner: SIGTERM calls on_kill and carries on (the supervisor SIGKILLs later).
    signal.signal(signal.SIGTERM, lambda signum, frame: print("on_kill", flush=True))
    from churn.model.search import run_search
    run_search(json.loads(Path({request!r}).read_text()), Path({work!r}))
""")


def _descendants_with_workers(proc: psutil.Process, timeout: float = 180) -> list[psutil.Process]:
    """Wait until the search child has started its Dask workers; return every descendant."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = proc.children(recursive=True)
        if len(found) >= 3:  # the search interpreter + its 2 Dask worker processes (and helpers)
            time.sleep(3)  # let the workers join the cluster
            return proc.children(recursive=True)
        time.sleep(0.5)
    raise AssertionError("the search never started its Dask workers")


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_killing_the_task_mid_search_leaves_no_process_behind(tmp_path, how):
    request_path = tmp_path / "request.json"
    request_path.write_text(json.dumps(_request(tmp_path, budget_minutes=5)))
    script = _KILLABLE_TASK.format(include=str(REPO_ROOT / "include"), repo=str(REPO_ROOT),
                                   request=str(request_path), work=str(tmp_path / "search"))
    task = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        descendants = _descendants_with_workers(psutil.Process(task.pid))
        assert descendants
        os.kill(task.pid, how)
        if how == signal.SIGTERM:
            # the task process survives SIGTERM (on_kill only), but the search must stop at once
            _, alive = psutil.wait_procs(descendants, timeout=30)
            assert not alive, [p.cmdline() for p in alive]
            assert task.poll() is None or task.returncode != 0
            task.kill()
        task.wait(timeout=30)
        _, alive = psutil.wait_procs(descendants, timeout=30)
        assert not alive, [p.cmdline() for p in alive if p.is_running()]
    finally:
        if task.poll() is None:
            task.kill()
