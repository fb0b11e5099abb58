"""External systems chosen in one place (issue 22 item 3): ``CHURN_SYSTEMS`` picks the set, and only the
local set reads the dev launcher's state."""

from __future__ import annotations

import json
import logging

import pytest

from churn.alert_sinks import EmailSink, WebhookSink
from churn.alerts import send_alert
from churn.config import ChurnConfig, ConfigError
from churn.connections import ConnectionNotConfigured, postgres_url, redis_url
from churn.publish.sinks import LocalFolderSink, SftpSink
from churn.systems import systems_for

LAUNCHER_STATE = {"postgres_url": "postgresql://churn_publisher@127.0.0.1:54329/churn",
                  "redis_url": "redis://churn@127.0.0.1:6390/0"}


@pytest.fixture
def no_connections(monkeypatch):
    for name in ("CHURN_POSTGRES_URL", "CHURN_REDIS_URL", "AIRFLOW_CONN_CHURN_POSTGRES", "AIRFLOW_CONN_CHURN_REDIS",
                 "AIRFLOW_CONN_CHURN_SFTP", "AIRFLOW_CONN_CHURN_ALERT_WEBHOOK", "AIRFLOW_CONN_CHURN_ALERT_SMTP"):
        monkeypatch.delenv(name, raising=False)


def _cfg(tmp_path, **fields) -> ChurnConfig:
    (tmp_path / "services.json").write_text(json.dumps(LAUNCHER_STATE))
    return ChurnConfig(state_dir=tmp_path, **fields)


def test_local_systems_fall_back_to_the_embedded_servers(tmp_path, no_connections):
    cfg = _cfg(tmp_path)
    assert cfg.systems == "local"  # the default
    assert postgres_url(cfg) == LAUNCHER_STATE["postgres_url"] and redis_url(cfg) == LAUNCHER_STATE["redis_url"]


def test_production_never_reads_the_dev_launchers_state(tmp_path, no_connections, monkeypatch):
    cfg = _cfg(tmp_path, systems="production")
    with pytest.raises(ConnectionNotConfigured, match="CHURN_POSTGRES_URL.*never uses the embedded servers"):
        postgres_url(cfg)
    with pytest.raises(ConnectionNotConfigured, match="churn_redis"):
        redis_url(cfg)
    monkeypatch.setenv("CHURN_POSTGRES_URL", "postgresql://prod-db/churn")
    assert postgres_url(cfg) == "postgresql://prod-db/churn"


def test_export_sink_by_systems_and_setting(tmp_path, no_connections, monkeypatch):
    assert isinstance(systems_for(_cfg(tmp_path)).export_sink(), LocalFolderSink)
    with pytest.raises(ConfigError, match="CHURN_SYSTEMS=production.*'churn_sftp' does not exist.*CHURN_EXPORT_SINK=local"):
        systems_for(_cfg(tmp_path, systems="production")).export_sink()
    kept = systems_for(_cfg(tmp_path, systems="production", export_sink="local")).export_sink()
    assert isinstance(kept, LocalFolderSink) and kept.folder == tmp_path / "exports"
    with pytest.raises(ConfigError, match="CHURN_EXPORT_SINK=sftp"):
        systems_for(_cfg(tmp_path, export_sink="sftp")).export_sink()
    monkeypatch.setenv("AIRFLOW_CONN_CHURN_SFTP", "sftp://user@files.example.com:22")
    for systems in ("local", "production"):
        sink = systems_for(_cfg(tmp_path, systems=systems, export_remote_dir="inbox")).export_sink()
        assert isinstance(sink, SftpSink) and sink.remote_dir == "inbox"
    assert isinstance(systems_for(_cfg(tmp_path, export_sink="local")).export_sink(), LocalFolderSink)


def test_local_folder_sink_reports_where_the_files_stay(tmp_path):
    delivered = LocalFolderSink(tmp_path).deliver([tmp_path / "a.csv", tmp_path / "a.manifest.json"])
    assert (delivered.delivery, delivered.delivered_to, delivered.remote_paths) == ("local", str(tmp_path), [])


def test_alert_sinks_are_the_connections_that_exist(tmp_path, no_connections, monkeypatch, caplog):
    assert systems_for(_cfg(tmp_path)).alert_sinks() == []
    with caplog.at_level(logging.ERROR, logger="churn.systems"):
        assert systems_for(_cfg(tmp_path, systems="production")).alert_sinks() == []
    assert "no alert channel" in caplog.text and "churn_alert_webhook" in caplog.text
    monkeypatch.setenv("AIRFLOW_CONN_CHURN_ALERT_WEBHOOK", "https://hooks.example.com/T0/secret")
    monkeypatch.setenv("AIRFLOW_CONN_CHURN_ALERT_SMTP", "smtp://mail.example.com:465?to=team%40example.com")
    sinks = systems_for(_cfg(tmp_path)).alert_sinks()
    assert [type(s) for s in sinks] == [WebhookSink, EmailSink]
    assert [s.conn_id for s in sinks] == ["churn_alert_webhook", "churn_alert_smtp"]


def test_send_alert_hands_the_payload_to_each_sink(tmp_path, no_connections, monkeypatch):
    monkeypatch.setenv("CHURN_STATE_DIR", str(tmp_path))
    got = []

    class Recorder:
        name = "webhook"

        def send(self, payload, timeout):
            got.append(payload)
            return 200

    outcome = send_alert("churn threshold breached", {"run_key": "2026-11-20"}, sinks=[Recorder()])
    assert outcome == {"logged": True, "webhook": 200, "email": None}
    assert got[0]["title"] == "churn threshold breached" and got[0]["details"] == {"run_key": "2026-11-20"}


def test_a_source_without_delta_files_does_not_need_a_spec_before_claiming(tmp_path):
    from churn.data.ingest import source_for

    def no_spec():
        raise AssertionError("the spec was built although nothing needs it")

    for fields in ({"source": "sql", "source_query": "q.sql"}, {"source": "file", "file_path": "f.csv"},
                   {"source": "postgres"}):
        assert source_for(ChurnConfig(state_dir=tmp_path, **fields)).prepare_events(None, no_spec) == {}
