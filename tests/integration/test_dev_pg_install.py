"""The root-mode copy of the PostgreSQL build is made once, whole, even when several processes start servers at
once (pytest-xdist workers on a fresh machine: each used to copy into one shared staging folder)."""

from __future__ import annotations

import multiprocessing

from churn.dev import services


def _copy(base: str, queue) -> None:
    from pathlib import Path

    services.PG_ROOT_BASE = Path(base)
    queue.put(str(services._root_pg_install(True)))


def test_concurrent_starts_share_one_complete_copy(tmp_path):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_copy, args=(str(tmp_path), queue)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
        assert worker.exitcode == 0
    installs = {queue.get(timeout=5) for _ in workers}
    assert len(installs) == 1
    (install,) = installs
    wheel = services._pg_bin_dir()
    copied = sorted(p.name for p in (tmp_path / install.split(str(tmp_path) + "/", 1)[1] / "bin").iterdir())
    assert copied == sorted(p.name for p in wheel.iterdir()) and "initdb" in copied
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]  # no staging folder left behind
