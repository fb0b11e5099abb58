"""Alerts: always logged; delivered to a real local webhook when the Airflow connection is configured."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from churn.alerts import ChurnAlertNotifier, deadline_missed, send_alert
from tests.support.net import free_port


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


# --- e-mail: a real SMTP server (aiosmtpd) on loopback, with STARTTLS, implicit TLS, or plain -------------

@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 (key + cert files), used as the server cert and the client CA."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    folder = tmp_path_factory.mktemp("tls")
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return folder / "cert.pem", folder / "key.pem"


@pytest.fixture
def smtp_server(tls_files):
    """Start an aiosmtpd server in the mode asked for; records messages and the logins it was offered."""
    import ssl

    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    cert, key = tls_files
    started = []

    def start(mode: str) -> dict:
        seen = {"messages": [], "logins": []}

        class Handler:
            async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd API)
                seen["messages"].append({"to": envelope.rcpt_tos, "tls": _on_tls(server),
                                         "body": envelope.content.decode()})
                return "250 OK"

        def authenticator(server, session, envelope, mechanism, auth_data):
            seen["logins"].append((auth_data.login.decode(), auth_data.password.decode(), _on_tls(server)))
            return AuthResult(success=auth_data.password == b"mail-secret")

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        port = free_port()
        # implicit TLS: the whole connection is TLS, aiosmtpd's STARTTLS bookkeeping does not apply
        kwargs = {"authenticator": authenticator, "auth_require_tls": mode == "starttls"}
        if mode == "starttls":
            kwargs.update(tls_context=context, require_starttls=True)
        elif mode == "ssl":
            kwargs.update(ssl_context=context)
        else:
            kwargs.update(auth_require_tls=False)
        controller = Controller(Handler(), hostname="127.0.0.1", port=port, **kwargs)
        controller.start()
        started.append(controller)
        return {"port": port, **seen}

    yield start
    for controller in started:
        controller.stop()


def _on_tls(server) -> bool:
    """Whether the server side of this SMTP session is a TLS stream (what the client really used)."""
    return server.transport.get_extra_info("ssl_object") is not None


def _mail_conn(monkeypatch, port: int, cert, **extra) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_TEST_MAIL", json.dumps({
        "conn_type": "smtp", "host": "127.0.0.1", "port": port, "login": "alerts", "password": "mail-secret",
        "extra": {"to": "team@example.com", "ca_file": str(cert), **extra}}))


@pytest.mark.parametrize("mode", ["starttls", "ssl"])
def test_alert_mail_is_sent_over_tls_with_the_password_only_after_tls(smtp_server, tls_files, monkeypatch, mode):
    server = smtp_server(mode)
    _mail_conn(monkeypatch, server["port"], tls_files[0], security=mode)
    outcome = send_alert("drift", {"psi": 0.4}, webhook_conn_id="absent_hook", email_conn_id="test_mail", timeout=10)
    assert outcome["email"] == "team@example.com"
    assert server["logins"] == [("alerts", "mail-secret", True)]  # over TLS
    assert len(server["messages"]) == 1 and server["messages"][0]["tls"] is True
    assert "Subject: [churn warning] drift" in server["messages"][0]["body"]


def test_default_security_refuses_a_server_without_starttls_before_sending_the_password(smtp_server, tls_files,
                                                                                        monkeypatch, caplog):
    server = smtp_server("none")
    _mail_conn(monkeypatch, server["port"], tls_files[0])  # no 'security': port != 465 means starttls
    outcome = send_alert("drift", webhook_conn_id="absent_hook", email_conn_id="test_mail", timeout=10)
    assert outcome["email"].startswith("failed:") and "does not offer STARTTLS" in outcome["email"]
    assert server["logins"] == [] and server["messages"] == []
    assert "mail-secret" not in caplog.text


def test_plain_smtp_only_when_asked_for(smtp_server, tls_files, monkeypatch):
    server = smtp_server("none")
    _mail_conn(monkeypatch, server["port"], tls_files[0], security="none")
    outcome = send_alert("drift", webhook_conn_id="absent_hook", email_conn_id="test_mail", timeout=10)
    assert outcome["email"] == "team@example.com" and len(server["messages"]) == 1
    _mail_conn(monkeypatch, server["port"], tls_files[0], security="rot13")
    bad = send_alert("drift", webhook_conn_id="absent_hook", email_conn_id="test_mail", timeout=10)
    assert "not one of ssl, starttls, none" in bad["email"]
