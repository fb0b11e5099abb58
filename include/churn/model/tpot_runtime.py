"""What runs around a TPOT fit: readable progress lines for the task log, and a remote Dask cluster TPOT accepts."""

from __future__ import annotations

import logging
import threading
import time

import pandas as pd

log = logging.getLogger("churn.model.automl")  # the search's log lines keep the name they always had


class SearchProgress:
    """Logs a TPOT search's progress (generation, pipelines evaluated, best score, time left) while it runs.

    TPOT 1.x only draws a tqdm bar; this thread reads the estimator's evolver
    (``_evolver_instance``: its ``generation`` and ``population.evaluated_individuals``)
    and writes ordinary log lines, so the progress shows in the Airflow task log.
    A line is written when a generation finishes and at least every ``every_seconds``.
    """

    def __init__(self, search, budget_minutes: float, every_seconds: float = 15.0, poll_seconds: float = 1.0):
        self.search = search
        self.budget_seconds = budget_minutes * 60.0
        self.every_seconds = every_seconds
        self.poll_seconds = poll_seconds
        self.lines = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tpot-progress", daemon=True)
        self._started = 0.0

    def __enter__(self) -> "SearchProgress":
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.report(final=True)

    def snapshot(self) -> dict | None:
        """Current generation, evaluated pipelines and best score, or None before the search starts."""
        evolver = getattr(self.search, "_evolver_instance", None)
        if evolver is None or getattr(evolver, "population", None) is None:
            return None
        try:
            # The search thread mutates this frame in place; read a copy and tolerate a torn read.
            frame = evolver.population.evaluated_individuals.copy()
            names = list(evolver.objective_names)
            raw = frame[names[0]] if len(frame) else pd.Series(dtype=object)
            scores = pd.to_numeric(raw, errors="coerce")
            failed = int(raw.isin(["INVALID", "TIMEOUT"]).sum())
        except (KeyError, ValueError, IndexError, AttributeError, TypeError, RuntimeError):
            return None
        best = float(scores.max()) if scores.notna().any() else None
        return {"generation": int(evolver.generation), "evaluated": int(scores.notna().sum()), "failed": failed,
                "best": best, "generation_running": self._running(getattr(evolver, "_client", None))}

    @staticmethod
    def _running(client) -> int | None:
        """Pipeline evaluations in flight, from the Dask client's futures (None without a client).

        TPOT records scores only when a whole generation is back, which can take minutes;
        its evaluation futures (key prefix ``eval_objective_list``) show the search is busy inside one.
        """
        if client is None:
            return None
        try:
            return sum(st.status == "pending" for key, st in list(client.futures.items())
                       if str(key).startswith("eval_objective_list"))
        except (AttributeError, RuntimeError):  # dict changed size while the client's loop updated it
            return None

    def report(self, final: bool = False) -> None:
        """Write one progress line."""
        state = self.snapshot()
        elapsed = time.monotonic() - self._started
        left = max(self.budget_seconds - elapsed, 0.0)
        if state is None:
            log.info("TPOT progress: starting (%.0f s elapsed, %.0f s of budget left)", elapsed, left)
        else:
            inside = "" if final or state["generation_running"] is None else (
                f" ({state['generation_running']} pipeline evaluations running)")
            log.info(
                "TPOT progress%s: generation %s%s, %s pipelines scored (%s failed/timed out), best CV ROC AUC so far "
                "%s, %.0f s elapsed, %.0f s of budget left",
                " (final)" if final else "", state["generation"], inside, state["evaluated"], state["failed"],
                "n/a" if state["best"] is None else f"{state['best']:.4f}", elapsed, left,
            )
        self.lines += 1

    def _run(self) -> None:
        last_line = time.monotonic()
        last_generation = None
        while not self._stop.wait(self.poll_seconds):
            state = self.snapshot()
            generation = None if state is None else state["generation"]
            if generation != last_generation or time.monotonic() - last_line >= self.every_seconds:
                self.report()
                last_line = time.monotonic()
                last_generation = generation


class _RemoteCluster:
    """Stand-in for ``client.cluster`` when the client was opened by address.

    TPOT 1.1 sizes its submission queue with ``len(client.cluster.workers)``, but a
    ``distributed.Client(address)`` has ``cluster = None`` (only clients built from a
    cluster object have one), so TPOT crashes with AttributeError on a remote scheduler.
    One slot per worker thread keeps every thread busy, as TPOT's own local cluster does.
    """

    def __init__(self, slots: int):
        self.workers = list(range(max(slots, 1)))


def attach_remote_cluster(client) -> int:
    """Give an address-opened Dask client the ``cluster.workers`` TPOT reads; returns the slot count."""
    workers = client.scheduler_info().get("workers", {})
    slots = sum(int(w.get("nthreads", 1)) for w in workers.values())
    if getattr(client, "cluster", None) is None:
        client.cluster = _RemoteCluster(slots)
    return max(slots, 1)
