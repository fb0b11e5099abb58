"""Server fixtures: real PostgreSQL and Redis servers started once per test session on loopback.

Only the tiers that need servers see these fixtures: ``tests/{integration,e2e,scheduler,browser}/conftest.py``
import them; ``tests/unit/conftest.py`` replaces them with ones that fail.

The servers are the same embedded ones ``make demo`` uses (PyPI wheels, no Docker,
no root), but on free ports with their data in a temporary folder, so a test run
never touches the demo's state. Each test that wants a clean database gets its
own (``fresh_pg_url``); Redis is flushed for tests that ask for ``redis_client``.
"""

from __future__ import annotations

import uuid
from typing import Iterator

import psycopg2
import pytest
import redis

from churn.dev.services import EmbeddedServices
from tests.support.net import free_port

# What the server tiers' conftest files import (and the unit tier refuses).
SERVER_FIXTURES = ("services", "pg_admin_url", "fresh_pg_url", "pg_conn", "redis_url", "redis_client")


@pytest.fixture(scope="session")
def services(tmp_path_factory) -> Iterator[EmbeddedServices]:
    """Real PostgreSQL 16 + Valkey 9 (Redis protocol, ACL users with passwords) for the whole session."""
    state = tmp_path_factory.mktemp("services")
    embedded = EmbeddedServices(state, free_port(), free_port())
    embedded.start()
    yield embedded
    embedded.clean()  # run as root, the data directory lives outside the temporary folder


@pytest.fixture(scope="session")
def pg_admin_url(services) -> str:
    """URL of the server's maintenance database (for CREATE DATABASE)."""
    return services.pg_url("postgres")


@pytest.fixture
def fresh_pg_url(pg_admin_url, services) -> Iterator[str]:
    """A brand-new empty database for one test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(pg_admin_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    yield services.pg_url(name)
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.close()


@pytest.fixture
def pg_conn(fresh_pg_url):
    """psycopg2 connection to a fresh database."""
    conn = psycopg2.connect(fresh_pg_url)
    yield conn
    conn.close()


def fresh_databases(pg_admin_url: str, *names: str) -> None:
    """Drop (if present) and create the named databases."""
    admin = psycopg2.connect(pg_admin_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        for name in names:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            cur.execute(f"CREATE DATABASE {name}")
    admin.close()


def fresh_stores(services, pg_admin_url: str, name: str, redis_db: int, customers: int = 0,
                 as_of=None, seed: int = 21) -> tuple[str, str]:
    """A re-created database ``name`` (with ``customers`` synthetic customers as of ``as_of`` loaded) and an
    emptied Redis database ``redis_db`` on the session servers; returns their URLs."""
    import redis

    fresh_databases(pg_admin_url, name)
    pg_url, redis_url = services.pg_url(name), services.redis_url_db(redis_db)
    redis.Redis.from_url(services.redis_admin_url(redis_db)).flushdb()  # the platform's user may not flush
    if customers:
        from churn.data.generate import generate, load_source_tables

        conn = psycopg2.connect(pg_url)
        load_source_tables(conn, generate(customers, as_of, seed=seed))
        conn.close()
    return pg_url, redis_url


def pg_rows(url: str, sql: str, params=()) -> list[tuple]:
    """Run one statement on a fresh connection and commit; its rows (empty for a statement without a result)."""
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params or None)
            rows = cur.fetchall() if cur.description else []
        conn.commit()
        return rows
    finally:
        conn.close()


def url_as(url: str, user: str, password: str | None = None) -> str:
    """``url`` with its credentials replaced by ``user`` (and ``password``)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    auth = user + (f":{password}" if password is not None else "")
    return urlunsplit(parts._replace(netloc=f"{auth}@{host}"))


@pytest.fixture
def redis_url(services) -> str:
    """URL of the session Redis, flushed, as the platform's user (what the pipeline gets: no KEYS, INFO, FLUSH, CONFIG).

    Flushed like ``redis_client``'s: a lease or marker another test left on the same worker's server would
    otherwise make this test wait out ``publish_lock_wait_seconds`` (CI stop 29 waited 900 s on one).
    """
    admin = redis.Redis.from_url(services.redis_admin_url())
    admin.flushall()
    admin.close()
    return services.redis_url


@pytest.fixture
def redis_client(services) -> Iterator[redis.Redis]:
    """Admin client on a flushed Redis (tests inspect with KEYS, INFO, SAVE; the pipeline's user may not)."""
    client = redis.Redis.from_url(services.redis_admin_url())
    client.flushall()
    yield client
    client.close()
