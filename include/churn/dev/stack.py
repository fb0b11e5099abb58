"""Airflow the way production runs it, on one machine: real components, a real executor, the REST API.

``make demo`` and ``make cluster`` use this module; so do the scheduler, Celery and browser tests.

- **local** (``make demo``): scheduler (LocalExecutor), dag-processor, api-server and triggerer
  as four processes, Airflow's metadata in the embedded PostgreSQL (database ``airflow``).
- **celery** (``make cluster``): the same four with CeleryExecutor, plus Celery workers
  (``airflow celery worker``, prefork, Redis database ``CHURN_CELERY_BROKER_DB`` of the embedded
  Redis as broker, never the score keyspace) and a Dask scheduler with worker processes that the
  TPOT search uses (``CHURN_DASK_SCHEDULER_ADDRESS`` is set for every component).

No Docker and no root: the servers are the embedded ones (``churn.dev.services``), every process is
started here with its pid and log under ``<state>/stack/``, and ``stop`` ends them (process group
by process group). Runs are triggered and watched through Airflow's REST API (``/api/v2``) with a
token from the simple auth manager (user ``admin``; its generated password is in
``<AIRFLOW_HOME>/simple_auth_manager_passwords.json.generated``)::

    python -m churn.dev.stack start [--executor celery]    # prints the UI URL and login
    python -m churn.dev.stack run --as-of 2026-11-20 [--conf '{"retrain": true}']
    python -m churn.dev.stack stop
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Callable

from churn.config import PROJECT_ROOT

log = logging.getLogger(__name__)

REPO_ROOT = PROJECT_ROOT  # the checkout: dags/, plugins/ and include/ live there
AIRFLOW_COMPONENTS = ("scheduler", "dag-processor", "api-server", "triggerer")
EXECUTORS = ("local", "celery")
DAG_ID = "churn_nightly"
FINISHED = ("success", "failed")


class StackError(RuntimeError):
    """A component did not start, or a run could not be triggered or watched; the message says where to look."""


def _bin(name: str) -> str:
    """An executable of this interpreter's environment (airflow, dask)."""
    return str(Path(sys.executable).parent / name)


@dataclass
class AirflowStack:
    """One machine's Airflow deployment: where its state lives, which servers it uses, how it executes.

    ``churn_pg_url`` / ``redis_url`` are the platform's data (connections ``churn_postgres`` /
    ``churn_redis``); ``metadata_url`` is Airflow's own database (SQLAlchemy URL).
    """

    state_dir: Path
    churn_pg_url: str
    redis_url: str
    metadata_url: str
    api_port: int = 8080
    executor: str = "local"
    celery_broker_url: str = ""
    celery_workers: int = 2
    dask_scheduler_port: int = 8786
    dask_workers: int = 2
    parallelism: int = 4
    churn_env: dict[str, str] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)
    dag_id: str = DAG_ID
    dags_folder: Path = REPO_ROOT / "dags"

    # --- places ------------------------------------------------------------------
    @property
    def home(self) -> Path:
        """AIRFLOW_HOME (airflow.cfg with the shared JWT secret, logs, generated passwords)."""
        return self.state_dir / "airflow"

    @property
    def run_dir(self) -> Path:
        """Pid files and component logs."""
        return self.state_dir / "stack"

    @property
    def base_url(self) -> str:
        """URL of the api-server (UI and REST API)."""
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def dask_address(self) -> str:
        """Address of the Dask scheduler (celery topology only)."""
        return f"tcp://127.0.0.1:{self.dask_scheduler_port}"

    @property
    def password_file(self) -> Path:
        """The simple auth manager's generated passwords (JSON: user -> password)."""
        return self.home / "simple_auth_manager_passwords.json.generated"

    # --- environment ---------------------------------------------------------------
    def env(self, worker_name: str = "") -> dict[str, str]:
        """Environment of every Airflow process of this stack (no secrets beyond the local servers' URLs)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CHURN_"))}
        env.update(
            AIRFLOW_HOME=str(self.home),
            AIRFLOW__CORE__DAGS_FOLDER=str(self.dags_folder),
            AIRFLOW__CORE__PLUGINS_FOLDER=str(REPO_ROOT / "plugins"),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__CORE__EXECUTOR="CeleryExecutor" if self.executor == "celery" else "LocalExecutor",
            AIRFLOW__CORE__PARALLELISM=str(self.parallelism),
            AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="True",
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{self.base_url}/execution/",
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=self.metadata_url,
            AIRFLOW__API__HOST="127.0.0.1",
            AIRFLOW__API__PORT=str(self.api_port),
            AIRFLOW__API__BASE_URL=self.base_url,
            AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT="30",
            AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="10",
            AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="2",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="admin:admin",
            AIRFLOW_CONN_CHURN_POSTGRES=self.churn_pg_url,
            AIRFLOW_CONN_CHURN_REDIS=self.redis_url,
            CHURN_STATE_DIR=str(self.state_dir),
            PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "include"), *filter(None, [os.environ.get("PYTHONPATH")])]),
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            NO_COLOR="1",
        )
        if self.executor == "celery":
            env.update(
                AIRFLOW__CELERY__BROKER_URL=self.celery_broker_url,
                AIRFLOW__CELERY__RESULT_BACKEND="db+" + self.metadata_url.replace("+psycopg2", ""),
                AIRFLOW__CELERY__WORKER_CONCURRENCY="1",
                AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER="1",
                CHURN_DASK_SCHEDULER_ADDRESS=self.dask_address,
            )
        env.update({f"CHURN_{k.upper()}": str(v) for k, v in self.churn_env.items()})
        env.update(self.extra_env)
        if worker_name:
            env["CHURN_WORKER_NAME"] = worker_name
        return env

    # --- processes -----------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> int:
        """Start one component in its own session (so stop can signal its whole group); record its pid."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        pid_file = self.run_dir / f"{name}.pid"
        if pid_file.exists() and _alive(int(pid_file.read_text())):
            log.info("%s already running (pid %s)", name, pid_file.read_text().strip())
            return int(pid_file.read_text())
        with open(self.run_dir / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(argv, env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        pid_file.write_text(str(proc.pid))
        return proc.pid

    def migrate(self) -> None:
        """Create or upgrade Airflow's metadata database (idempotent)."""
        self.home.mkdir(parents=True, exist_ok=True)
        out = self.run_dir / "migrate.log"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(out, "wb") as handle:
            result = subprocess.run([_bin("airflow"), "db", "migrate"], env=self.env(), cwd=REPO_ROOT,
                                    stdout=handle, stderr=subprocess.STDOUT, timeout=600)
        if result.returncode != 0:
            raise StackError(f"airflow db migrate failed: see {out}\n{_tail(out)}")

    def start(self, timeout: float = 240) -> None:
        """Migrate, then start every component of the topology and wait until the API answers."""
        self.migrate()
        env = self.env()
        if self.executor == "celery":
            self._spawn("dask-scheduler", [_bin("dask"), "scheduler", "--host", "127.0.0.1", "--port",
                                           str(self.dask_scheduler_port), "--dashboard-address", ":0"], env)
            for n in range(1, self.dask_workers + 1):
                self._spawn(f"dask-worker-{n}", [_bin("dask"), "worker", self.dask_address, "--nthreads", "1",
                                                 "--name", f"dask-worker-{n}", "--host", "127.0.0.1",
                                                 "--dashboard-address", ":0"], env)
        for component in AIRFLOW_COMPONENTS:
            self._spawn(component, [_bin("airflow"), component], env)
        if self.executor == "celery":
            for n in range(1, self.celery_workers + 1):
                name = f"celery-worker-{n}"
                worker_env = {**self.env(worker_name=name),
                              "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())}
                self._spawn(name, [_bin("airflow"), "celery", "worker", "--celery-hostname", f"{name}@%h",
                                   "--concurrency", "1"], worker_env)
        self.wait_healthy(timeout)

    def pids(self) -> dict[str, int]:
        """Recorded components and their pids (whether alive or not)."""
        if not self.run_dir.exists():
            return {}
        return {p.stem: int(p.read_text()) for p in sorted(self.run_dir.glob("*.pid")) if p.read_text().strip()}

    def stop(self, grace_seconds: float = 20) -> list[str]:
        """SIGTERM every component's process group, SIGKILL what remains after the grace period."""
        stopped = []
        pids = self.pids()
        for name, pid in pids.items():
            if _alive(pid):
                _signal_group(pid, signal.SIGTERM)
                stopped.append(name)
        deadline = time.monotonic() + grace_seconds
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids.values()):
            time.sleep(0.3)
        for name, pid in pids.items():
            _signal_group(pid, signal.SIGKILL)  # the group may outlive its leader (task processes)
            (self.run_dir / f"{name}.pid").unlink(missing_ok=True)
        return stopped

    def dead_components(self) -> list[str]:
        """Components whose process has exited (a crashed scheduler shows here, with its log)."""
        return [name for name, pid in self.pids().items() if not _alive(pid)]

    # --- REST API ------------------------------------------------------------------
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

    def wait_healthy(self, timeout: float = 240) -> None:
        """Until the api-server answers, the password exists and the DAG is parsed; fail on a dead component."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = self.dead_components()
            if dead:
                raise StackError(f"{', '.join(dead)} exited: see {self.run_dir / (dead[0] + '.log')}\n"
                                 f"{_tail(self.run_dir / (dead[0] + '.log'))}")
            if http_json(f"{self.base_url}/api/v2/monitor/health")[0] == 200 and self.password_file.exists():
                try:
                    if http_json(f"{self.base_url}/api/v2/dags/{self.dag_id}", self.token())[0] == 200:
                        return
                except StackError:
                    pass
            time.sleep(2)
        raise StackError(f"Airflow was not ready within {timeout:.0f} s: see the logs in {self.run_dir}")

    def trigger(self, logical_date: str, conf: dict[str, Any] | None = None, unpause: bool = True) -> str:
        """Trigger ``churn_nightly`` for ``logical_date`` (ISO) through the REST API; returns the run id."""
        token = self.token()
        if unpause:
            http_json(f"{self.base_url}/api/v2/dags/{self.dag_id}", token, {"is_paused": False}, method="PATCH")
        status, body = http_json(f"{self.base_url}/api/v2/dags/{self.dag_id}/dagRuns", token,
                                 {"logical_date": logical_date, "conf": conf or {}})
        if status == 409:
            # That date already has a run: re-run it the Airflow way (clear it), which every task allows
            # because each is idempotent for its logical date. A new conf cannot be given to an old run.
            return self._rerun(logical_date, token)
        if status not in (200, 201):
            raise StackError(f"trigger of {self.dag_id} for {logical_date} refused (HTTP {status}): {body}")
        return body["dag_run_id"]

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

    def task_instances(self, run_id: str, token: str | None = None) -> list[dict]:
        """Task instances of a run (mapped ones once per map index)."""
        quoted = urllib.parse.quote(run_id, safe="")
        status, body = http_json(f"{self.base_url}/api/v2/dags/{self.dag_id}/dagRuns/{quoted}/taskInstances?limit=200",
                                 token or self.token())
        return body.get("task_instances", []) if status == 200 else []

    def xcom(self, run_id: str, task_id: str, map_index: int = -1, token: str | None = None) -> Any:
        """The return value a task instance pushed."""
        quoted = urllib.parse.quote(run_id, safe="")
        status, body = http_json(f"{self.base_url}/api/v2/dags/{self.dag_id}/dagRuns/{quoted}/taskInstances/{task_id}"
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of this process counts as gone
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def free_port() -> int:
    """A TCP port on loopback that nobody listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def stack_from_config(executor: str | None = None) -> AirflowStack:
    """The stack of this checkout's state folder, on the embedded servers (``make demo`` / ``make cluster``)."""
    from churn.config import ChurnConfig
    from churn.dev.services import EmbeddedServices

    cfg = ChurnConfig.from_env()
    services = EmbeddedServices(cfg.state_dir, cfg.postgres_port, cfg.redis_port)
    marker = cfg.state_dir / "stack" / "executor"
    chosen = executor or (marker.read_text().strip() if marker.exists() else "local")
    if chosen not in EXECUTORS:
        raise StackError(f"executor {chosen!r} is not one of {EXECUTORS}")
    base = services.redis_url.rsplit("/", 1)[0]
    return AirflowStack(
        state_dir=cfg.state_dir, churn_pg_url=services.postgres_url, redis_url=services.redis_url,
        metadata_url=services.pg_url("airflow", driver="postgresql+psycopg2"),
        api_port=cfg.airflow_port, executor=chosen, celery_broker_url=f"{base}/{cfg.celery_broker_db}",
        celery_workers=cfg.celery_workers, dask_scheduler_port=cfg.dask_scheduler_port,
        dask_workers=cfg.dask_workers,
        # carried over to every component: the CHURN_* settings of the shell that started the stack
        churn_env={k[len("CHURN_"):].lower(): v for k, v in os.environ.items()
                   if k.startswith("CHURN_") and k not in ("CHURN_STATE_DIR",)},
    )


def main(argv: list[str] | None = None) -> int:
    """CLI: start / stop / status / run."""
    from churn.config import ChurnConfig

    parser = argparse.ArgumentParser(prog="python -m churn.dev.stack")
    sub = parser.add_subparsers(dest="action", required=True)
    start_cmd = sub.add_parser("start", help="start the embedded servers and Airflow's components")
    start_cmd.add_argument("--executor", choices=EXECUTORS, default="local")
    sub.add_parser("stop", help="stop Airflow's components (the servers: python -m churn.dev.services stop)")
    status_cmd = sub.add_parser("status", help="list components and whether they run")
    status_cmd.add_argument("--login", action="store_true", help="only print the UI's URL and login")
    run_cmd = sub.add_parser("run", help="trigger churn_nightly through the REST API and watch it")
    run_cmd.add_argument("--as-of", type=date.fromisoformat, required=True)
    run_cmd.add_argument("--conf", default="{}", help="JSON trigger parameters, e.g. '{\"retrain\": true}'")
    run_cmd.add_argument("--timeout-minutes", type=float, default=30)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    cfg = ChurnConfig.from_env()
    if args.action == "start":
        from churn.dev.services import EmbeddedServices, ensure_database

        services = EmbeddedServices(cfg.state_dir, cfg.postgres_port, cfg.redis_port)
        services.start()
        ensure_database(services.pg_url("postgres"), "airflow")  # Airflow's metadata, beside the churn database
        stack = stack_from_config(args.executor)
        running = stack.pids() and not stack.dead_components()
        marker = stack.run_dir / "executor"
        if running and marker.exists() and marker.read_text().strip() != args.executor:
            raise SystemExit(f"a {marker.read_text().strip()} stack is running: 'make stop' first")
        stack.run_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(args.executor)
        print(f"starting Airflow ({args.executor} executor); logs in {stack.run_dir}", flush=True)
        stack.start()
        print(f"Airflow UI: {stack.base_url}  (login admin / {stack.password()})")
        if args.executor == "celery":
            print(f"Celery workers: {stack.celery_workers} (broker {stack.celery_broker_url}); "
                  f"Dask scheduler {stack.dask_address} with {stack.dask_workers} workers")
        return 0
    stack = stack_from_config()
    if args.action == "stop":
        stopped = stack.stop()
        print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
        return 0
    if args.action == "status" and args.login:
        print(f"Airflow UI still running: {stack.base_url}  (login admin / {stack.password()}); "
              "'make stop' stops Airflow and the embedded servers")
        return 0
    if args.action == "status":
        for name, pid in stack.pids().items():
            print(f"{name:<18} pid {pid:<8} {'running' if _alive(pid) else 'exited'}")
        return 0
    logical_date = _logical_date(args.as_of, cfg.schedule_cron)
    run_id = stack.trigger(logical_date, json.loads(args.conf))
    print(f"triggered {DAG_ID} run {run_id} (logical date {logical_date}) through {stack.base_url}/api/v2",
          flush=True)
    state = stack.wait_run(run_id, args.timeout_minutes * 60, progress=lambda line: print(line, flush=True))
    print(f"run {run_id}: {state}  ({stack.base_url}/dags/{DAG_ID}/runs/{urllib.parse.quote(run_id, safe='')})")
    return 0 if state == "success" else 1


def _logical_date(as_of: date, cron: str, now: datetime | None = None) -> str:
    """Logical date of a run for ``as_of``: the schedule's tick that day, or now if that tick is still ahead.

    The scheduler never starts a run whose logical date is in the future; before 02:00 UTC the demo's
    run is therefore logged at the current time (same as-of date), and the scheduled tick runs later.
    """
    now = now or datetime.now(timezone.utc)
    tick = datetime.fromisoformat(f"{as_of.isoformat()}T{_cron_time(cron)}+00:00")
    moment = min(tick, now.replace(microsecond=0))
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _cron_time(cron: str) -> str:
    """HH:MM:SS of a daily cron expression ('0 2 * * *' -> 02:00:00); midnight for anything else.

    A demo run triggered at the nightly tick's own logical date *is* that night's run: when the
    DAG is unpaused, the scheduler does not create a second run for the same date.
    """
    parts = cron.split()
    if len(parts) == 5 and parts[0].isdigit() and parts[1].isdigit():
        return f"{int(parts[1]):02d}:{int(parts[0]):02d}:00"
    return "00:00:00"


if __name__ == "__main__":
    sys.exit(main())
