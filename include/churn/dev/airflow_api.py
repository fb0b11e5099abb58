"""Airflow's REST API (``/api/v2``) as the demo and the scheduler tests use it: token, trigger, watch, XCom."""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable

log = logging.getLogger(__name__)

FINISHED = ("success", "failed")


class StackError(RuntimeError):
    """A component did not start, or a run could not be triggered or watched; the message says where to look."""


class AirflowRestApi:
    """REST calls against one api-server; the class using it provides ``base_url``, ``dag_id``,
    ``password_file``, ``run_dir`` and ``dead_components()``."""

    def password(self) -> str:
        """The admin password the api-server generated."""
        return json.loads(self.password_file.read_text())["admin"]

    def token(self) -> str:
        """A JWT for the REST API (admin)."""
        status, body = http_json(f"{self.base_url}/auth/token",
                                 data={"username": "admin", "password": self.password()})
        if status not in (200, 201) or "access_token" not in body:
            raise StackError(f"could not get an API token from {self.base_url}/auth/token (HTTP {status})")
        return body["access_token"]

    def trigger(self, logical_date: str, conf: dict[str, Any] | None = None, unpause: bool = True) -> str:
        """Trigger ``churn_nightly`` for ``logical_date`` (ISO) through the REST API; returns the run id."""
        token = self.token()
        # Create the run first, unpause after: unpausing first lets the scheduler insert its own scheduled run
        # for the same logical date at the moment the API inserts this one, and the loser of that race (seen:
        # the scheduler) dies on the unique (dag_id, logical_date) key. A run that exists is one the scheduler
        # skips; a run on a paused DAG simply waits for the unpause.
        status, body = http_json(f"{self.base_url}/api/v2/dags/{self.dag_id}/dagRuns", token,
                                 {"logical_date": logical_date, "conf": conf or {}})
        if status == 409:
            # That date already has a run: re-run it the Airflow way (clear it), which every task allows
            # because each is idempotent for its logical date. A new conf cannot be given to an old run.
            run_id = self._rerun(logical_date, token)
        elif status in (200, 201):
            run_id = body["dag_run_id"]
        else:
            raise StackError(f"trigger of {self.dag_id} for {logical_date} refused (HTTP {status}): {body}")
        if unpause:
            self.unpause(self.dag_id)
        return run_id

    def unpause(self, dag_id: str, wait_seconds: float = 120) -> None:
        """Unpause ``dag_id`` (for example ``churn_rescore``, which its asset watcher then schedules), waiting up to
        ``wait_seconds`` for the dag-processor to have parsed it (404 until then)."""
        deadline = time.monotonic() + wait_seconds
        while True:
            status, body = http_json(f"{self.base_url}/api/v2/dags/{dag_id}", self.token(), {"is_paused": False},
                                     method="PATCH")
            if status == 200:
                return
            if status != 404 or time.monotonic() > deadline:
                raise StackError(f"could not unpause {dag_id} (HTTP {status}): {body}")
            time.sleep(1)

    def dag_runs(self, dag_id: str) -> list[dict]:
        """Runs of ``dag_id``, newest first (id, state, run type, start and end)."""
        status, body = http_json(f"{self.base_url}/api/v2/dags/{dag_id}/dagRuns?order_by=-run_after&limit=100",
                                 self.token())
        return body.get("dag_runs", []) if status == 200 else []

    def _rerun(self, logical_date: str, token: str) -> str:
        """Clear every task of the existing run at ``logical_date`` so the scheduler runs it again."""
        when = urllib.parse.quote(logical_date.replace("Z", "+00:00"), safe="")
        status, body = http_json(f"{self.base_url}/api/v2/dags/{self.dag_id}/dagRuns?logical_date_gte={when}"
                                 f"&logical_date_lte={when}", token)
        runs = body.get("dag_runs") or []
        if status != 200 or not runs:
            raise StackError(f"a run of {self.dag_id} exists for {logical_date} but could not be read (HTTP {status})")
        run_id = runs[0]["dag_run_id"]
        status, body = http_json(f"{self.base_url}/api/v2/dags/{self.dag_id}/clearTaskInstances", token,
                                 {"dag_run_id": run_id, "dry_run": False, "reset_dag_runs": True,
                                  "only_failed": False})
        if status != 200:
            raise StackError(f"could not clear run {run_id} for a re-run (HTTP {status}): {body}")
        log.info("run %s for %s existed: cleared it, the scheduler runs it again", run_id, logical_date)
        return run_id

    def run_state(self, run_id: str, token: str | None = None) -> str | None:
        """State of one run (queued, running, success, failed)."""
        quoted = urllib.parse.quote(run_id, safe="")
        return http_json(f"{self.base_url}/api/v2/dags/{self.dag_id}/dagRuns/{quoted}", token or self.token())[1].get(
            "state")

    def task_instances(self, run_id: str, token: str | None = None, dag_id: str | None = None) -> list[dict]:
        """Task instances of a run (mapped ones once per map index)."""
        quoted = urllib.parse.quote(run_id, safe="")
        status, body = http_json(f"{self.base_url}/api/v2/dags/{dag_id or self.dag_id}/dagRuns/{quoted}/"
                                 "taskInstances?limit=200", token or self.token())
        return body.get("task_instances", []) if status == 200 else []

    def xcom(self, run_id: str, task_id: str, map_index: int = -1, token: str | None = None,
             dag_id: str | None = None) -> Any:
        """The return value a task instance pushed."""
        quoted = urllib.parse.quote(run_id, safe="")
        status, body = http_json(f"{self.base_url}/api/v2/dags/{dag_id or self.dag_id}/dagRuns/{quoted}/"
                                 f"taskInstances/{task_id}"
                                 f"/xcomEntries/return_value?map_index={map_index}&deserialize=true",
                                 token or self.token())
        if status != 200:
            raise StackError(f"no XCom for {task_id}[{map_index}] of {run_id} (HTTP {status})")
        value = body.get("value")
        return json.loads(value) if isinstance(value, str) and value[:1] in "[{" else value

    def wait_run(self, run_id: str, timeout: float, progress: Callable[[str], None] | None = None,
                 may_die: tuple[str, ...] = ("celery-worker",)) -> str:
        """Poll until the run finishes; report each task state change through ``progress``; return the state.

        A component whose name starts with one of ``may_die`` may exit meanwhile (a lost Celery worker's
        tasks are retried by the others); any other dead component fails the wait at once.
        """
        deadline = time.monotonic() + timeout
        seen: dict[str, str] = {}
        token, token_at = self.token(), time.monotonic()
        while time.monotonic() < deadline:
            if time.monotonic() - token_at > 600:
                token, token_at = self.token(), time.monotonic()
            for ti in self.task_instances(run_id, token):
                name = ti["task_id"] + (f"[{ti['map_index']}]" if ti.get("map_index", -1) >= 0 else "")
                state = ti.get("state") or "none"
                if progress and seen.get(name) != state and state not in ("none", "scheduled"):
                    took = f" ({ti['duration']:.0f} s)" if ti.get("duration") and state in FINISHED else ""
                    progress(f"  {name:<28} {state}{took}")
                seen[name] = state
            state = self.run_state(run_id, token)
            if state in FINISHED:
                return state
            dead = [c for c in self.dead_components() if not c.startswith(may_die)]
            if dead:
                raise StackError(f"{', '.join(dead)} exited while {run_id} ran: see {self.run_dir}")
            time.sleep(3)
        raise StackError(f"run {run_id} did not finish within {timeout:.0f} s (see the UI: {self.base_url})")


def http_json(url: str, token: str | None = None, data: dict | None = None, method: str | None = None,
              timeout: float = 30) -> tuple[int, dict]:
    """One JSON request; (status, body), status 0 when nothing answers."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(url, data=json.dumps(data).encode() if data is not None else None,
                                     headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {}
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, {}
