"""Alerts: always logged; delivered to a real local webhook when the Airflow connection is configured."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from churn.alerts import ChurnAlertNotifier, deadline_missed, send_alert
from tests.conftest import free_port


@pytest.fixture
def webhook(monkeypatch):
    """A real HTTP server on loopback recording the JSON bodies it receives; its URL is the Airflow connection."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server API)
            length = int(self.headers["Content-Length"])
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("AIRFLOW_CONN_TEST_ALERT_HOOK", f"http://127.0.0.1:{server.server_port}/hooks%2Fchurn")
    monkeypatch.setenv("CHURN_ALERT_WEBHOOK_CONN_ID", "test_alert_hook")
    monkeypatch.setenv("CHURN_ALERT_EMAIL_CONN_ID", "test_no_such_smtp")
    yield received
    server.shutdown()


def test_alert_is_logged_and_posted_to_the_webhook(webhook, caplog):
    caplog.set_level(logging.WARNING, logger="churn.alerts")
    outcome = send_alert("prediction drift", {"run_key": "2026-11-20", "psi": 0.4})
    assert outcome == {"logged": True, "webhook": 204, "email": None}
    assert len(webhook) == 1
    assert webhook[0]["title"] == "prediction drift" and webhook[0]["details"]["psi"] == 0.4
    assert webhook[0]["severity"] == "warning" and webhook[0]["source"] == "churn-platform"
    assert "ALERT [warning] prediction drift" in caplog.text


def test_without_connections_the_alert_is_only_logged(monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="churn.alerts")
    outcome = send_alert("x", {"a": 1}, severity="error", webhook_conn_id="absent_hook", email_conn_id="absent_mail")
    assert outcome == {"logged": True, "webhook": None, "email": None}
    assert any(r.levelno == logging.ERROR and "ALERT [error] x" in r.getMessage() for r in caplog.records)


def test_unreachable_webhook_does_not_raise(monkeypatch, caplog):
    monkeypatch.setenv("AIRFLOW_CONN_DEAD_HOOK", f"http://127.0.0.1:{free_port()}/")
    outcome = send_alert("x", webhook_conn_id="dead_hook", email_conn_id="absent_mail", timeout=2)
    assert str(outcome["webhook"]).startswith("failed:")
    assert "check the connection" in caplog.text


def test_failure_notifier_and_deadline_callback_deliver_context(webhook):
    class TI:
        task_id = "score"
        try_number = 3

    class Run:
        dag_id = "churn_nightly"
        run_id = "manual__2026-11-20"

    ChurnAlertNotifier("churn_nightly task failed").notify(
        {"ti": TI(), "dag_run": Run(), "exception": ValueError("bad input")})
    asyncio.run(deadline_missed(context={"dag_run": Run()}, dag_id="churn_nightly"))
    assert [w["title"] for w in webhook] == ["churn_nightly task failed", "churn_nightly missed its deadline"]
    failed = webhook[0]["details"]
    assert (failed["task_id"], failed["run_id"], failed["exception"], failed["try_number"]) == (
        "score", "manual__2026-11-20", "bad input", 3)
    assert webhook[0]["severity"] == "error" and webhook[1]["details"]["dag_id"] == "churn_nightly"
