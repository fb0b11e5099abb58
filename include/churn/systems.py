"""The external systems a deployment talks to, chosen in one place by one setting (``CHURN_SYSTEMS``).

=================  ==========================================  ===========================================
system             ``local`` (the default: make demo, tests)    ``production``
=================  ==========================================  ===========================================
score store        Postgres: ``CHURN_POSTGRES_URL``, the       the same URL or Airflow connection; never
(Postgres)         Airflow connection, else the embedded       the dev launcher's state: a missing one
                   server of ``make services``                 fails with the fix
serving cache      Redis: same order as the score store        same as the score store
(Redis)
source database    ``CHURN_SOURCE_URL`` / connection (SQL      same
                   source), else the platform's Postgres
export sink        SFTP when the connection exists, else the   SFTP; a missing connection fails the export
                   local exports folder                        (``CHURN_EXPORT_SINK=local`` keeps files in
                                                               a folder, e.g. a mounted share)
alert sinks        the log, plus a webhook and/or e-mail       the same; with neither connection, every
                   where their connections exist               alert also logs that no channel exists
=================  ==========================================  ===========================================

``CHURN_EXPORT_SINK`` (``auto``, ``local``, ``sftp``) overrides the export sink of either set. Connection
lookups (URLs, Airflow connections, the embedded servers) all go through :mod:`churn.connections`; only
the ``local`` set reads the dev launcher's ``services.json``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from churn.config import ChurnConfig, ConfigError
from churn.connections import Resources, airflow_connection

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Systems:
    """The deployment's systems: connection factories, the export sink and the alert sinks."""

    cfg: ChurnConfig

    @property
    def kind(self) -> str:
        """``local`` or ``production`` (``CHURN_SYSTEMS``)."""
        return self.cfg.systems

    def resources(self) -> Resources:
        """Factories for the score store, the serving cache and the source database."""
        return Resources.from_airflow(self.cfg)

    def export_sink(self):
        """Where export files go (see the table above)."""
        from churn.publish.sftp import sftp_connection_configured
        from churn.publish.sinks import LocalFolderSink, SftpSink

        cfg = self.cfg
        choice = cfg.export_sink
        if choice == "auto":
            if self.kind == "production":
                choice = "sftp"
            else:
                choice = "sftp" if sftp_connection_configured(cfg.sftp_conn_id) else "local"
                if choice == "local":
                    log.info("no Airflow connection '%s': exports stay in %s", cfg.sftp_conn_id, cfg.exports_dir)
        if choice == "local":
            return LocalFolderSink(cfg.exports_dir)
        if not sftp_connection_configured(cfg.sftp_conn_id):
            raise ConfigError(
                f"exports go over SFTP ({'CHURN_EXPORT_SINK=sftp' if cfg.export_sink == 'sftp' else 'CHURN_SYSTEMS=production'}) "
                f"but the Airflow connection '{cfg.sftp_conn_id}' does not exist: create it (AIRFLOW_CONN_"
                f"{cfg.sftp_conn_id.upper()}) or set CHURN_EXPORT_SINK=local to keep the files in {cfg.exports_dir}")
        return SftpSink(cfg.sftp_conn_id, cfg.export_remote_dir, attempts=cfg.export_upload_attempts,
                        backoff_seconds=cfg.export_retry_seconds)

    def alert_sinks(self, webhook_conn_id: str | None = None, email_conn_id: str | None = None) -> list:
        """The alert channels whose connections exist (the log always has the alert)."""
        from churn.alert_sinks import EmailSink, WebhookSink

        sinks: list = []
        webhook_conn_id = webhook_conn_id or self.cfg.alert_webhook_conn_id
        email_conn_id = email_conn_id or self.cfg.alert_email_conn_id
        hook = airflow_connection(webhook_conn_id)
        if hook is not None:
            sinks.append(WebhookSink(webhook_conn_id, hook))
        mail = airflow_connection(email_conn_id)
        if mail is not None:
            sinks.append(EmailSink(email_conn_id, mail))
        if not sinks and self.kind == "production":
            log.error("no alert channel: create the Airflow connection '%s' (webhook) or '%s' (e-mail); this "
                      "alert is only in the task log", webhook_conn_id, email_conn_id)
        return sinks


def systems_for(cfg: ChurnConfig | None = None) -> Systems:
    """The configured set of systems (``CHURN_SYSTEMS``): the one place a deployment's systems are chosen."""
    return Systems(cfg or ChurnConfig.from_env())
