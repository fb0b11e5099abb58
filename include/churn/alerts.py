"""Alerts: always logged, then delivered to the deployment's channels (webhook, e-mail: ``churn.systems``).

Used by the DAG's failure notifier (:class:`ChurnAlertNotifier`), its deadline callback
(:func:`deadline_missed`) and the pipeline's threshold checks (prediction drift,
realized performance). Kept light at import time: the DAG file references it.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any

from churn.alert_sinks import (AlertChannelError, AlertSink, EmailSink, WebhookSink,  # noqa: F401 - the
                               redact_url, smtp_security, webhook_url)  # alert channels' API, re-exported

log = logging.getLogger(__name__)


def send_alert(title: str, details: dict[str, Any] | None = None, severity: str = "warning",
               webhook_conn_id: str | None = None, email_conn_id: str | None = None,
               timeout: float = 10.0, sinks: list[AlertSink] | None = None) -> dict[str, Any]:
    """Log the alert, then deliver it to each channel the deployment has (``churn.systems``); returns what was
    delivered where. ``sinks`` replaces the configured channels (tests, callers with their own)."""
    from churn.config import ChurnConfig

    cfg = ChurnConfig.from_env()
    payload = {"source": "churn-platform", "severity": severity, "title": title, "details": details or {},
               "sent_at": datetime.now(timezone.utc).isoformat()}
    body = json.dumps(payload, default=str)
    log.log(logging.ERROR if severity in ("error", "critical") else logging.WARNING, "ALERT [%s] %s: %s",
            severity, title, body)
    outcome: dict[str, Any] = {"logged": True, "webhook": None, "email": None}

    if sinks is None:
        from churn.systems import systems_for

        sinks = systems_for(cfg).alert_sinks(webhook_conn_id, email_conn_id)
    for sink in sinks:
        outcome[sink.name] = sink.send(payload, timeout)
    return outcome


def _context_details(context: Any) -> dict[str, Any]:
    """The identifying bits of an Airflow callback context (dag, run, task, error)."""
    context = context or {}
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    return {
        "dag_id": getattr(dag_run, "dag_id", None) or context.get("dag_id"),
        "run_id": getattr(dag_run, "run_id", None) or context.get("run_id"),
        "task_id": getattr(ti, "task_id", None),
        "try_number": getattr(ti, "try_number", None),
        "exception": str(context.get("exception")) if context.get("exception") else None,
        "reason": context.get("reason"),
    }


try:
    from airflow.sdk import BaseNotifier as _BaseNotifier
except ImportError:  # the package works without Airflow (tests, CLI)
    _BaseNotifier = object  # type: ignore[assignment,misc]


class ChurnAlertNotifier(_BaseNotifier):  # type: ignore[misc,valid-type]
    """Airflow notifier for task/DAG failures: logs and forwards to the configured alert channels."""

    template_fields = ("title",)

    def __init__(self, title: str = "churn_nightly failed", severity: str = "error") -> None:
        super().__init__()
        self.title = title
        self.severity = severity

    def notify(self, context: Any) -> None:
        """Send one alert describing the failed task or run."""
        send_alert(self.title, _context_details(context), severity=self.severity)


async def deadline_missed(context: Any = None, **kwargs: Any) -> None:
    """Deadline callback (runs in the triggerer): the nightly run is still not finished."""
    import asyncio

    details = {**_context_details(context if isinstance(context, dict) else {}), **kwargs}
    # Delivery does blocking I/O: keep it off the triggerer's event loop.
    await asyncio.to_thread(send_alert, "churn_nightly missed its deadline", details, "error")
