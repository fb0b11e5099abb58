"""Alerts: always logged; POSTed to a webhook and/or e-mailed when the matching Airflow connection exists.

Used by the DAG's failure notifier (:class:`ChurnAlertNotifier`), its deadline callback
(:func:`deadline_missed`) and the pipeline's threshold checks (prediction drift,
realized performance). Kept light at import time: the DAG file references it.
"""

from __future__ import annotations

import json
import logging
import smtplib
import ssl
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from email.message import EmailMessage
from typing import Any

from churn.connections import airflow_connection

log = logging.getLogger(__name__)


def webhook_url(conn: Any) -> str:
    """URL of an http(s) connection: ``extra.url`` if given, else scheme://host[:port][/schema]."""
    extra = conn.extra_dejson or {}
    if extra.get("url"):
        return str(extra["url"])
    host = conn.host or ""
    if host.startswith(("http://", "https://")):
        base = host
    else:
        scheme = "https" if conn.conn_type == "https" or extra.get("scheme") == "https" else "http"
        base = f"{scheme}://{host}" + (f":{conn.port}" if conn.port else "")
    return base + (f"/{conn.schema.lstrip('/')}" if conn.schema else "")


def redact_url(url: str) -> str:
    """scheme://host[:port] of a URL, without credentials, path or query (a webhook's path is its secret)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    tail = "/***" if (parts.path not in ("", "/") or parts.query) else ""
    return f"{parts.scheme}://{netloc}{tail}"


class AlertChannelError(RuntimeError):
    """An alert channel is configured in a way that would leak or cannot deliver."""


SMTP_SECURITY = ("ssl", "starttls", "none")


def smtp_security(conn: Any) -> str:
    """How to secure an SMTP connection: extra ``security`` (ssl | starttls | none), else by port.

    Port 465 means implicit TLS (``ssl``), any other port ``starttls``; ``none`` (plain text, for a
    relay on the same host) must be asked for explicitly. The Airflow SMTP provider's extras
    ``disable_ssl`` / ``disable_tls`` are understood too.
    """
    extra = conn.extra_dejson or {}
    security = extra.get("security")
    if security is None:
        if str(extra.get("disable_ssl", "")).lower() == "false" or conn.port == 465:
            security = "ssl"
        elif str(extra.get("disable_tls", "")).lower() == "true":
            security = "none"
        else:
            security = "starttls"
    security = str(security).lower()
    if security not in SMTP_SECURITY:
        raise AlertChannelError(f"alert e-mail connection: extra security={security!r} is not one of "
                                f"{', '.join(SMTP_SECURITY)}")
    return security


def _smtp(conn: Any, timeout: float) -> smtplib.SMTP:
    """An SMTP session secured as the connection says (the password is only ever sent over TLS or on ``none``)."""
    security = smtp_security(conn)
    extra = conn.extra_dejson or {}
    context = ssl.create_default_context(cafile=extra.get("ca_file"))
    host, port = conn.host, conn.port or (465 if security == "ssl" else 25)
    if security == "ssl":
        smtp: smtplib.SMTP = smtplib.SMTP_SSL(host, port, timeout=timeout, context=context)
    else:
        smtp = smtplib.SMTP(host, port, timeout=timeout)
    try:
        if security == "starttls":
            smtp.ehlo()
            if not smtp.has_extn("starttls"):
                raise AlertChannelError(f"SMTP server {host}:{port} does not offer STARTTLS; use a TLS port "
                                        "(extra security=ssl) or, for a relay on this host only, security=none")
            smtp.starttls(context=context)
            smtp.ehlo()
        if conn.login:
            smtp.login(conn.login, conn.password or "")
    except BaseException:
        smtp.close()
        raise
    return smtp


def send_alert(title: str, details: dict[str, Any] | None = None, severity: str = "warning",
               webhook_conn_id: str | None = None, email_conn_id: str | None = None,
               timeout: float = 10.0) -> dict[str, Any]:
    """Log the alert, then deliver it to each configured channel; returns what was delivered where."""
    if webhook_conn_id is None or email_conn_id is None:
        from churn.config import ChurnConfig

        cfg = ChurnConfig.from_env()
        webhook_conn_id = webhook_conn_id or cfg.alert_webhook_conn_id
        email_conn_id = email_conn_id or cfg.alert_email_conn_id
    payload = {"source": "churn-platform", "severity": severity, "title": title, "details": details or {},
               "sent_at": datetime.now(timezone.utc).isoformat()}
    body = json.dumps(payload, default=str)
    log.log(logging.ERROR if severity in ("error", "critical") else logging.WARNING, "ALERT [%s] %s: %s",
            severity, title, body)
    outcome: dict[str, Any] = {"logged": True, "webhook": None, "email": None}

    hook_conn = airflow_connection(webhook_conn_id)
    if hook_conn is not None:
        url = webhook_url(hook_conn)
        request = urllib.request.Request(url, data=body.encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (configured URL)
                outcome["webhook"] = response.status
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            # An unreachable alert channel must not fail the pipeline; the log line above still carries it.
            # A webhook's URL is a credential (Slack-style hooks): only scheme, host and port are logged.
            reason = str(exc).replace(url, redact_url(url))
            log.error("alert webhook %s (connection %s) failed: %s; check the connection", redact_url(url),
                      webhook_conn_id, reason)
            outcome["webhook"] = f"failed: {reason}"

    mail_conn = airflow_connection(email_conn_id)
    if mail_conn is not None:
        recipients = (mail_conn.extra_dejson or {}).get("to")
        if not recipients:
            log.error("alert e-mail connection %s has no extra 'to' address; add {\"to\": \"team@example.com\"}",
                      email_conn_id)
            outcome["email"] = "failed: no recipient"
        else:
            message = EmailMessage()
            message["Subject"] = f"[churn {severity}] {title}"
            message["From"] = (mail_conn.extra_dejson or {}).get("from", mail_conn.login or "churn-platform@localhost")
            message["To"] = recipients
            message.set_content(json.dumps(payload, indent=2, default=str))
            try:
                with _smtp(mail_conn, timeout) as smtp:
                    smtp.send_message(message)
                outcome["email"] = recipients
            except (smtplib.SMTPException, OSError, AlertChannelError) as exc:
                log.error("alert e-mail via %s failed: %s; check the connection", email_conn_id, exc)
                outcome["email"] = f"failed: {exc}"
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
