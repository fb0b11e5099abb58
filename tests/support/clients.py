"""The front-end lookup clients (clients/js, clients/java) as the tests run them: binaries and one batch run."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

CLIENTS = Path(__file__).resolve().parents[2] / "clients"


def node_binary() -> str:
    """The Node.js binary with the client's dependencies installed (``make clients``); missing = a failure."""
    binary = shutil.which("node")
    assert binary, "Node.js is missing: install nodejs (>= 18) and run `make clients`"
    assert (CLIENTS / "js" / "node_modules" / "ioredis").is_dir(), "run `make clients` (npm ci in clients/js)"
    return binary


def js_lookup_command(node: str) -> list[str]:
    """The command that looks up the ids given on stdin with the JavaScript client."""
    return [node, str(CLIENTS / "js" / "lookup_ids.js")]


def client_lookups(command: list[str], url: str, ids: list[str]) -> list[dict | None]:
    """Run a client over ``ids`` (one per line on stdin) against ``url``: one record (or None) per id."""
    done = subprocess.run(command, input="\n".join(ids) + "\n", text=True, capture_output=True, timeout=300,
                          env={"CHURN_REDIS_URL": url, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]
