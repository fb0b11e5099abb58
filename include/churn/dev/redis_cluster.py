"""A Redis Cluster on loopback from the embedded server binary: primaries, one replica each, passwords on.

For the tests and benchmarks of the cluster path (``CHURN_REDIS_URL=redis+cluster://...``): the same
``valkey-server`` as the embedded default, the same three ACL users (the platform's, the read-only
front-end user, an admin), the settings a production cluster for the scores should have:

- ``cluster-require-full-coverage no``: while a primary is down (until its replica is promoted), the
  other primaries keep answering lookups of their own slots;
- ``masteruser``/``masterauth``: replicas authenticate as the admin user, no default user exists.

Usage: ``python -m churn.dev.redis_cluster start|stop|url --dir <folder> [--port 7100] [--primaries 3]``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from churn.dev.services import (
    REDIS_ADMIN_USER, REDIS_READER_USER, REDIS_USER, ServiceError, _port_open, _quoted, _sha256, private_dir,
    redis_password, redis_server_binary,
)
from churn.fileio import write_text_atomic

SLOTS = 16384
# Commands a cluster client needs beyond the users' usual rules: its topology (CLUSTER SLOTS/SHARDS/NODES),
# the command table redis-py reads to find keys, READONLY for replica reads.
CLIENT_TOPOLOGY = "+cluster|slots +cluster|shards +cluster|nodes +cluster|info +cluster|keyslot +command +readonly"


@dataclass
class LocalCluster:
    """``primaries`` primaries on ports ``port..``, their replicas after them, all in ``root`` (0700)."""

    root: Path
    port: int = 7100
    primaries: int = 3
    replicas: int = 1
    node_timeout_ms: int = 1000

    @property
    def ports(self) -> list[int]:
        """Every node's port, primaries first."""
        return list(range(self.port, self.port + self.primaries * (1 + self.replicas)))

    def node_dir(self, port: int) -> Path:
        """The folder of one node (config, nodes.conf, log, pid)."""
        return self.root / f"node-{port}"

    def url(self, user: str = REDIS_USER, port: int | None = None, cluster: bool = True) -> str:
        """The cluster's URL as ``user`` (``redis+cluster://`` naming every node), or a plain URL of node ``port``."""
        password = redis_password(self.root, user=user)
        if not cluster:
            return f"redis://{user}:{password}@127.0.0.1:{port or self.port}/0"
        return f"redis+cluster://{user}:{password}@" + ",".join(f"127.0.0.1:{p}" for p in self.ports) + "/0"

    def admin(self, port: int):
        """A plain admin client of one node."""
        import redis

        return redis.Redis.from_url(self.url(REDIS_ADMIN_USER, port, cluster=False), socket_timeout=10)

    def config(self, port: int) -> str:
        """One node's config file: loopback, cluster on, users by password hash."""
        node = self.node_dir(port)
        admin_pw = redis_password(self.root, admin=True)
        return "\n".join([
            f"port {port}", "bind 127.0.0.1", "protected-mode yes", f"dir {_quoted(str(node))}", "daemonize yes",
            f"pidfile {_quoted(str(node / 'redis.pid'))}", f"logfile {_quoted(str(node / 'redis.log'))}",
            'save ""', "appendonly no", "cluster-enabled yes", "cluster-config-file nodes.conf",
            f"cluster-node-timeout {self.node_timeout_ms}", "cluster-require-full-coverage no",
            "enable-debug-command no", "enable-module-command no",
            f"masteruser {REDIS_ADMIN_USER}", f"masterauth {_quoted(admin_pw)}",
            "user default off resetpass nocommands",
            f"user {REDIS_USER} on #{_sha256(redis_password(self.root))} ~* &* +@all -@admin -@dangerous "
            + CLIENT_TOPOLOGY,
            f"user {REDIS_READER_USER} on #{_sha256(redis_password(self.root, user=REDIS_READER_USER))} ~* "
            f"resetchannels -@all +@read +@connection -@dangerous {CLIENT_TOPOLOGY}",
            f"user {REDIS_ADMIN_USER} on #{_sha256(admin_pw)} ~* &* +@all",
            "",
        ])

    def start_node(self, port: int) -> None:
        """Start (or restart) one node from its folder; its nodes.conf remembers its place in the cluster."""
        node = private_dir(self.node_dir(port))
        config = node / "redis.conf"
        write_text_atomic(config, self.config(port), mode=0o600)
        result = subprocess.run([redis_server_binary(), str(config)], capture_output=True, text=True, umask=0o077)
        if result.returncode != 0:
            raise ServiceError(f"cluster node {port} did not start: {(result.stderr or result.stdout).strip()}")
        _wait(lambda: _port_open(port), 10, f"cluster node {port} did not open its port; see {node / 'redis.log'}")

    def start(self, timeout: float = 60.0) -> None:
        """Start every node, assign the slots evenly to the primaries, attach the replicas, wait until ``ok``."""
        private_dir(self.root)
        for user in (REDIS_USER, REDIS_READER_USER):
            redis_password(self.root, user=user)
        redis_password(self.root, admin=True)
        fresh = not (self.node_dir(self.port) / "nodes.conf").exists()
        for port in self.ports:
            if _port_open(port):
                raise ServiceError(f"port {port} is taken: choose another --port for the cluster")
            self.start_node(port)
        if fresh:
            self._form()
        self.wait_ok(timeout)

    def _form(self) -> None:
        first = self.admin(self.port)
        for port in self.ports[1:]:
            first.execute_command("CLUSTER", "MEET", "127.0.0.1", port)
        per = SLOTS // self.primaries
        for i, port in enumerate(self.ports[:self.primaries]):
            low, high = i * per, (SLOTS - 1 if i == self.primaries - 1 else (i + 1) * per - 1)
            self.admin(port).execute_command("CLUSTER", "ADDSLOTSRANGE", low, high)
        ids = {port: _text(self.admin(port).execute_command("CLUSTER", "MYID")) for port in self.ports}
        for i, port in enumerate(self.ports[self.primaries:]):
            primary = self.ports[i % self.primaries]
            # a replica can follow a primary only once it knows the primary's id through the gossip
            _wait(lambda: ids[primary] in _text(self.admin(port).execute_command("CLUSTER", "NODES")), 20,
                  f"node {port} never learnt of {primary}")
            self.admin(port).execute_command("CLUSTER", "REPLICATE", ids[primary])

    def wait_ok(self, timeout: float = 60.0) -> None:
        """Wait until every live node reports ``cluster_state:ok`` and every primary has its replicas in sync."""

        def ready() -> bool:
            for port in self.ports:
                if not _port_open(port):
                    continue
                try:
                    info = _text(self.admin(port).execute_command("CLUSTER", "INFO"))
                    if "cluster_state:ok" not in info:
                        return False
                    role = self.admin(port).info("replication")
                except Exception:  # noqa: BLE001 - a node still starting: try again
                    return False
                if role.get("role") == "slave" and role.get("master_link_status") != "up":
                    return False
            return True

        _wait(ready, timeout, f"the cluster in {self.root} did not become ready in {timeout:.0f} s; see the "
                              "nodes' redis.log")

    def primary_of(self, key: str) -> int:
        """The port of the primary serving ``key``'s slot now."""
        admin = self.admin(next(p for p in self.ports if _port_open(p)))
        slot = int(admin.execute_command("CLUSTER", "KEYSLOT", key))
        for low, high, primary, *_ in admin.execute_command("CLUSTER", "SLOTS"):
            if low <= slot <= high:
                return int(primary[1])
        raise ServiceError(f"no node serves slot {slot}")

    def kill(self, port: int) -> None:
        """SIGKILL one node (a crash: nothing saved)."""
        pid = int((self.node_dir(port) / "redis.pid").read_text().strip())
        os.kill(pid, signal.SIGKILL)
        _wait(lambda: not _port_open(port), 10, f"node {port} did not die")

    def stop(self) -> None:
        """Stop every node (SIGTERM) and wait until each has exited."""
        for port in self.ports:
            pid_file = self.node_dir(port) / "redis.pid"
            try:
                os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
            except (OSError, ValueError):
                continue
        for port in self.ports:
            _wait(lambda: not _port_open(port), 30, f"node {port} did not stop")


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _wait(check, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise ServiceError(message)


def build_parser() -> argparse.ArgumentParser:
    """The CLI's parser (also read by the docs' CLI reference)."""
    parser = argparse.ArgumentParser(prog="python -m churn.dev.redis_cluster", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("start", "stop", "url"),
                        help="start the nodes (forming the cluster the first time), stop them, or print the URL")
    parser.add_argument("--dir", type=Path, required=True, help="folder of the nodes' files (0700)")
    parser.add_argument("--port", type=int, default=7100, help="first node's port (the nodes take the next ones)")
    parser.add_argument("--primaries", type=int, default=3, help="primaries, each with one replica")
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI: start, stop, or print the platform's URL of a loopback cluster."""
    args = build_parser().parse_args(argv)
    cluster = LocalCluster(args.dir, args.port, args.primaries)
    if args.action == "start":
        cluster.start()
    elif args.action == "stop":
        cluster.stop()
    print(cluster.url())
    return 0


if __name__ == "__main__":
    sys.exit(main())
