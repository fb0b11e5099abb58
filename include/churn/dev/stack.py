"""Airflow the way production runs it, on one machine: real components, a real executor, the REST API.

``make demo`` and ``make cluster`` use this module; so do the scheduler, Celery and browser tests.

- **local** (``make demo``): scheduler (LocalExecutor), dag-processor, api-server and triggerer
  as four processes, Airflow's metadata in the embedded PostgreSQL (database ``airflow``).
- **celery** (``make cluster``): the same four with CeleryExecutor, plus Celery workers
  (``airflow celery worker``, prefork, Redis database ``CHURN_CELERY_BROKER_DB`` of the embedded
  Redis as broker, never the score keyspace) and a Dask scheduler with worker processes that the
  TPOT search uses (``CHURN_DASK_SCHEDULER_ADDRESS`` is set for every component). Dask speaks
  mutual TLS with a key generated into ``<state>/dask-tls/`` (0600): a Dask worker runs whatever a
  client sends, so only processes that can read that key may join or submit.

No Docker and no root: the servers are the embedded ones (``churn.dev.services``), every process is
started here with its pid and log under ``<state>/stack/``, and ``stop`` ends them (process group
by process group). Runs are triggered and watched through Airflow's REST API (``/api/v2``) with a
token from the simple auth manager (user ``admin``; the launcher generates its password into
``<AIRFLOW_HOME>/simple_auth_manager_passwords.json.generated`` before the api-server starts, so
Airflow never prints it into a log).

Private by default: the state folder and AIRFLOW_HOME are 0700 and every component starts with umask
077, so logs, airflow.cfg, run folders, exports and snapshots are readable by their owner only; files
an older checkout left readable are closed on start. Dask listens and serves its dashboards on
loopback only, and its processes get no database URL or password in their environment::

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
import stat
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path

from churn.config import PROJECT_ROOT
from churn.dev.airflow_api import AirflowRestApi, StackError, http_json
from churn.dev.services import private_dir
from churn.fileio import write_text_atomic

log = logging.getLogger(__name__)

REPO_ROOT = PROJECT_ROOT  # the checkout: dags/, plugins/ and include/ live there
AIRFLOW_COMPONENTS = ("scheduler", "dag-processor", "api-server", "triggerer")
EXECUTORS = ("local", "celery")
DAG_ID = "churn_nightly"
def _bin(name: str) -> str:
    """An executable of this interpreter's environment (airflow, dask)."""
    return str(Path(sys.executable).parent / name)


@dataclass
class AirflowStack(AirflowRestApi):
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
        """Address of the Dask scheduler (celery topology only; mutual TLS)."""
        return f"tls://127.0.0.1:{self.dask_scheduler_port}"

    @property
    def dask_tls_dir(self) -> Path:
        """The Dask cluster's certificate and key (mode 0600): who can read them may use the cluster."""
        return self.state_dir / "dask-tls"

    @property
    def password_file(self) -> Path:
        """The simple auth manager's generated passwords (JSON: user -> password)."""
        return self.home / "simple_auth_manager_passwords.json.generated"

    # --- environment ---------------------------------------------------------------
    def dask_tls_env(self) -> dict[str, str]:
        """Dask settings (``DASK_*``) for mutual TLS with the stack's certificate: paths only, no key material."""
        cert, key = self.dask_tls_dir / "cert.pem", self.dask_tls_dir / "key.pem"
        env = {"DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
               "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(cert)}
        for role in ("SCHEDULER", "WORKER", "CLIENT"):
            env[f"DASK_DISTRIBUTED__COMM__TLS__{role}__CERT"] = str(cert)
            env[f"DASK_DISTRIBUTED__COMM__TLS__{role}__KEY"] = str(key)
        return env

    def dask_security(self):
        """A ``distributed.Security`` presenting the stack's certificate, for a Dask client in this process."""
        from distributed import Security

        cert, key = str(self.dask_tls_dir / "cert.pem"), str(self.dask_tls_dir / "key.pem")
        return Security(require_encryption=True, tls_ca_file=cert, tls_client_cert=cert, tls_client_key=key)

    def dask_env(self) -> dict[str, str]:
        """Environment of the Dask scheduler and workers: what a pipeline fit needs, no database URL or password."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CHURN_", "DASK_"))}
        env.update(
            PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "include"), *filter(None, [os.environ.get("PYTHONPATH")])]),
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            NO_COLOR="1",
            **self.dask_tls_env(),
        )
        return env

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
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(self.password_file),
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
                **self.dask_tls_env(),  # the TPOT search's Dask client presents the stack's certificate
            )
        env.update({f"CHURN_{k.upper()}": str(v) for k, v in self.churn_env.items()})
        env.update(self.extra_env)
        if worker_name:
            env["CHURN_WORKER_NAME"] = worker_name
        return env

    # --- processes -----------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> int:
        """Start one component in its own session (so stop can signal its whole group); record its pid."""
        private_dir(self.run_dir)
        pid_file = self.run_dir / f"{name}.pid"
        if pid_file.exists() and _alive(int(pid_file.read_text())):
            log.info("%s already running (pid %s)", name, pid_file.read_text().strip())
            return int(pid_file.read_text())
        with _private_append(self.run_dir / f"{name}.log") as out:
            # umask 077: whatever the component writes (logs, airflow.cfg, run folders, exports) is its owner's only
            proc = subprocess.Popen(argv, env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, umask=0o077)
        write_text_atomic(pid_file, str(proc.pid), mode=0o600)
        return proc.pid

    def prepare(self) -> None:
        """Private folders (closing what an older checkout left readable) and the UI's admin password."""
        for folder in (self.state_dir, self.home, self.run_dir):
            private_dir(folder)
        self.ensure_admin_password()  # first: it replaces a password that was readable by others
        close_tree(self.state_dir)
        if self.executor == "celery":
            ensure_dask_certificate(self.dask_tls_dir)

    def ensure_admin_password(self) -> str:
        """The simple auth manager's admin password, generated here (0600) so that Airflow never logs one.

        The api-server prints a password it generates itself into its log; given a file that already
        names ``admin``, it only reads it. A file that was readable by others (older checkouts, whose
        api-server.log also held it) is replaced by a new password.
        """
        import secrets

        path = self.password_file
        try:
            exposed = path.stat().st_mode & 0o077 != 0
            current = json.loads(path.read_text()) if not exposed else {}
        except (OSError, ValueError):
            current = {}
        if not isinstance(current, dict) or not current.get("admin"):
            current = {"admin": secrets.token_urlsafe(18)}
            private_dir(path.parent)
            write_text_atomic(path, json.dumps(current) + "\n", mode=0o600)
        return current["admin"]

    def migrate(self) -> None:
        """Create or upgrade Airflow's metadata database (idempotent)."""
        self.prepare()
        out = self.run_dir / "migrate.log"
        with _private_append(out, truncate=True) as handle:
            result = subprocess.run([_bin("airflow"), "db", "migrate"], env=self.env(), cwd=REPO_ROOT,
                                    stdout=handle, stderr=subprocess.STDOUT, timeout=600, umask=0o077)
        if result.returncode != 0:
            raise StackError(f"airflow db migrate failed: see {out}\n{_tail(out)}")

    def start(self, timeout: float = 240) -> None:
        """Migrate, then start every component of the topology and wait until the API answers."""
        self.migrate()
        env = self.env()
        if self.executor == "celery":
            # loopback only, dashboards included (':0' would listen on every interface)
            dask_env = self.dask_env()
            self._spawn("dask-scheduler", [_bin("dask"), "scheduler", "--host", "127.0.0.1", "--port",
                                           str(self.dask_scheduler_port), "--dashboard-address", "127.0.0.1:0"],
                        dask_env)
            for n in range(1, self.dask_workers + 1):
                self._spawn(f"dask-worker-{n}", [_bin("dask"), "worker", self.dask_address, "--nthreads", "1",
                                                 "--name", f"dask-worker-{n}", "--host", "127.0.0.1",
                                                 "--dashboard-address", "127.0.0.1:0"], dask_env)
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


def ensure_dask_certificate(folder: Path, days: int = 3650) -> None:
    """A self-signed certificate and its key (0600) in ``folder``: the CA and the identity of every Dask role.

    One certificate for scheduler, workers and clients, as ``distributed.Security.temporary`` makes, but on
    disk so that separate processes share it; generated once per state folder (renewed 30 days before expiry).
    """
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    now = dt.datetime.now(dt.timezone.utc)
    if cert_path.exists() and key_path.exists():
        expires = x509.load_pem_x509_certificate(cert_path.read_bytes()).not_valid_after_utc
        if expires - now > dt.timedelta(days=30):
            return
    private_dir(folder)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "churn-dask")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    write_text_atomic(key_path, key_pem, mode=0o600)
    write_text_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM).decode(), mode=0o600)


def _private_append(path: Path, truncate: bool = False):
    """``path`` opened for binary append (or rewrite), created 0600 and closed to others if it already existed."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if truncate else os.O_APPEND)
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "wb")


def close_tree(root: Path) -> None:
    """Remove group and other permissions from everything under ``root`` (symlinks are not followed)."""
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            try:
                mode = path.lstat().st_mode
                if not stat.S_ISLNK(mode) and mode & 0o077:
                    path.chmod(stat.S_IMODE(mode) & 0o700)
            except OSError:
                pass  # vanished meanwhile, or not ours (a server's own files)


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
    return AirflowStack(
        state_dir=cfg.state_dir, churn_pg_url=services.postgres_url, redis_url=services.redis_url,
        metadata_url=services.pg_url("airflow", driver="postgresql+psycopg2"),
        api_port=cfg.airflow_port, executor=chosen, celery_broker_url=services.redis_url_db(cfg.celery_broker_db),
        celery_workers=cfg.celery_workers, dask_scheduler_port=cfg.dask_scheduler_port,
        dask_workers=cfg.dask_workers,
        # carried over to every component: the CHURN_* settings of the shell that started the stack
        churn_env={k[len("CHURN_"):].lower(): v for k, v in os.environ.items()
                   if k.startswith("CHURN_") and k not in ("CHURN_STATE_DIR",)},
    )


def build_parser() -> argparse.ArgumentParser:
    """The CLI's parser (also read by the docs' CLI reference)."""
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
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI: start / stop / status / run."""
    from churn.config import ChurnConfig

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    os.umask(0o077)  # what this launcher and the servers and components it starts write is private
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
        write_text_atomic(marker, args.executor, mode=0o600)
        print(f"starting Airflow ({args.executor} executor); logs in {stack.run_dir}", flush=True)
        stack.start()
        print(f"Airflow UI: {stack.base_url}  (login admin / {stack.password()})")
        if args.executor == "celery":
            print(f"Celery workers: {stack.celery_workers} (broker {_without_password(stack.celery_broker_url)}); "
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
    if state == "success":
        # Between nights: the event path goes live once a batch is served.
        stack.unpause("churn_rescore")
        print("churn_rescore is on: a complaint in src.support_contacts (or 'python -m churn.data.outbox enqueue "
              "<customer id>') is re-scored within seconds")
    return 0 if state == "success" else 1


def _without_password(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for printing)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


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
