"""SIGKILL during publish: a real child process is killed at named points while a reader checks every answer.

The child runs the two publish stages as the pipeline does (Postgres, then Redis
with stale ids from the Postgres run tables) and parks at the chosen point; the
test kills it with SIGKILL, checks that the previous batch is fully readable in
both stores, then retries through the real pipeline stages and checks the new
batch is complete, with stale customers gone.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import threading
import time

import psycopg2
import pytest
import redis

from churn.config import ChurnConfig
from churn.connections import Resources
from churn.publish import postgres as pgpub
from churn.publish import redis_store as rs
from tests.support.scores import RUN_A, RUN_B, write_scores
from tests.support.stage_refs import scored_ref

BUCKETS = 64
A_N, B_FIRST, B_N = 3000, 500, 3500  # run A: C1..C3000; run B: C501..C4000
A_ONLY = [f"C{i:08d}" for i in range(1, B_FIRST + 1)]
OVERLAP = [f"C{i:08d}" for i in range(B_FIRST + 1, A_N + 1)]
B_ONLY = [f"C{i:08d}" for i in range(A_N + 1, B_FIRST + B_N + 1)]


def _child(pg_url: str, redis_url: str, path: str, layout: str, point: str, nth: int, pipe) -> None:
    """Publish run B like publish_postgres + publish_redis, parking forever at the nth ``point``."""
    seen = {"n": 0}

    def hook(store: str):
        def at(name: str) -> None:
            if f"{store}:{name}" == point:
                seen["n"] += 1
                if seen["n"] == nth:
                    pipe.send(point)
                    time.sleep(3600)  # parked: the parent kills us here
        return at

    conn = psycopg2.connect(pg_url)
    published = pgpub.publish_scores(conn, path, RUN_B, f"{RUN_B}-logreg", hook=hook("pg"), copy_batch_rows=300)
    client = redis.Redis.from_url(redis_url)
    rs.publish_scores(client, path, RUN_B, f"{RUN_B}-logreg",
                      lambda sources: pgpub.stale_customers(conn, sources, published.table),
                      layout=layout, buckets=BUCKETS, batch_rows=200, hook=hook("redis"),
                      hash_partition_rows=200, lock_lease_seconds=2)  # a killed holder's lease lapses in 2 s
    pipe.send("finished")


class BothStoresReader(threading.Thread):
    """Checks every answer: Postgres shows one complete batch; Redis answers every customer completely."""

    def __init__(self, pg_url: str, redis_url: str, layout: str):
        super().__init__(daemon=True)
        self.pg_url, self.layout = pg_url, layout
        self.client = redis.Redis.from_url(redis_url)
        self.stop = threading.Event()
        self.checks = 0
        self.bad: list[object] = []

    def _lookup(self, cid):
        return rs.lookup_score(self.client, cid, layout=self.layout, buckets=BUCKETS)

    def run(self) -> None:
        rng = random.Random(11)
        conn = psycopg2.connect(self.pg_url)
        conn.autocommit = True
        cur = conn.cursor()
        while not self.stop.is_set():
            cur.execute("SELECT count(*), array_agg(DISTINCT run_id) FROM churn.scores_current")
            count, runs = cur.fetchone()
            if (count, runs) not in ((A_N, [RUN_A]), (B_N, [RUN_B])):
                self.bad.append(("postgres", count, runs))
            before = rs.served_run(self.client)
            overlap = self._lookup(rng.choice(OVERLAP))
            a_only = self._lookup(rng.choice(A_ONLY))
            b_only = self._lookup(rng.choice(B_ONLY))
            after = rs.served_run(self.client)
            if overlap is None or None in overlap.values() or overlap["run_id"] not in (RUN_A, RUN_B):
                self.bad.append(("redis overlap", before, overlap))
            if before == after == RUN_A and (a_only is None or a_only["run_id"] != RUN_A):
                self.bad.append(("redis old batch incomplete", a_only))
            if before == RUN_B and (b_only is None or b_only["run_id"] != RUN_B):
                self.bad.append(("redis marker before records", b_only))
            if before not in (RUN_A, RUN_B):
                self.bad.append(("redis marker", before))
            self.checks += 1
            time.sleep(0.002)  # leave the GIL to the retry running in this process
        conn.close()


def _redis_state(client, layout):
    def look(cid):
        return rs.lookup_score(client, cid, layout=layout, buckets=BUCKETS)
    return {"marker": rs.served_run(client),
            "a_only": {look(c)["run_id"] if look(c) else None for c in A_ONLY[::25]},
            "overlap": {look(c)["run_id"] if look(c) else None for c in OVERLAP[::25]},
            "b_only": {look(c)["run_id"] if look(c) else None for c in B_ONLY[::25]}}


def _pg_state(url):
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*), array_agg(DISTINCT run_id) FROM churn.scores_current")
        state = cur.fetchone()
    conn.close()
    return state


POINTS = [
    ("pg:copy", 3, "json"), ("pg:loaded", 1, "json"), ("pg:switching", 1, "json"), ("pg:switched", 1, "json"),
    ("redis:batch", 4, "json"), ("redis:records_written", 1, "json"), ("redis:switched", 1, "json"),
    ("redis:batch", 4, "hash"), ("redis:switched", 1, "hash"),
]


@pytest.mark.parametrize("point,nth,layout", POINTS, ids=[f"{p}#{n}-{lay}" for p, n, lay in POINTS])
def test_sigkill_at_any_point_keeps_the_previous_batch_and_the_retry_completes(
        fresh_pg_url, redis_client, redis_url, tmp_path, point, nth, layout):
    path_a = write_scores(tmp_path / "a.parquet", RUN_A, 0, A_N, seed=1)
    path_b = write_scores(tmp_path / "b.parquet", RUN_B, B_FIRST, B_N, seed=2)
    conn = psycopg2.connect(fresh_pg_url)
    published = pgpub.publish_scores(conn, path_a, RUN_A, f"{RUN_A}-logreg")
    rs.publish_scores(redis_client, path_a, RUN_A, f"{RUN_A}-logreg", layout=layout, buckets=BUCKETS)
    conn.close()
    assert published.is_current

    reader = BothStoresReader(fresh_pg_url, redis_url, layout)
    reader.start()
    # forkserver: children fork from a clean, pre-imported server (no threads or sockets of this process)
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    parent_end, child_end = ctx.Pipe()
    child = ctx.Process(target=_child, args=(fresh_pg_url, redis_url, str(path_b), layout, point, nth, child_end))
    child.start()
    try:
        assert parent_end.poll(120), "the child never reached the kill point"
        assert parent_end.recv() == point
        os.kill(child.pid, signal.SIGKILL)
        child.join(30)
        assert child.exitcode == -signal.SIGKILL
        checks = reader.checks
        while reader.checks < checks + 5:
            time.sleep(0.01)

        pg_after_kill = _pg_state(fresh_pg_url)
        redis_after_kill = _redis_state(redis_client, layout)
        if point.startswith("pg:") and point != "pg:switched":
            assert pg_after_kill == (A_N, [RUN_A])
        else:
            assert pg_after_kill == (B_N, [RUN_B])  # the Postgres switch committed before the kill
        if point == "redis:switched":
            assert redis_after_kill["marker"] == RUN_B and redis_after_kill["b_only"] == {RUN_B}
        else:
            # the previous batch is fully readable: marker and every old-only customer on run A,
            # customers of both runs answer a complete record (old, or new where overwritten in place)
            assert redis_after_kill["marker"] == RUN_A
            assert redis_after_kill["a_only"] == {RUN_A}
            assert redis_after_kill["overlap"] <= {RUN_A, RUN_B} and None not in redis_after_kill["overlap"]

        # the Airflow retry: the real pipeline stages, from scratch
        from churn.stages.publish import publish_postgres, publish_redis

        cfg = ChurnConfig(state_dir=tmp_path, redis_layout=layout, redis_hash_buckets=BUCKETS, pg_reader_role="")
        res = Resources.from_urls(fresh_pg_url, redis_url)
        run = {"run_key": RUN_B, "run_dir": str(tmp_path), "params": {}}
        scored = scored_ref(path_b, f"{RUN_B}-logreg")
        pg_out = publish_postgres(cfg, res, run, scored)
        redis_out = publish_redis(cfg, res, run, scored, pg_out)
        checks = reader.checks
        while reader.checks < checks + 5:
            time.sleep(0.01)
    finally:
        reader.stop.set()
        reader.join(10)
        if child.is_alive():
            os.kill(child.pid, signal.SIGKILL)
    assert not reader.bad, reader.bad[:5]
    assert reader.checks > 10
    assert pg_out["rows"] == redis_out["rows"] == B_N
    assert _pg_state(fresh_pg_url) == (B_N, [RUN_B])
    final = _redis_state(redis_client, layout)
    assert final == {"marker": RUN_B, "a_only": {None}, "overlap": {RUN_B}, "b_only": {RUN_B}}
    meta = rs.served_meta(redis_client)
    assert "writing" not in meta and "cleanup_from" not in meta
    if layout == "json":
        assert redis_client.dbsize() == B_N + 1
    else:
        assert sum(redis_client.hlen(f"churn:h:{b}") for b in range(BUCKETS)) == B_N
    conn = psycopg2.connect(fresh_pg_url)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'churn' AND tablename LIKE '%%loading'")
        assert cur.fetchone()[0] == 0
    conn.close()
