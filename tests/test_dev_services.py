"""The embedded PostgreSQL launcher closes a data directory made by an older checkout (trust on TCP)."""

from __future__ import annotations

import subprocess

import psycopg2
import pytest

from churn.dev import services as sv
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def test_a_trust_data_dir_is_closed_on_start_and_the_password_is_required(tmp_path):
    pg_dir = tmp_path / "postgres"
    pg_dir.mkdir()
    as_user = sv._as_pg_user()
    sv._open_path_for(pg_dir, as_user)
    # what `make services` did before passwords: every TCP login trusted
    subprocess.run([sv._pg_bin("initdb"), "-D", str(pg_dir / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                    "--no-locale"], check=True, capture_output=True, **as_user)
    port = free_port()
    sv.start_postgres(pg_dir, port)
    try:
        with pytest.raises(psycopg2.OperationalError, match="no password supplied|password authentication failed"):
            psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", connect_timeout=5)
        password = sv.superuser_password(pg_dir)
        assert (pg_dir / "postgres.password").stat().st_mode & 0o077 == 0
        psycopg2.connect(host="127.0.0.1", port=port, user="postgres", password=password, dbname="churn").close()
        sv.start_postgres(pg_dir, port)  # again, on the running server: nothing changes, the password still works
        psycopg2.connect(host="127.0.0.1", port=port, user="postgres", password=password, dbname="churn").close()
    finally:
        sv.stop_postgres(pg_dir)
