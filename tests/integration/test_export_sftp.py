"""SFTP delivery against a real SFTP server (asyncssh on loopback) through the Airflow SFTP provider's hook.

The connection comes from ``AIRFLOW_CONN_CHURN_SFTP`` (JSON: key file, pinned host key),
exactly as a deployment would define it; no Airflow services are needed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import pytest

from churn.publish.files import write_rows
from churn.publish.sftp import (DeliveryError, DeliveryRefused, deliver_files, hook_sftp_factory,
                                sftp_connection_configured)
from tests.support.sftp_server import SftpTestServer, SshKeys

CONN_ID = "churn_sftp"
MANIFEST = {"export": "high_risk", "model_version": "2026-11-20-tpot", "run_id": "2026-11-20"}


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    return {"host": SshKeys.generate(folder, "host_key"), "user": SshKeys.generate(folder, "user_key"),
            "other": SshKeys.generate(folder, "other_key")}


@pytest.fixture
def server(tmp_path, keys):
    root = tmp_path / "sftp_root"
    root.mkdir()
    srv = SftpTestServer(root, keys["host"].private_path, keys["user"].public_line).start()
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def isolated_airflow(tmp_path, monkeypatch):
    """No ~/.ssh/known_hosts, no user Airflow home: only what the test's connection says is trusted."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)


def _export(folder: Path, n: int, first_id: int = 0) -> list[Path]:
    rows = [(f"C{first_id + i:07d}", round(0.6 + (i % 400) / 1000, 4), "high", "Zoë, \"Z\" Müller", f"=x{i}")
            for i in range(n)]
    out = write_rows([rows], ["customer_id", "churn_probability", "risk_band", "name", "note"], folder,
                     "churn_high_risk_2026-11-20.csv", manifest=MANIFEST)
    return [Path(out.path), Path(out.manifest_path)]


def _rows(path: Path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"), newline="")))


def _use_connection(monkeypatch, server, keys, host_public_key=None, **extra):
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}",
                       server.connection_json(keys["user"], host_public_key or keys["host"].public_line, **extra))


def test_file_arrives_whole_with_the_right_rows_and_manifest(tmp_path, server, keys, monkeypatch):
    assert not sftp_connection_configured(CONN_ID)
    _use_connection(monkeypatch, server, keys)
    assert sftp_connection_configured(CONN_ID)
    data, manifest = _export(tmp_path / "local", 5000)
    remote = deliver_files([data, manifest], "outbox/journeys", hook_sftp_factory(CONN_ID), attempts=2)
    assert remote == ["outbox/journeys/churn_high_risk_2026-11-20.csv",
                      "outbox/journeys/churn_high_risk_2026-11-20.csv.manifest.json"]
    folder = server.root / "outbox" / "journeys"
    assert sorted(p.name for p in folder.iterdir()) == [data.name, manifest.name]  # no .partial left over
    arrived = (folder / data.name).read_bytes()
    assert arrived == data.read_bytes()
    rows = _rows(folder / data.name)
    assert len(rows) == 5001 and rows[1] == ["C0000000", "0.6", "high", 'Zoë, "Z" Müller', "'=x0"]
    meta = json.loads((folder / manifest.name).read_text())
    assert meta["sha256"] == hashlib.sha256(arrived).hexdigest() and meta["rows"] == 5000
    assert server.logins == 1


def test_rerunning_the_same_date_replaces_the_remote_file(tmp_path, server, keys, monkeypatch):
    _use_connection(monkeypatch, server, keys)
    deliver_files(_export(tmp_path / "first", 3000), ".", hook_sftp_factory(CONN_ID))
    second = _export(tmp_path / "second", 10, first_id=500)
    deliver_files(second, ".", hook_sftp_factory(CONN_ID))
    arrived = server.root / second[0].name
    assert arrived.read_bytes() == second[0].read_bytes()
    assert len(_rows(arrived)) == 11 and _rows(arrived)[1][0] == "C0000500"  # replaced, never appended
    assert json.loads((server.root / second[1].name).read_text())["rows"] == 10


def test_wrong_host_key_is_refused_without_retrying(tmp_path, server, keys, monkeypatch):
    _use_connection(monkeypatch, server, keys, host_public_key=keys["other"].public_line)
    sleeps: list[float] = []
    with pytest.raises(DeliveryRefused, match="host_key"):
        deliver_files(_export(tmp_path, 10), ".", hook_sftp_factory(CONN_ID), attempts=3, sleep=sleeps.append)
    assert sleeps == [] and list(server.root.iterdir()) == []


def test_unknown_host_is_refused_when_no_host_key_is_configured(tmp_path, server, keys, monkeypatch):
    conn = json.loads(server.connection_json(keys["user"], keys["host"].public_line))
    del conn["extra"]["host_key"]  # and HOME has no known_hosts: paramiko's RejectPolicy applies
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))
    with pytest.raises(DeliveryRefused, match="not trusted"):
        deliver_files(_export(tmp_path, 10), ".", hook_sftp_factory(CONN_ID), attempts=3, sleep=lambda s: None)
    assert list(server.root.iterdir()) == []


def test_connection_without_host_key_check_or_key_is_refused(tmp_path, server, keys, monkeypatch):
    conn = json.loads(server.connection_json(keys["user"], keys["host"].public_line))
    del conn["extra"]["host_key"]
    conn["extra"]["no_host_key_check"] = "true"
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))
    with pytest.raises(DeliveryRefused, match="disables host key checking"):
        deliver_files(_export(tmp_path, 10), ".", hook_sftp_factory(CONN_ID))
    conn = json.loads(server.connection_json(keys["user"], keys["host"].public_line))
    del conn["extra"]["key_file"]
    conn["password"] = "secret-password"
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))
    with pytest.raises(DeliveryRefused, match="no private key"):
        deliver_files(_export(tmp_path, 10), ".", hook_sftp_factory(CONN_ID))
    assert server.logins == 0 and list(server.root.iterdir()) == []


def test_unauthorized_user_key_is_refused(tmp_path, server, keys, monkeypatch):
    conn = json.loads(server.connection_json(keys["other"], keys["host"].public_line))
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(conn))
    with pytest.raises(DeliveryRefused):
        deliver_files(_export(tmp_path, 10), ".", hook_sftp_factory(CONN_ID), attempts=3, sleep=lambda s: None)
    assert list(server.root.iterdir()) == []


def test_dropped_connection_leaves_no_final_file_and_the_retry_delivers(tmp_path, server, keys, monkeypatch):
    _use_connection(monkeypatch, server, keys)
    data, manifest = _export(tmp_path, 40_000)  # ~2 MB
    size = data.stat().st_size
    server.drop_after_bytes, server.drops_left = size // 3, 1
    seen_between_attempts: list[dict] = []

    def sleep(seconds: float) -> None:  # what a consumer would see while the delivery is retried
        seen_between_attempts.append({"wait": seconds, "files": {p.name: p.stat().st_size
                                                                 for p in server.root.iterdir()}})

    deliver_files([data, manifest], ".", hook_sftp_factory(CONN_ID), attempts=3, backoff_seconds=0.5, sleep=sleep)
    assert server.drops == 1 and server.logins == 2
    (between,) = seen_between_attempts
    assert between["wait"] == 0.5
    assert data.name not in between["files"] and manifest.name not in between["files"]
    partial = between["files"][f".{data.name}.partial"]
    assert size // 3 <= partial < size  # the dropped upload really was partial
    assert (server.root / data.name).read_bytes() == data.read_bytes()
    assert len(_rows(server.root / data.name)) == 40_001
    assert sorted(p.name for p in server.root.iterdir()) == [data.name, manifest.name]


def test_failing_every_attempt_keeps_the_previous_complete_file(tmp_path, server, keys, monkeypatch):
    _use_connection(monkeypatch, server, keys)
    old = _export(tmp_path / "old", 100)
    deliver_files(old, ".", hook_sftp_factory(CONN_ID))
    old_bytes = (server.root / old[0].name).read_bytes()
    new = _export(tmp_path / "new", 40_000, first_id=7)
    server.drop_after_bytes, server.drops_left = 100_000, 5
    sleeps: list[float] = []
    with pytest.raises(DeliveryError, match="after 3 attempts"):
        deliver_files(new, ".", hook_sftp_factory(CONN_ID), attempts=3, backoff_seconds=0.25, sleep=sleeps.append)
    assert sleeps == [0.25, 0.5]  # exponential backoff
    assert (server.root / old[0].name).read_bytes() == old_bytes
    assert json.loads((server.root / old[1].name).read_text())["rows"] == 100


def test_server_without_posix_rename_still_replaces_the_file(tmp_path, server, keys, monkeypatch):
    _use_connection(monkeypatch, server, keys)
    server.posix_rename = False  # plain SFTP rename refuses to overwrite: the old file is removed first
    deliver_files(_export(tmp_path / "first", 50), ".", hook_sftp_factory(CONN_ID))
    second = _export(tmp_path / "second", 5, first_id=900)
    deliver_files(second, ".", hook_sftp_factory(CONN_ID))
    assert (server.root / second[0].name).read_bytes() == second[0].read_bytes()
    assert sorted(p.name for p in server.root.iterdir()) == [second[0].name, second[1].name]


def test_a_stalled_server_fails_the_delivery_within_its_channel_timeout(tmp_path, server, keys, monkeypatch):
    """Issue 26 item 15: a server that stops answering mid-upload is a retried timeout, never a hung task."""
    import time

    _use_connection(monkeypatch, server, keys)
    server.stall_writes_seconds = 60
    data, manifest = _export(tmp_path / "local", 200)
    started = time.monotonic()
    with pytest.raises(DeliveryError, match="after 2 attempts"):
        deliver_files([data, manifest], "outbox", hook_sftp_factory(CONN_ID), attempts=2, backoff_seconds=0.1,
                      channel_timeout_s=1.0)
    assert time.monotonic() - started < 30


def test_a_redelivery_never_leaves_a_remote_manifest_beside_data_it_does_not_describe(tmp_path, server, keys,
                                                                                         monkeypatch):
    """Issue 26 item 17: a re-run's delivery dropped mid-upload shows the old data without a manifest, not a
    manifest that names other bytes."""
    _use_connection(monkeypatch, server, keys)
    old_data, old_manifest = _export(tmp_path / "v1", 1000)
    deliver_files([old_data, old_manifest], ".", hook_sftp_factory(CONN_ID), attempts=1)
    data, manifest = _export(tmp_path / "v2", 40_000, first_id=5)
    server.drop_after_bytes, server.drops_left = data.stat().st_size // 3, 1
    seen: list[dict] = []

    def sleep(seconds: float) -> None:
        names = {p.name for p in server.root.iterdir()}
        seen.append({"manifest": manifest.name in names, "data": (server.root / data.name).read_bytes()})

    commits: list[tuple[str, dict]] = []
    import churn.publish.sftp as sftp_module

    commit = sftp_module.commit_partial

    def watching(sftp, tmp, remote_dir, name):  # what a consumer could see at each rename
        present = {p.name: p for p in server.root.iterdir() if not p.name.startswith(".")}
        commits.append((name, {"manifest": manifest.name in present,
                               "data": present[data.name].read_bytes() if data.name in present else None}))
        return commit(sftp, tmp, remote_dir, name)

    monkeypatch.setattr(sftp_module, "commit_partial", watching)
    deliver_files([data, manifest], ".", hook_sftp_factory(CONN_ID), attempts=3, backoff_seconds=0.2, sleep=sleep)
    (between,) = seen  # the dropped attempt left the previous complete pair in place
    assert between["data"] == old_data.read_bytes() and between["manifest"]
    # when the data file is replaced, no manifest stands beside it
    assert commits[0] == (data.name, {"manifest": False, "data": old_data.read_bytes()})
    body = json.loads((server.root / manifest.name).read_text())
    assert body["sha256"] == hashlib.sha256((server.root / data.name).read_bytes()).hexdigest()
