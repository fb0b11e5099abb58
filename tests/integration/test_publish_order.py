"""Integration: a cleared publish task of an older date never moves either store back in time."""

from __future__ import annotations

from pathlib import Path

import pytest

from churn.stages import publish as publish_stages
from churn.config import ChurnConfig
from churn.connections import Resources
from churn.publish import redis_store as rs
from churn.publish.postgres import current_run
from tests.support.scores import write_scores
from tests.support.stage_refs import scored_ref

OLD, NEW = "2026-11-20", "2026-11-21"


def _run(tmp: Path, key: str) -> dict:
    return {"run_key": key, "as_of": key, "run_dir": str(tmp / key), "airflow_run_id": f"manual__{key}", "params": {}}


def _publish_both(cfg, res, tmp, key, first, count):
    scored = scored_ref(write_scores(tmp / f"{key}.parquet", key, first, count, seed=len(key) + first),
                        f"{key}-logreg")
    pg = publish_stages.publish_postgres(cfg, res, _run(tmp, key), scored)
    return scored, pg, publish_stages.publish_redis(cfg, res, _run(tmp, key), scored, pg)


@pytest.mark.parametrize("order", [(OLD, NEW), (NEW, OLD)], ids=["old-then-new", "new-then-old"])
def test_both_stores_serve_the_newest_run_whatever_the_publish_order(fresh_pg_url, redis_client, redis_url,
                                                                     tmp_path, order):
    cfg = ChurnConfig(state_dir=tmp_path, pg_reader_role="")
    res = Resources.from_urls(fresh_pg_url, redis_url)
    results = {key: _publish_both(cfg, res, tmp_path, key, i * 100, 500) for i, key in enumerate(order)}
    conn = res.pg()
    assert current_run(conn) == NEW
    conn.close()
    assert rs.served_run(redis_client) == NEW
    if order == (NEW, OLD):
        assert results[OLD][2]["skipped"] is True  # the older run stays in Postgres history only


def test_a_cleared_old_publish_redis_keeps_the_newer_batch(fresh_pg_url, redis_client, redis_url, tmp_path):
    cfg = ChurnConfig(state_dir=tmp_path, pg_reader_role="")
    res = Resources.from_urls(fresh_pg_url, redis_url)
    old_scored, old_pg, _ = _publish_both(cfg, res, tmp_path, OLD, 0, 500)
    _publish_both(cfg, res, tmp_path, NEW, 100, 500)
    assert old_pg["is_current"] is True  # what the old run's XCom still says
    before = {k: redis_client.dump(k) for k in redis_client.keys() if k != b"churn:meta"}
    # clearing yesterday's publish_redis replays it with yesterday's XCom
    again = publish_stages.publish_redis(cfg, res, _run(tmp_path, OLD), old_scored, old_pg)
    assert again["skipped"] is True and NEW in again["reason"]
    assert rs.served_run(redis_client) == NEW
    assert {k: redis_client.dump(k) for k in redis_client.keys() if k != b"churn:meta"} == before
    assert rs.lookup_score(redis_client, "C00000150")["run_id"] == NEW


def test_concurrent_redis_publishes_never_mix_runs(redis_client, tmp_path):
    """An older run's publish started while a newer one is writing waits for it, then is refused untouched.

    Without the publish lease the older run would pass its first check (the marker still says the
    run before both), overwrite the newer run's records while they are written, and only then be
    refused at the switch: records of two runs behind one marker.
    """
    import threading
    import time

    new_path = write_scores(tmp_path / "new.parquet", NEW, 0, 3000, seed=1)
    old_path = write_scores(tmp_path / "old.parquet", OLD, 0, 3000, seed=2)
    new_started = threading.Event()
    outcome: dict = {}

    def slow(point: str) -> None:
        if point == "batch":
            new_started.set()
            time.sleep(0.05)  # 15 batches of 200: the newer publish takes ~1 s

    def publish_new() -> None:
        outcome["new"] = rs.publish_scores(redis_client, new_path, NEW, "m-new", batch_rows=200, hook=slow)

    def publish_old() -> None:
        new_started.wait(10)
        try:
            outcome["old"] = rs.publish_scores(redis_client, old_path, OLD, "m-old", batch_rows=200)
        except rs.OlderRunRefused as exc:
            outcome["old"] = exc

    threads = [threading.Thread(target=publish_new), threading.Thread(target=publish_old)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert isinstance(outcome["old"], rs.OlderRunRefused), outcome
    assert rs.served_run(redis_client) == NEW
    runs = {rs.lookup_score(redis_client, f"C{i:08d}")["run_id"] for i in range(1, 3001, 7)}
    assert runs == {NEW}
    assert not redis_client.exists(rs.lock_key())  # the lease is released after each publish
    assert "writing" not in rs.served_meta(redis_client)


def test_a_publish_that_lost_its_lease_never_moves_the_marker(redis_client, tmp_path):
    path = write_scores(tmp_path / "new.parquet", NEW, 0, 1000, seed=1)

    def steal(point: str) -> None:
        if point == "records_written":  # the lease lapsed and another publish took it
            redis_client.set(rs.lock_key(), b"someone-else")

    with pytest.raises(rs.RedisPublishError, match="lease was lost"):
        rs.publish_scores(redis_client, path, NEW, "m-new", hook=steal)
    assert rs.served_run(redis_client) is None
    assert redis_client.get(rs.lock_key()) == b"someone-else"  # the other holder's lease is not released by us


def test_a_second_publish_of_the_same_run_waits_for_the_first(fresh_pg_url, tmp_path):
    """A zombie task and its retry publishing one run to Postgres at once: serialized, both complete."""
    import threading
    import time

    import psycopg2

    from churn.publish import postgres as pgpub

    path = write_scores(tmp_path / "new.parquet", NEW, 0, 3000, seed=1)
    first_loading = threading.Event()
    errors: list = []
    order: list = []

    def slow(point: str) -> None:
        if point == "copy":
            first_loading.set()
            time.sleep(0.1)

    def publish(name: str, hook=None) -> None:
        conn = psycopg2.connect(fresh_pg_url)
        try:
            pgpub.publish_scores(conn, path, NEW, "m", hook=hook, copy_batch_rows=300)
            order.append(name)
        except pgpub.PublishError as exc:
            errors.append(exc)
        finally:
            conn.close()

    first = threading.Thread(target=publish, args=("first", slow))
    first.start()
    assert first_loading.wait(30)
    second = threading.Thread(target=publish, args=("second",))
    second.start()
    first.join(60)
    second.join(60)
    assert errors == [] and order == ["first", "second"]
    conn = psycopg2.connect(fresh_pg_url)
    assert current_run(conn) == NEW
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM churn.scores_current")
        assert cur.fetchone()[0] == 3000
        cur.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
        assert cur.fetchone()[0] == 0  # released
    conn.close()


def test_lock_wait_has_a_limit(fresh_pg_url, tmp_path):
    import psycopg2

    from churn.publish import postgres as pgpub

    path = write_scores(tmp_path / "new.parquet", NEW, 0, 100, seed=1)
    holder = psycopg2.connect(fresh_pg_url)
    with holder.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (pgpub._LOCK_KEY, NEW))
    holder.commit()
    conn = psycopg2.connect(fresh_pg_url)
    try:
        with pytest.raises(pgpub.PublishError, match="another publish of run 2026-11-21"):
            pgpub.publish_scores(conn, path, NEW, "m", lock_wait_seconds=0.5)
    finally:
        conn.close()
        holder.close()
