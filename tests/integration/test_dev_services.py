"""The embedded servers are closed: passwords on TCP, Redis ACL users, private files, ancestors left alone."""

from __future__ import annotations

import json
import subprocess
import time

import psycopg2
import pytest
import redis

from churn.dev import services as sv
from tests.support.net import free_port


def test_a_trust_data_dir_is_closed_on_start_and_the_password_is_required(tmp_path):
    pg_dir = sv.private_dir(tmp_path / "postgres")
    paths = sv.pg_paths(pg_dir)
    # what `make services` did before passwords: every TCP login trusted
    paths.run([paths.bin("initdb"), "-D", str(paths.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
               "--no-locale"], check=True)
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
        sv.remove_outside_data(pg_dir)


def test_postgres_as_root_leaves_the_state_folder_and_its_ancestors_as_they_were(tmp_path):
    """Run as root, the server's user gets its own folder outside; no mode above or in the state folder changes."""
    state = tmp_path / "state"
    tmp_path.chmod(0o700)  # like a home folder: the server's system user may not traverse it
    ancestors = {p: p.stat().st_mode for p in [tmp_path, *tmp_path.parents]}
    pg_dir = sv.private_dir(state) / "postgres"
    port = free_port()
    sv.start_postgres(pg_dir, port)
    try:
        psycopg2.connect(host="127.0.0.1", port=port, user="postgres", password=sv.superuser_password(pg_dir),
                         dbname="churn", connect_timeout=5).close()
        assert {p: p.stat().st_mode for p in ancestors} == ancestors
        assert state.stat().st_mode & 0o777 == 0o700 and pg_dir.stat().st_mode & 0o777 == 0o700
        paths = sv.pg_paths(pg_dir, create=False)
        assert paths.data.stat().st_mode & 0o077 == 0 and paths.log.stat().st_mode & 0o077 == 0
        if sv._as_pg_user():
            assert not paths.data.is_relative_to(tmp_path) and paths.data.parent.stat().st_mode & 0o777 == 0o700
    finally:
        sv.stop_postgres(pg_dir)
        sv.remove_outside_data(pg_dir)


def test_as_root_a_data_directory_whose_state_folder_is_gone_is_removed(tmp_path):
    if not sv._as_pg_user():
        pytest.skip("only root keeps data directories outside the state folder")
    orphan = sv.PG_ROOT_BASE / "0000test-orphan"
    orphan.mkdir(parents=True, exist_ok=True)
    (orphan / sv.OWNER_FILE).write_text(str(tmp_path / "deleted-state" / "postgres"))
    unknown = sv.PG_ROOT_BASE / "0000test-unknown"  # no owner recorded: never touched
    unknown.mkdir(exist_ok=True)
    pg_dir = sv.private_dir(tmp_path / "state" / "postgres")
    try:
        sv.pg_paths(pg_dir)
        assert not orphan.exists() and unknown.exists()
        assert (sv.pg_paths(pg_dir, create=False).data.parent / sv.OWNER_FILE).read_text() == str(pg_dir.resolve())
    finally:
        unknown.rmdir()
        sv.remove_outside_data(pg_dir)


# --- the embedded Redis-protocol server (Valkey): passwords, ACL users, a maintained version ------------------

def test_an_unauthenticated_or_wrong_password_client_is_refused(services):
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=services.redis_port, socket_timeout=5).ping()
    with pytest.raises(redis.AuthenticationError, match="Authentication required"):  # RESP2: NOAUTH
        redis.Redis(host="127.0.0.1", port=services.redis_port, protocol=2, socket_timeout=5).get("churn:meta")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=services.redis_port, username=sv.REDIS_USER, password="guess",
                    socket_timeout=5).ping()
    with pytest.raises(redis.AuthenticationError):  # the old unauthenticated login is gone
        redis.Redis(host="127.0.0.1", port=services.redis_port, username="default", password="",
                    socket_timeout=5).ping()


@pytest.mark.parametrize("command", [
    ("CONFIG", "SET", "dir", "/tmp"), ("CONFIG", "SET", "dbfilename", "x.rdb"), ("CONFIG", "GET", "*"),
    ("CONFIG", "REWRITE"), ("DEBUG", "SLEEP", "0"), ("MODULE", "LOAD", "/tmp/x.so"), ("MODULE", "LIST"),
    ("ACL", "SETUSER", "churn", "+@all"), ("FLUSHALL",), ("KEYS", "*"), ("SHUTDOWN", "NOSAVE"),
    ("MONITOR",), ("REPLICAOF", "127.0.0.1", "1"), ("SAVE",)])
def test_the_platform_user_may_not_reconfigure_debug_load_modules_or_flush(services, command):
    client = redis.Redis.from_url(services.redis_url, socket_timeout=5)
    with pytest.raises(redis.ResponseError, match="no permissions|not allowed"):
        client.execute_command(*command)
    assert client.ping()


@pytest.mark.parametrize("command", [("CONFIG", "SET", "dir", "/tmp"), ("CONFIG", "SET", "dbfilename", "x.rdb"),
                                     ("DEBUG", "SLEEP", "0"), ("MODULE", "LOAD", "/tmp/x.so"),
                                     ("ACL", "SETUSER", "churn-admin", "+@all")])
def test_not_even_the_admin_user_may_reconfigure_the_server_or_load_code(services, command):
    client = redis.Redis.from_url(services.redis_admin_url(), socket_timeout=5)
    with pytest.raises(redis.ResponseError, match="no permissions|not allowed"):
        client.execute_command(*command)


def test_the_server_is_a_maintained_release(services):
    info = redis.Redis.from_url(services.redis_admin_url()).info("server")
    assert tuple(map(int, info["redis_version"].split(".")[:2])) >= (7, 2), info["redis_version"]
    assert info.get("server_name") == "valkey" and int(info["valkey_version"].split(".")[0]) >= 9, info


@pytest.mark.parametrize("layout", ["json", "hash"])
def test_the_platform_user_publishes_and_reads_both_layouts(services, tmp_path, layout):
    from churn.publish import redis_store as rs
    from tests.support.scores import RUN_A, write_scores

    redis.Redis.from_url(services.redis_admin_url(9)).flushdb()
    client = redis.Redis.from_url(services.redis_url_db(9), socket_timeout=30)
    path = write_scores(tmp_path / "a.parquet", RUN_A, 0, 2000, seed=1)
    rs.publish_scores(client, path, RUN_A, f"{RUN_A}-logreg", None, layout=layout, buckets=64, batch_rows=500,
                      hash_partition_rows=500)
    assert rs.served_run(client) == RUN_A
    assert rs.lookup_score(client, "C00000001", layout=layout, buckets=64)["run_id"] == RUN_A


def test_the_platform_user_is_a_working_celery_broker(services):
    """Kombu's Redis transport (the CeleryExecutor's broker) needs nothing the platform's user lacks."""
    import kombu

    with kombu.Connection(services.redis_url_db(10), connect_timeout=5) as conn:
        queue = conn.SimpleQueue("churn-acl-check")
        queue.put({"task": "ping"})
        message = queue.get(timeout=5)
        assert message.payload == {"task": "ping"}
        message.ack()
        queue.close()


def test_redis_files_are_private_and_the_config_holds_no_password(services):
    admin = redis.Redis.from_url(services.redis_admin_url())
    admin.save()
    redis_dir = services.redis_dir
    assert redis_dir.stat().st_mode & 0o777 == 0o700
    for name in ("redis.conf", "redis.password", "redis-reader.password", "redis-admin.password", "dump.rdb",
                 "redis.log"):
        assert (redis_dir / name).stat().st_mode & 0o077 == 0, name
    config = (redis_dir / "redis.conf").read_text()
    assert sv.redis_password(redis_dir) not in config and sv.redis_password(redis_dir, admin=True) not in config
    assert "user default off" in config and "enable-debug-command no" in config
    assert (services.state_dir / "services.json").stat().st_mode & 0o077 == 0
    assert json.loads((services.state_dir / "services.json").read_text())["redis_url"] == services.redis_url


def test_an_older_unauthenticated_server_of_the_same_state_folder_is_restarted_closed(tmp_path):
    """A checkout from before passwords left its Redis running: start replaces it, keeping its data."""
    redis_dir = sv.private_dir(tmp_path / "redis")
    port = free_port()
    subprocess.run([sv.redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(redis_dir),
                    "--daemonize", "yes", "--pidfile", str(redis_dir / "redis.pid"), "--save", "300 1"],
                   check=True, capture_output=True)
    try:
        for _ in range(100):
            try:
                redis.Redis(port=port, socket_timeout=1).set("churn:meta", "kept")
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        sv.start_redis(redis_dir, port)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, socket_timeout=5).ping()
        assert redis.Redis.from_url(sv.embedded_redis_url(redis_dir, port)).get("churn:meta") == b"kept"
    finally:
        sv.stop_redis(redis_dir)


def test_a_front_end_reads_scores_as_the_reader_user_and_may_write_nothing(services, tmp_path):
    from churn.publish import redis_store as rs
    from tests.support.scores import RUN_A, write_scores

    redis.Redis.from_url(services.redis_admin_url(11)).flushdb()
    path = write_scores(tmp_path / "a.parquet", RUN_A, 0, 100, seed=1)
    rs.publish_scores(redis.Redis.from_url(services.redis_url_db(11)), path, RUN_A, f"{RUN_A}-logreg", None,
                      layout="json", buckets=64, batch_rows=50, hash_partition_rows=50)
    reader = redis.Redis.from_url(services.redis_reader_url(11), socket_timeout=5)
    assert rs.lookup_score(reader, "C00000001", layout="json", buckets=64)["run_id"] == RUN_A
    for command in (("SET", "churn:score:C00000001", "{}"), ("DEL", "churn:meta"), ("KEYS", "*"),
                    ("CONFIG", "SET", "dir", "/tmp"), ("PUBLISH", "x", "y")):
        with pytest.raises(redis.ResponseError, match="no permissions"):
            reader.execute_command(*command)


def test_a_running_server_with_older_acl_rules_is_restarted_with_todays(tmp_path):
    redis_dir = sv.private_dir(tmp_path / "redis")
    port = free_port()
    sv.start_redis(redis_dir, port)
    try:
        admin = redis.Redis.from_url(sv.embedded_redis_url(redis_dir, port, admin=True))
        admin.set("kept", "1")
        config = redis_dir / "redis.conf"
        config.write_text(config.read_text().replace(" -@admin -@dangerous", ""))  # as an older checkout wrote it
        sv.start_redis(redis_dir, port)
        assert admin.get("kept") == b"1" and "-@admin -@dangerous" in config.read_text()
        with pytest.raises(redis.ResponseError, match="no permissions"):
            redis.Redis.from_url(sv.embedded_redis_url(redis_dir, port)).execute_command("CONFIG", "SET", "dir", "/")
    finally:
        sv.stop_redis(redis_dir)
