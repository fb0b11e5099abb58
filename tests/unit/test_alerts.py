"""Alerts without a receiver: always logged, an unreachable webhook never raises nor logs its secret path
(delivery to a real webhook and SMTP server: tests/integration/test_alerts.py)."""

from __future__ import annotations

import json
import logging

from churn.alerts import redact_url, send_alert
from tests.support.net import free_port


def test_without_connections_the_alert_is_only_logged(monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="churn.alerts")
    outcome = send_alert("x", {"a": 1}, severity="error", webhook_conn_id="absent_hook", email_conn_id="absent_mail")
    assert outcome == {"logged": True, "webhook": None, "email": None}
    assert any(r.levelno == logging.ERROR and "ALERT [error] x" in r.getMessage() for r in caplog.records)


def test_unreachable_webhook_does_not_raise_and_its_secret_path_is_never_logged(monkeypatch, caplog):
    port = free_port()
    secret = "T0001/B0002/XyZsecretToken"
    monkeypatch.setenv("AIRFLOW_CONN_DEAD_HOOK", json.dumps(
        {"conn_type": "http", "extra": {"url": f"http://127.0.0.1:{port}/services/{secret}?k=v"}}))
    caplog.set_level(logging.DEBUG)
    outcome = send_alert("x", webhook_conn_id="dead_hook", email_conn_id="absent_mail", timeout=2)
    assert str(outcome["webhook"]).startswith("failed:")
    assert "check the connection" in caplog.text
    assert f"http://127.0.0.1:{port}/***" in caplog.text
    assert "XyZsecretToken" not in caplog.text and "XyZsecretToken" not in json.dumps(outcome)


def test_redact_url_keeps_only_scheme_host_and_port():
    assert redact_url("https://user:pw@hooks.example.com/services/a/b?token=t") == "https://hooks.example.com/***"
    assert redact_url("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"
