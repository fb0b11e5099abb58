"""Scheduler tier: real Airflow components as processes (LocalExecutor, CeleryExecutor + Dask) on the session's
servers."""

from tests.support.servers import fresh_pg_url, pg_admin_url, pg_conn, redis_client, redis_url, services

# Server fixtures of this tier (one embedded Postgres + Valkey per session).
__all__ = ["fresh_pg_url", "pg_admin_url", "pg_conn", "redis_client", "redis_url", "services"]
