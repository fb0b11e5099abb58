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


def _clean(base: str, queue) -> None:
    from pathlib import Path

    services.PG_ROOT_BASE = Path(base)
    try:
        services._remove_orphans()
        queue.put("ok")
    except Exception as exc:  # noqa: BLE001 - the test reports what a worker hit
        queue.put(f"{type(exc).__name__}: {exc}")


def test_concurrent_starts_remove_each_orphan_once(tmp_path):
    base = tmp_path / "pg"
    base.mkdir()
    for n in range(200):  # data folders whose state folder is gone (pytest rotated its basetemp away)
        home = base / f"home{n:03d}"
        (home / "data").mkdir(parents=True)
        (home / services.OWNER_FILE).write_text(str(tmp_path / "gone" / str(n)))
    alive = base / "alive"
    alive.mkdir()
    (alive / services.OWNER_FILE).write_text(str(tmp_path))  # its state folder exists: kept
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_clean, args=(str(base), queue)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    assert [queue.get(timeout=5) for _ in workers] == ["ok"] * 4
    assert sorted(p.name for p in base.iterdir() if p.is_dir()) == ["alive"]
