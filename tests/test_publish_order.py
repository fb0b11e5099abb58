"""Integration: a cleared publish task of an older date never moves either store back in time."""

from __future__ import annotations

from pathlib import Path

import pytest

from churn import pipeline
from churn.config import ChurnConfig
from churn.connections import Resources
from churn.publish import redis_store as rs
from churn.publish.postgres import current_run
from tests.test_publish_postgres import write_scores

pytestmark = pytest.mark.integration
OLD, NEW = "2026-11-20", "2026-11-21"


def _run(tmp: Path, key: str) -> dict:
    return {"run_key": key, "as_of": key, "run_dir": str(tmp / key), "airflow_run_id": f"manual__{key}", "params": {}}


def _publish_both(cfg, res, tmp, key, first, count):
    scored = {"path": str(write_scores(tmp / f"{key}.parquet", key, first, count, seed=len(key) + first)),
              "model_version": f"{key}-logreg"}
    pg = pipeline.publish_postgres(cfg, res, _run(tmp, key), scored)
    return scored, pg, pipeline.publish_redis(cfg, res, _run(tmp, key), scored, pg)


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
    again = pipeline.publish_redis(cfg, res, _run(tmp_path, OLD), old_scored, old_pg)
    assert again["skipped"] is True and NEW in again["reason"]
    assert rs.served_run(redis_client) == NEW
    assert {k: redis_client.dump(k) for k in redis_client.keys() if k != b"churn:meta"} == before
    assert rs.lookup_score(redis_client, "C00000150")["run_id"] == NEW
