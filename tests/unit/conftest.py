"""Unit tier: no server of any kind. A test here that asks for a server fixture, or starts the embedded
Postgres/Valkey some other way, fails at once with a pointer to the integration tier."""

from __future__ import annotations

import pytest

# The fixtures tests/support/servers.py gives the server tiers; here each one fails instead.
SERVER_FIXTURES = ("services", "pg_admin_url", "fresh_pg_url", "pg_conn", "redis_url", "redis_client")


def _refuse(what: str):
    pytest.fail(f"{what}: the unit tier starts no server; a test that needs Postgres/Redis belongs in "
                "tests/integration (or a later tier)", pytrace=False)


def _refusing_fixture(name: str):
    @pytest.fixture(name=name, scope="session")
    def refused():
        _refuse(f"fixture {name!r} requested in tests/unit")

    return refused


for _name in SERVER_FIXTURES:
    globals()[f"_refuse_{_name}"] = _refusing_fixture(_name)


@pytest.fixture(autouse=True)
def _no_embedded_servers(monkeypatch):
    """Starting the embedded Postgres/Valkey from a unit test fails (whatever the route to it)."""
    from churn.dev import services

    def refuse(*args, **kwargs):
        _refuse("churn.dev.services would start a server")

    for name in ("start_postgres", "start_redis"):
        if hasattr(services, name):
            monkeypatch.setattr(services, name, refuse)
    monkeypatch.setattr(services.EmbeddedServices, "start", refuse)
