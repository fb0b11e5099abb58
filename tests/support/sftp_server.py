"""A real SFTP server for tests: asyncssh on loopback, in a background thread, rooted in a folder.

It has a generated host key and accepts only the generated user key (public-key auth,
no passwords). For failure tests it can drop the connection after a number of uploaded
bytes (``drop_after_bytes``, ``drops_left``): the data written so far stays on disk, as
with a real network failure, and the connection is aborted without a goodbye.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh


@dataclass
class SshKeys:
    """A generated key pair written to disk (OpenSSH formats)."""

    private_path: Path
    public_line: str  # "ssh-ed25519 AAAA..." as in known_hosts / authorized_keys

    @classmethod
    def generate(cls, folder: Path, name: str) -> "SshKeys":
        """New Ed25519 key pair; the private key file is mode 0600 like ssh-keygen writes it."""
        key = asyncssh.generate_private_key("ssh-ed25519")
        path = folder / name
        key.write_private_key(str(path), format_name="openssh")
        path.chmod(0o600)
        public = key.export_public_key("openssh").decode().split()
        return cls(path, f"{public[0]} {public[1]}")


class _FaultySFTP(asyncssh.SFTPServer):
    """Chrooted SFTP server that can abort the connection mid-upload."""

    def __init__(self, chan, *, server: "SftpTestServer") -> None:
        super().__init__(chan, chroot=str(server.root).encode())
        self._server = server
        self._written = 0
        self._dropped = False

    def write(self, file_obj, offset, data):
        if self._server.stall_writes_seconds:  # a server that stops answering mid-upload (no error, no close)
            return asyncio.sleep(self._server.stall_writes_seconds, result=None)
        written = super().write(file_obj, offset, data)
        srv = self._server
        self._written += len(data)
        srv.bytes_received += len(data)
        if (srv.drop_after_bytes is not None and srv.drops_left > 0 and not self._dropped
                and self._written >= srv.drop_after_bytes):
            self._dropped = True  # writes already in flight on this session must not count as more drops
            srv.drops_left -= 1
            srv.drops += 1
            file_obj.flush()  # the partial upload really is on disk when the link dies
            self.connection.abort()
        return written

    def posix_rename(self, oldpath, newpath):
        if not self._server.posix_rename:  # like an SFTP server without the OpenSSH extension
            raise asyncssh.SFTPOpUnsupported("posix-rename not supported")
        return super().posix_rename(oldpath, newpath)


@dataclass
class SftpTestServer:
    """Start/stop an asyncssh SFTP server on 127.0.0.1 (free port) serving ``root``."""

    root: Path
    host_key: Path
    authorized_public_key: str
    port: int = 0
    drop_after_bytes: int | None = None
    drops_left: int = 0
    drops: int = 0
    bytes_received: int = 0
    logins: int = 0
    posix_rename: bool = True
    stall_writes_seconds: float = 0.0
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _acceptor: object = field(default=None, repr=False)

    def start(self) -> "SftpTestServer":
        """Listen in a daemon thread; returns once the port is bound."""
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        server = self

        class _Auth(asyncssh.SSHServer):
            def connection_made(self, conn):  # noqa: D401 - asyncssh callback
                server.logins += 1

        async def listen() -> None:
            authorized = asyncssh.import_authorized_keys(self.authorized_public_key + "\n")
            self._acceptor = await asyncssh.listen(
                "127.0.0.1", self.port, server_host_keys=[str(self.host_key)], authorized_client_keys=authorized,
                server_factory=_Auth, sftp_factory=lambda chan: _FaultySFTP(chan, server=self),
                allow_scp=False, password_auth=False, kbdint_auth=False)
            self.port = self._acceptor.sockets[0].getsockname()[1]
            ready.set()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(listen())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="sftp-test-server", daemon=True)
        self._thread.start()
        if not ready.wait(15):
            raise RuntimeError("SFTP test server did not start within 15 s")
        return self

    def stop(self) -> None:
        """Close the listener and stop the loop."""
        if self._loop is None:
            return

        async def close() -> None:
            self._acceptor.close()
            await self._acceptor.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = None

    def connection_json(self, user_key: SshKeys, host_public_key: str, login: str = "journeys", **extra) -> str:
        """``AIRFLOW_CONN_<ID>`` JSON for this server: key file auth, host key pinned."""
        return json.dumps({
            "conn_type": "sftp", "host": "127.0.0.1", "port": self.port, "login": login,
            "extra": {"key_file": str(user_key.private_path), "host_key": host_public_key,
                      "look_for_keys": "false", "conn_timeout": 10, **extra},
        })
