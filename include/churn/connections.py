"""Where Postgres and Redis are: Airflow connections, environment URLs, or the embedded default.

One resolution for every caller (the DAG's tasks, the Churn page, the CLIs): :meth:`Resources.from_airflow`.
Order of precedence, so that one code path serves the demo and production alike:

1. ``CHURN_POSTGRES_URL`` / ``CHURN_REDIS_URL`` environment variables;
2. the Airflow connections ``churn_postgres`` / ``churn_redis``, looked up the way Airflow's hooks do
   (``BaseHook.get_connection``: ``AIRFLOW_CONN_*`` variables, secrets backends, the metadata database);
3. the embedded servers recorded in ``<state_dir>/services.json`` by ``make services``, only when
   ``CHURN_SYSTEMS=local`` (the default; ``churn.systems`` lists what each set uses).

A SQL source (``CHURN_SOURCE=sql``) reads its own database: ``CHURN_SOURCE_URL``, else the Airflow
connection ``CHURN_SOURCE_CONN_ID`` (default ``churn_source``), else the platform's Postgres.

The clients are built from the connection's fields here rather than by ``PostgresHook.get_conn()`` /
``RedisHook.get_conn()``: under SQLAlchemy 2 the Postgres provider hands out psycopg 3 connections
(the publish path uses psycopg2's COPY and ``execute_values``), and the Redis hook ignores a database
number given in the URI path (``redis://host:6379/3``), which the demo and the tests use.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

from churn.config import ChurnConfig

if TYPE_CHECKING:
    from redis import Redis as RedisClient

    from churn.db import PgConnection

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10  # a Postgres or Redis server that does not answer within this fails the attempt
DEFAULT_STATEMENT_TIMEOUT_S = 3600  # CHURN_PG_STATEMENT_TIMEOUT_S' default


def pg_connect(*args: Any, statement_timeout_s: int = DEFAULT_STATEMENT_TIMEOUT_S, **kwargs: Any):
    """``psycopg2.connect`` bounded in time: a connect timeout and a server-side ``statement_timeout``.

    An ``options`` or ``connect_timeout`` the caller (or the Airflow connection's extras) gives is kept;
    the statement timeout is appended to the options, so a statement that hangs (a lock never granted, a
    server that stalls) fails its task instead of blocking every later night behind ``max_active_runs=1``.
    """
    import psycopg2
    from psycopg2.extensions import parse_dsn

    if args:  # a URL or DSN: its own options (e.g. ?options=-c search_path=...) are kept, not overridden
        kwargs = {**parse_dsn(args[0]), **kwargs}
        args = ()
    kwargs.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
    if statement_timeout_s:
        bound = f"-c statement_timeout={int(statement_timeout_s) * 1000}"
        kwargs["options"] = f"{kwargs['options']} {bound}" if kwargs.get("options") else bound
    kwargs.setdefault("application_name", "churn")
    return psycopg2.connect(*args, **kwargs)


class ConnectionNotConfigured(RuntimeError):
    """No Postgres/Redis location is configured; the message lists the ways to set one."""


def _embedded(cfg: ChurnConfig, key: str) -> str | None:
    """The dev launcher's server URL (``make services``); only the ``local`` systems read it."""
    if cfg.systems != "local":
        return None
    path = cfg.state_dir / "services.json"
    if path.exists():
        return json.loads(path.read_text()).get(key)
    return None


def _url(store: str, env_var: str, conn_id: str, embedded_key: str, cfg: ChurnConfig) -> str:
    url = os.environ.get(env_var) or os.environ.get(f"AIRFLOW_CONN_{conn_id.upper()}") or _embedded(cfg, embedded_key)
    if not url:
        fix = (f"set {env_var} or create the Airflow connection '{conn_id}' (CHURN_SYSTEMS=production never "
               "uses the embedded servers)" if cfg.systems != "local" else
               f"set {env_var}, create the Airflow connection '{conn_id}', or start the embedded servers with "
               "'make services'")
        raise ConnectionNotConfigured(f"no {store} configured: {fix}")
    return url


def postgres_url(cfg: ChurnConfig | None = None) -> str:
    """libpq URL for the platform database (see module docstring for precedence)."""
    cfg = cfg or ChurnConfig.from_env()
    return _url("Postgres", "CHURN_POSTGRES_URL", cfg.postgres_conn_id, "postgres_url", cfg)


def redis_url(cfg: ChurnConfig | None = None) -> str:
    """redis-py URL for the serving Redis (see module docstring for precedence)."""
    cfg = cfg or ChurnConfig.from_env()
    return _url("Redis", "CHURN_REDIS_URL", cfg.redis_conn_id, "redis_url", cfg)


@dataclass(frozen=True)
class Resources:
    """Factories for the clients a stage needs; each call opens a fresh client."""

    pg: Callable[[], PgConnection]
    redis: Callable[[], RedisClient]
    source: Callable[[], PgConnection] | None = None
    """Connection to the database holding the source tables (None = the platform's Postgres: the demo, files)."""

    @contextlib.contextmanager
    def pg_session(self) -> Iterator[PgConnection]:
        """A fresh Postgres connection for one block, closed when the block ends (uncommitted work is rolled back)."""
        conn = self.pg()
        try:
            yield conn
        finally:
            conn.close()

    @contextlib.contextmanager
    def source_session(self) -> Iterator[PgConnection]:
        """A fresh connection to the source tables' database for one block (the platform's unless a SQL source)."""
        conn = (self.source or self.pg)()
        try:
            yield conn
        finally:
            conn.close()

    @classmethod
    def from_urls(cls, pg_url: str, redis_url_: str, source_url: str | None = None,
                  statement_timeout_s: int = DEFAULT_STATEMENT_TIMEOUT_S) -> "Resources":
        """Clients from explicit URLs (tests, CLI, benchmarks), bounded in time like the pipeline's."""
        return cls(pg=lambda: pg_connect(pg_url, statement_timeout_s=statement_timeout_s),
                   redis=lambda: _redis_client(redis_url_),
                   source=(lambda: pg_connect(source_url, statement_timeout_s=statement_timeout_s))
                   if source_url else None)

    @classmethod
    def from_airflow(cls, cfg: ChurnConfig | None = None) -> "Resources":
        """Clients as every caller resolves them: env URLs, else Airflow connections, else the embedded servers."""
        cfg = cfg or ChurnConfig.from_env()

        def pg():  # each store resolved on its own, when a client is asked for
            if not os.environ.get("CHURN_POSTGRES_URL"):
                conn = _psycopg2_from_airflow(cfg.postgres_conn_id, cfg.pg_statement_timeout_s)
                if conn is not None:
                    return conn
            return _psycopg2_from_url(cfg)

        def redis_client():
            if not os.environ.get("CHURN_REDIS_URL"):
                client = _redis_from_airflow(cfg.redis_conn_id)
                if client is not None:
                    return client
            return _redis_from_url(cfg)

        def source():
            url = os.environ.get("CHURN_SOURCE_URL")
            if url:
                return pg_connect(url, statement_timeout_s=cfg.pg_statement_timeout_s)
            conn = _psycopg2_from_airflow(cfg.source_conn_id, cfg.pg_statement_timeout_s)
            if conn is not None:
                return conn
            log.info("no connection '%s' (nor CHURN_SOURCE_URL): the SQL source reads the platform's Postgres",
                     cfg.source_conn_id)
            return pg()

        return cls(pg=pg, redis=redis_client, source=source if cfg.source_in_other_database else None)


def airflow_connection(conn_id: str) -> Any | None:
    """The Airflow connection ``conn_id`` as Airflow's hooks find it, or None (not defined, or no Airflow here)."""
    try:
        from airflow.sdk import BaseHook
        from airflow.sdk.exceptions import AirflowNotFoundException
    except ImportError:
        return None
    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None


def _psycopg2_from_url(cfg: ChurnConfig):
    return pg_connect(postgres_url(cfg), statement_timeout_s=cfg.pg_statement_timeout_s)


CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


def redis_from_url(url: str, socket_timeout: float = 30):
    """A redis-py client of ``url``: a ``RedisCluster`` for ``redis+cluster://`` (``rediss+cluster://``) URLs.

    A cluster URL names one or more nodes, comma-separated (``redis+cluster://user:pw@h1:7000,h2:7000/0``): the
    client asks the first that answers for the topology, so list several (a node may be down when a task
    starts). The database number must be 0.
    """
    import redis

    if url.startswith(CLUSTER_SCHEMES):
        from urllib.parse import unquote, urlsplit

        from redis.cluster import ClusterNode, RedisCluster

        parts = urlsplit(url.replace("+cluster", "", 1))
        if parts.path.strip("/") not in ("", "0"):
            raise ValueError(f"a Redis Cluster has only database 0: end the cluster URL with /0, not {parts.path}")
        auth, _, hosts = parts.netloc.rpartition("@")
        user, _, password = auth.partition(":")
        nodes = []
        for host in hosts.split(","):
            name, _, port = host.rpartition(":") if ":" in host else (host, "", "6379")
            nodes.append(ClusterNode(name, int(port or 6379)))
        return RedisCluster(startup_nodes=nodes, username=unquote(user) or None, password=unquote(password) or None,
                            ssl=parts.scheme == "rediss", socket_timeout=socket_timeout,
                            socket_connect_timeout=CONNECT_TIMEOUT_S)
    return redis.Redis.from_url(url, socket_timeout=socket_timeout, socket_connect_timeout=CONNECT_TIMEOUT_S)


def _redis_client(url: str):
    return redis_from_url(url)


def _redis_from_url(cfg: ChurnConfig):
    return _redis_client(redis_url(cfg))


def _redis_from_airflow(conn_id: str):
    """redis-py client from an Airflow connection (None if undefined); the db: extra ``db`` or the URI path."""
    conn = airflow_connection(conn_id)
    if conn is None:
        return None
    return redis_from_connection(conn)


def redis_from_connection(conn: Any):
    """A redis-py client from an Airflow connection: a ``RedisCluster`` when its extra says ``"cluster": true``."""
    import redis

    kwargs = redis_kwargs(conn)
    if (conn.extra_dejson or {}).get("cluster"):  # a node of a Redis Cluster: the client finds the others
        from redis.cluster import RedisCluster

        kwargs.pop("db")
        return RedisCluster(**kwargs)
    return redis.Redis(**kwargs)


def redis_kwargs(conn: Any) -> dict[str, Any]:
    """``redis.Redis`` arguments from an Airflow connection's fields (the db: extra ``db`` or the URI path)."""
    extra = conn.extra_dejson or {}
    schema = (conn.schema or "").strip("/")
    db = int(extra.get("db", schema if schema.isdigit() else 0))
    return {"host": conn.host or "127.0.0.1", "port": conn.port or 6379, "db": db, "password": conn.password or None,
            "username": conn.login or None, "ssl": bool(extra.get("ssl", False)), "socket_timeout": 30,
            "socket_connect_timeout": CONNECT_TIMEOUT_S}


def _psycopg2_from_airflow(conn_id: str, statement_timeout_s: int = DEFAULT_STATEMENT_TIMEOUT_S):
    """psycopg2 connection from an Airflow connection's fields (time-bounded), or None if it is not defined."""
    conn = airflow_connection(conn_id)
    if conn is None:
        return None
    return pg_connect(statement_timeout_s=statement_timeout_s, **psycopg2_kwargs(conn))


def psycopg2_kwargs(conn: Any) -> dict[str, Any]:
    """``psycopg2.connect`` arguments from an Airflow connection's fields (host, port, login, schema, SSL extras)."""
    extra = conn.extra_dejson or {}
    kwargs = {k: v for k, v in extra.items() if k in {"sslmode", "sslrootcert", "sslcert", "sslkey",
                                                          "connect_timeout", "application_name", "options"}}
    return {"host": conn.host, "port": conn.port or 5432, "user": conn.login, "password": conn.password or None,
            "dbname": conn.schema or "postgres", **kwargs}
