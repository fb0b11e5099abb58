"""Deliver export files to an SFTP server: temporary name, then rename; data before manifest; retries.

The consumer (an email-journey tool) polls a folder. It must never pick up a partial
file, so each file is uploaded as ``.<name>.partial`` (dot-prefixed: outside any
``*.csv`` pattern), its size checked, and only then renamed over the final name with
the OpenSSH ``posix-rename`` extension (atomic replace, so re-running a date replaces
that date's file). The manifest goes up after its data file: a manifest's presence
means the file it describes is complete.

:func:`deliver_files` takes a factory of SFTP clients (a context manager yielding a
``paramiko.SFTPClient``), so tests can drive it with plain paramiko; the pipeline uses
:func:`hook_sftp_factory`, which opens the client through the Airflow SFTP provider's
``SFTPHook`` and the Airflow connection (key-based auth, host key checked).
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import time
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Sequence

import paramiko

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 30  # TCP connect, SSH banner and authentication
CHANNEL_TIMEOUT_S = 120.0  # one read or write on the SFTP channel without progress

SftpFactory = Callable[[], ContextManager[paramiko.SFTPClient]]


class DeliveryError(RuntimeError):
    """SFTP delivery failed after all attempts; the consumer still sees the previous complete files."""


class DeliveryRefused(DeliveryError):
    """A permanent SFTP problem (unknown or changed host key, rejected login, unsafe connection settings)."""


def sftp_connection_configured(conn_id: str) -> bool:
    """True when ``conn_id`` exists (``AIRFLOW_CONN_<ID>`` in the environment or an Airflow connection)."""
    if not conn_id:
        return False
    if os.environ.get(f"AIRFLOW_CONN_{conn_id.upper()}"):
        return True
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return False
    return True


def sftp_location(conn_id: str, remote_dir: str) -> str:
    """``sftp://user@host:port/dir`` of a connection (no secrets), for logs and the run summary."""
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    folder = remote_dir if remote_dir.startswith("/") else "/~/" + remote_dir.lstrip("./")
    return f"sftp://{conn.login}@{conn.host}:{conn.port or 22}{folder.rstrip('/') or '/'}"


def hook_sftp_factory(conn_id: str) -> SftpFactory:
    """SFTP clients from the Airflow SFTP provider's ``SFTPHook`` for ``conn_id`` (key auth, host key checked)."""

    @contextlib.contextmanager
    def factory() -> Iterator[paramiko.SFTPClient]:
        from airflow.providers.sftp.hooks.sftp import SFTPHook

        # One connection attempt per call: our own loop retries with backoff and stops at permanent errors.
        hook = SFTPHook(ssh_conn_id=conn_id, conn_retry_attempts=1, conn_timeout=CONNECT_TIMEOUT_S,
                        auth_timeout=CONNECT_TIMEOUT_S, banner_timeout=CONNECT_TIMEOUT_S)
        if hook.no_host_key_check or hook.allow_host_key_change:
            raise DeliveryRefused(
                f"Airflow connection '{conn_id}' disables host key checking (no_host_key_check / "
                "allow_host_key_change); remove those extras and set extra 'host_key' to the server's public key "
                "(ssh-keyscan -t ed25519 <host>)")
        if not (hook.key_file or hook.pkey):
            raise DeliveryRefused(
                f"Airflow connection '{conn_id}' has no private key; set extra 'key_file' (a path) or "
                "'private_key' (the key text): exports use key-based auth only")
        if hook.password:
            raise DeliveryRefused(f"Airflow connection '{conn_id}' has a password; remove it and use key auth")
        with hook.get_managed_conn() as client:
            yield client

    return factory


def bound_channel(sftp: paramiko.SFTPClient, seconds: float) -> None:
    """Every read or write on ``sftp`` fails after ``seconds`` without progress instead of hanging the task."""
    channel = sftp.get_channel()
    if channel is not None:
        channel.settimeout(seconds)


def _is_permanent(exc: BaseException) -> bool:
    if isinstance(exc, (paramiko.BadHostKeyException, paramiko.AuthenticationException)):
        return True
    # RejectPolicy: the server's key is not in the connection's host_key nor in known_hosts
    return isinstance(exc, paramiko.SSHException) and "not found in known_hosts" in str(exc)


def _ensure_dir(sftp: paramiko.SFTPClient, remote_dir: str) -> None:
    parts = [p for p in remote_dir.split("/") if p not in ("", ".")]
    path = "/" if remote_dir.startswith("/") else ""
    for part in parts:
        path = posixpath.join(path, part) if path else part
        try:
            sftp.stat(path)
        except FileNotFoundError:
            sftp.mkdir(path)


def put_atomic(sftp: paramiko.SFTPClient, local: str | Path, remote_dir: str) -> str:
    """Upload one file to ``.<name>.partial``, check its size, then rename it over ``<remote_dir>/<name>``."""
    return commit_partial(sftp, upload_partial(sftp, local, remote_dir), remote_dir, Path(local).name)


def upload_partial(sftp: paramiko.SFTPClient, local: str | Path, remote_dir: str) -> str:
    """Upload one file to ``<remote_dir>/.<name>.partial`` and check its size; returns that path."""
    local = Path(local)
    tmp = posixpath.join(remote_dir, f".{local.name}.partial")
    size = local.stat().st_size
    with open(local, "rb") as handle:
        # putfo opens the remote file with truncation, so a partial left by a dropped attempt is overwritten
        attrs = sftp.putfo(handle, tmp, file_size=size, confirm=True)
    if attrs.st_size != size:
        raise OSError(f"uploaded {attrs.st_size} of {size} bytes of {local.name}")
    return tmp


def commit_partial(sftp: paramiko.SFTPClient, tmp: str, remote_dir: str, name: str) -> str:
    """Rename an uploaded partial over ``<remote_dir>/<name>`` (atomically where the server can)."""
    final = posixpath.join(remote_dir, name)
    try:
        sftp.posix_rename(tmp, final)  # atomic replace (OpenSSH extension)
    except OSError:
        # Server without posix-rename: plain SFTP rename refuses to overwrite, so remove the old file first
        # (the consumer may briefly see no file, but never a partial one).
        with contextlib.suppress(FileNotFoundError):
            sftp.remove(final)
        sftp.rename(tmp, final)
    return final


def deliver_files(files: Sequence[str | Path], remote_dir: str, factory: SftpFactory, *, attempts: int = 4,
                  backoff_seconds: float = 2.0, sleep: Callable[[float], None] = time.sleep,
                  channel_timeout_s: float = CHANNEL_TIMEOUT_S) -> list[str]:
    """Upload ``files`` in order (each data file before its manifest) with retries; return the remote paths.

    Each attempt's channel times out after ``channel_timeout_s`` seconds without progress (a stalled
    server becomes a retried ``socket.timeout``, never a hung task).
    """
    attempts = max(1, attempts)
    for attempt in range(1, attempts + 1):
        try:
            with factory() as sftp:
                bound_channel(sftp, channel_timeout_s)
                _ensure_dir(sftp, remote_dir)
                # Every attempt re-sends every file to a partial name first: a dropped upload leaves the
                # previous complete files (data and manifest) as they were.
                staged = [(upload_partial(sftp, path, remote_dir), Path(path).name) for path in files]
                manifests = {name for _, name in staged if name.endswith(".manifest.json")}
                delivered = []
                for tmp, name in staged:
                    # A data file's old manifest goes just before the data is replaced, and the new one comes
                    # right after: a manifest on the server always describes the data file beside it.
                    if f"{name}.manifest.json" in manifests:
                        with contextlib.suppress(FileNotFoundError):
                            sftp.remove(posixpath.join(remote_dir, f"{name}.manifest.json"))
                    delivered.append(commit_partial(sftp, tmp, remote_dir, name))
            log.info("delivered %s file(s) to %s on attempt %s", len(delivered), remote_dir, attempt)
            return delivered
        except (OSError, EOFError, paramiko.SSHException) as exc:
            if _is_permanent(exc):
                raise DeliveryRefused(
                    f"SFTP server refused or not trusted ({type(exc).__name__}: {exc}); check the connection's "
                    "'host_key' extra (ssh-keyscan the server) and that the user's public key is authorized"
                ) from exc
            if attempt == attempts:
                raise DeliveryError(
                    f"SFTP delivery to {remote_dir} failed after {attempts} attempts ({type(exc).__name__}: {exc}); "
                    "the server keeps the previous complete files. Re-run the export task when the server is back"
                ) from exc
            wait = backoff_seconds * 2 ** (attempt - 1)
            log.warning("SFTP attempt %s/%s failed (%s: %s); retrying in %.1f s", attempt, attempts,
                        type(exc).__name__, exc, wait)
            sleep(wait)
    raise AssertionError("unreachable")  # the loop returns or raises
