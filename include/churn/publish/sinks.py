"""Where export files go once written: kept in the local exports folder, or delivered over SFTP.

:mod:`churn.systems` picks the sink (``CHURN_EXPORT_SINK``, or the deployment's default); the export stage
only calls :meth:`ExportSink.deliver` with each data file followed by its manifest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

log = logging.getLogger(__name__)


@dataclass
class Delivery:
    """Where a run's export files ended up."""

    delivery: str
    """``local`` or ``sftp``."""
    delivered_to: str
    """The folder, or ``sftp://host:port/dir`` (no credentials)."""
    remote_paths: list[str] = field(default_factory=list)


class ExportSink(Protocol):
    """A destination for export files."""

    name: str

    def deliver(self, files: Sequence[str | Path]) -> Delivery:
        """Deliver ``files`` in order (each manifest after its data file) or raise; re-delivery replaces."""
        ...


@dataclass
class LocalFolderSink:
    """Files stay where the export stage wrote them (``<state_dir>/exports``): a consumer reads the folder."""

    folder: Path
    name: str = "local"

    def deliver(self, files: Sequence[str | Path]) -> Delivery:
        """Nothing to move: the files were written atomically into the folder."""
        log.info("exports stay in %s (export sink: local folder)", self.folder)
        return Delivery("local", str(self.folder))


@dataclass
class SftpSink:
    """Upload to an SFTP server through the Airflow connection (partial name, size check, atomic rename)."""

    conn_id: str
    remote_dir: str
    attempts: int = 4
    backoff_seconds: float = 2.0
    name: str = "sftp"

    def deliver(self, files: Sequence[str | Path]) -> Delivery:
        """Upload every file, retrying dropped connections; the consumer never sees a partial file."""
        from churn.publish.sftp import deliver_files, hook_sftp_factory, sftp_location

        remote = deliver_files(list(files), self.remote_dir, hook_sftp_factory(self.conn_id), attempts=self.attempts,
                               backoff_seconds=self.backoff_seconds)
        return Delivery("sftp", sftp_location(self.conn_id, self.remote_dir), remote)
