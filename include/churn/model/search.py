"""The TPOT search in a clean child interpreter, so it runs the same under every Airflow executor.

Why a child interpreter: TPOT 1.x starts a Dask ``LocalCluster`` of worker *processes*
when it is given no cluster address. Inside an Airflow task those processes cannot be
started: under LocalExecutor (``airflow standalone``) multiprocessing's ``spawn`` re-runs
the ``airflow`` entry point as ``__main__`` in every worker, which cannot configure
Airflow's database there ("Nanny failed to start"); under CeleryExecutor the task runs in
a daemonic prefork child, which may not have children at all. A plain ``subprocess``
works in both: ``python -m churn.model.search request.json`` is an ordinary interpreter
whose ``__main__`` is this module, so TPOT's cluster (or a client to a remote Dask
scheduler) behaves exactly as it does in a terminal.

Process hygiene (no orphans when a task is killed or times out):

- the child is the leader of its own process group (``start_new_session``); every
  Dask nanny and worker it starts belongs to that group, and the parent signals the
  whole group (SIGTERM, then SIGKILL after a grace period) on any way out: success,
  error, timeout, or the task being terminated (Airflow raises inside the task);
- the child asks the kernel for SIGKILL when its parent dies (``PR_SET_PDEATHSIG``),
  so a SIGKILLed task takes the search with it; Dask workers exit on their own when
  the process that started them dies (their parent-alive pipe closes).

The child writes the fitted pipeline with joblib and a result JSON holding the
artifact's SHA-256; the parent hashes the bytes it read and unpickles only those
bytes, so a file swapped between check and load is never loaded.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from churn.fileio import atomic_path, file_sha256, write_text_atomic

log = logging.getLogger(__name__)

EXIT_FOUND_NOTHING = 3  # the child's exit status when TPOT evaluated no pipeline
TERMINATE_GRACE_SECONDS = 10.0
_PR_SET_PDEATHSIG = 1


class SearchProcessError(RuntimeError):
    """The isolated search process failed, timed out or wrote no usable result."""


def _package_root() -> str:
    """Folder that holds the ``churn`` package (``include/``), for the child's PYTHONPATH."""
    return str(Path(__file__).resolve().parents[2])


def search_timeout_seconds(budget_minutes: float, max_eval_minutes: float) -> float:
    """Wall-clock limit of the child: the budget, one generation's overrun, and start-up/fit slack.

    TPOT's ``max_time_mins`` is checked between generations and each evaluation is cut at
    ``max_eval_time_mins``, so a search can overrun its budget by about one evaluation.
    """
    return budget_minutes * 60.0 * 1.25 + max_eval_minutes * 60.0 * 2 + 300.0


def _kill_group(proc: subprocess.Popen, grace_seconds: float = TERMINATE_GRACE_SECONDS) -> None:
    """SIGTERM the child's whole process group, then SIGKILL what is left after the grace period."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            pass
    # Dask workers may outlive the group leader for a moment: the group id stays valid while any member lives.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if proc.poll() is None:
        proc.wait(timeout=grace_seconds)


def run_search(request: dict[str, Any], work_dir: Path, *, timeout_seconds: float | None = None):
    """Run :func:`churn.model.automl.fit_tpot` in a child interpreter; return its ``Candidate``.

    ``request`` holds the split paths, the signature dict and ``fit_tpot``'s keyword
    arguments. Raises :class:`~churn.model.train.SearchFoundNothing` when TPOT evaluated
    nothing, :class:`SearchProcessError` when the child crashed or ran out of time.
    """
    from churn.model.train import Candidate, SearchFoundNothing

    work_dir.mkdir(parents=True, exist_ok=True)
    request_path = work_dir / "tpot_request.json"
    result_path = work_dir / "tpot_result.json"
    result_path.unlink(missing_ok=True)  # a retry must never read the previous attempt's result
    request = {**request, "artifact_path": str(work_dir / "tpot_search.joblib"), "result_path": str(result_path)}
    request_path.write_text(json.dumps(request, indent=2))
    limit = timeout_seconds or search_timeout_seconds(request["fit"]["budget_minutes"],
                                                     request["fit"]["max_eval_minutes"])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([_package_root(), *filter(None, [env.get("PYTHONPATH")])])
    env["CHURN_SEARCH_PARENT_PID"] = str(os.getpid())
    env.setdefault("PYTHONWARNINGS", "ignore:pkg_resources is deprecated")  # stopit's import, noise in the log
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "churn.model.search", str(request_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True, text=True, bufsize=1,
    )
    tail: list[str] = []
    relay = threading.Thread(target=_relay_output, args=(proc, tail), name="tpot-search-log", daemon=True)
    relay.start()
    log.info("TPOT search runs in child process %s (timeout %.0f s, request %s)", proc.pid, limit, request_path)
    previous_handler = _stop_search_on_sigterm(proc)
    try:
        try:
            code = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired as exc:
            raise SearchProcessError(
                f"the TPOT search process ran over its {limit:.0f} s limit and was stopped: lower "
                "CHURN_TRAIN_BUDGET_MINUTES / CHURN_MAX_EVAL_MINUTES or give the search more workers"
            ) from exc
    finally:
        # Whatever happened (success, timeout, the task being terminated): nothing of the search survives.
        _kill_group(proc)
        relay.join(timeout=5)
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    if code == EXIT_FOUND_NOTHING:
        raise SearchFoundNothing(_result_message(result_path) or "TPOT evaluated no pipeline within the budget")
    if code != 0 or not result_path.exists():
        raise SearchProcessError(
            f"the TPOT search process exited with status {code} after {time.monotonic() - started:.0f} s; "
            "its last lines:\n" + "\n".join(tail[-25:])
        )
    result = json.loads(result_path.read_text())
    from churn.model.registry import read_verified

    pipeline = read_verified(result["artifact_path"], result["artifact_sha256"])
    return Candidate("tpot", pipeline, float(result["valid_roc_auc"]), float(result["fit_seconds"]),
                     result["params"])


def _stop_search_on_sigterm(proc: subprocess.Popen):
    """While the search runs, a SIGTERM to this process (Airflow stopping the task) stops the search first.

    Airflow 3's task runner answers SIGTERM by calling the operator's ``on_kill`` and carrying on
    (the supervisor SIGKILLs later), so a ``finally`` alone would not run; this handler kills the
    child's group and then calls the handler it replaced. Returns that handler (None off the main thread,
    where handlers cannot be set).
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        log.warning("SIGTERM: stopping the TPOT search process group %s", proc.pid)
        _kill_group(proc, grace_seconds=3.0)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    return previous


def _result_message(result_path: Path) -> str | None:
    if not result_path.exists():
        return None
    return json.loads(result_path.read_text()).get("error")


def _relay_output(proc: subprocess.Popen, tail: list[str]) -> None:
    """Copy the child's output into this task's log line by line (progress shows while it runs)."""
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if not line:
            continue
        log.info("[search] %s", line)
        tail.append(line)
        del tail[:-100]


def _die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux); exit if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the parent's process-group kill still applies
        pass
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)


def _child_main(request_path: str) -> int:
    """Entry point of the child interpreter: fit, write the artifact and the result, exit."""
    import joblib
    import pandas as pd

    from churn.model.features import ModelSignature
    from churn.model.automl import fit_tpot
    from churn.model.train import SearchFoundNothing

    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(name)s: %(message)s")
    parent = os.environ.get("CHURN_SEARCH_PARENT_PID")
    if parent:
        _die_with_parent(int(parent))
    # SIGTERM from the parent: leave through Python so TPOT closes its Dask cluster on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    request = json.loads(Path(request_path).read_text())
    result_path = Path(request["result_path"])
    train = pd.read_parquet(request["train_path"])
    valid = pd.read_parquet(request["valid_path"])
    signature = ModelSignature.from_dict(request["signature"])
    try:
        candidate = fit_tpot(train, valid, signature, **request["fit"])
    except SearchFoundNothing as exc:
        _write_json(result_path, {"error": str(exc)})
        return EXIT_FOUND_NOTHING
    artifact = Path(request["artifact_path"])
    with atomic_path(artifact) as tmp:
        joblib.dump(candidate.pipeline, tmp)
        digest = file_sha256(tmp)
    _write_json(result_path, {"artifact_path": str(artifact), "artifact_sha256": digest,
                              "valid_roc_auc": candidate.valid_roc_auc, "fit_seconds": candidate.fit_seconds,
                              "params": candidate.params, "pid": os.getpid()})
    return 0


def _write_json(path: Path, payload: dict) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1]))
