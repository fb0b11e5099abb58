"""Alert channels: a webhook (JSON POST) and e-mail (SMTP with TLS), each built from an Airflow connection.

:mod:`churn.systems` chooses which channels a deployment uses; :func:`churn.alerts.send_alert` logs every
alert and hands it to those channels. A channel that fails is logged with the fix and never fails the caller.
"""

from __future__ import annotations

import json
import logging
import smtplib
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Protocol

log = logging.getLogger(__name__)


class AlertSink(Protocol):
    """One alert channel."""

    name: str
    """``webhook`` or ``email``: the key of its outcome in ``send_alert``'s result."""

    def send(self, payload: dict[str, Any], timeout: float) -> Any:
        """Deliver one alert; returns what was delivered (a status, the recipients) or ``failed: ...``."""
        ...


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


@dataclass
class WebhookSink:
    """JSON POST to the URL of an http(s) Airflow connection (host = URL, or extra ``url``)."""

    conn_id: str
    conn: Any
    name: str = "webhook"

    def send(self, payload: dict[str, Any], timeout: float) -> Any:
        """POST the alert; an unreachable hook is logged (URL redacted) and reported as failed."""
        url = webhook_url(self.conn)
        request = urllib.request.Request(url, data=json.dumps(payload, default=str).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (configured URL)
                return response.status
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            # An unreachable alert channel must not fail the pipeline; the log line of send_alert still carries it.
            # A webhook's URL is a credential (Slack-style hooks): only scheme, host and port are logged.
            reason = str(exc).replace(url, redact_url(url))
            log.error("alert webhook %s (connection %s) failed: %s; check the connection", redact_url(url),
                      self.conn_id, reason)
            return f"failed: {reason}"


@dataclass
class EmailSink:
    """An e-mail to extra ``to`` through the SMTP Airflow connection (TLS unless ``security=none``)."""

    conn_id: str
    conn: Any
    name: str = "email"

    def send(self, payload: dict[str, Any], timeout: float) -> Any:
        """Send the alert as a JSON body; returns the recipients or ``failed: ...``."""
        mail_conn = self.conn
        recipients = (mail_conn.extra_dejson or {}).get("to")
        if not recipients:
            log.error("alert e-mail connection %s has no extra 'to' address; add {\"to\": \"team@example.com\"}",
                      self.conn_id)
            return "failed: no recipient"
        message = EmailMessage()
        message["Subject"] = f"[churn {payload['severity']}] {payload['title']}"
        message["From"] = (mail_conn.extra_dejson or {}).get("from", mail_conn.login or "churn-platform@localhost")
        message["To"] = recipients
        message.set_content(json.dumps(payload, indent=2, default=str))
        try:
            with _smtp(mail_conn, timeout) as smtp:
                smtp.send_message(message)
            return recipients
        except (smtplib.SMTPException, OSError, AlertChannelError) as exc:
            log.error("alert e-mail via %s failed: %s; check the connection", self.conn_id, exc)
            return f"failed: {exc}"
