"""Integration: the compact layout on a Redis Cluster of 3 primaries and 3 replicas on loopback (issue 24 item 3).

The same valkey-server as every other test, cluster mode, passwords on; the platform publishes through a
``redis+cluster://`` URL and front-ends read as the read-only user.
"""

from __future__ import annotations

import random
import socket
import threading
import time

import pyarrow.parquet as pq
import pytest
import redis

from churn.connections import redis_from_url
from churn.dev.redis_cluster import LocalCluster
from churn.dev.services import REDIS_READER_USER
from churn.publish import redis_store as rs
from churn.publish.redis_keys import cluster_groups, fence_key, group_of, lock_key
from tests.support.clients import client_lookups, js_lookup_command, node_binary
from tests.support.scores import RUN_A, RUN_B

A_IDS = [f"C{i:08d}" for i in range(1, 6001)]
B_IDS = [f"C{i:08d}" for i in range(1001, 8001)]
FIELDS = {"customer_id", "churn_probability", "risk_band", "risk_decile", "model_version", "run_id", "scored_at"}


def _free_ports(count: int) -> int:
    """A first port such that it, the next ``count - 1`` and their cluster-bus ports (+10000) are all free."""
    rng = random.Random()
    for _ in range(200):
        first = rng.randrange(20000, 30000)
        wanted = [p for port in range(first, first + count) for p in (port, port + 10000)]
        try:
            socks = []
            for port in wanted:
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no free range of cluster ports on loopback")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """3 primaries + 3 replicas, started once for the module."""
    nodes = LocalCluster(tmp_path_factory.mktemp("cluster"), _free_ports(6))
    nodes.start(timeout=120)
    yield nodes
    nodes.stop()


@pytest.fixture
def platform(cluster):
    """A cluster client as the platform's user, on an emptied cluster."""
    for port in _live_primaries(cluster):
        cluster.admin(port).flushall()
    client = redis_from_url(cluster.url(), socket_timeout=10)
    yield client
    client.close()


@pytest.fixture
def reader(cluster):
    """A cluster client as the read-only front-end user."""
    client = redis_from_url(cluster.url(REDIS_READER_USER), socket_timeout=10)
    yield client
    client.close()


def _live_primaries(cluster: LocalCluster) -> list[int]:
    ports = []
    for port in cluster.ports:
        try:
            if cluster.admin(port).info("replication").get("role") == "master":
                ports.append(port)
        except redis.ConnectionError:
            continue
    return ports


def _publish(client, path, run, stale=None, **kwargs):
    return rs.publish_scores(client, path, run, f"{run}-logreg", stale, layout="compact", buckets=0,
                             max_entries=128, batch_rows=500, hash_partition_rows=2000, **kwargs)


def _stale(old_ids, new_ids):
    new = set(new_ids)
    return lambda sources: [c for c in old_ids if c not in new] if sources else []


def _truth(path) -> dict[str, dict]:
    return {r["customer_id"]: r for r in pq.read_table(path).to_pylist()}


def _as_record(row: dict) -> dict:
    return {"customer_id": row["customer_id"], "churn_probability": round(float(row["churn_probability"]), 6),
            "risk_band": row["risk_band"], "risk_decile": row["risk_decile"], "model_version": row["model_version"],
            "run_id": row["run_id"], "scored_at": row["scored_at"].strftime("%Y-%m-%dT%H:%M:%SZ")}


def _keys_by_node(cluster: LocalCluster) -> dict[int, list[str]]:
    return {port: [k.decode() for k in cluster.admin(port).scan_iter(count=1000)] for port in _live_primaries(cluster)}


def test_publish_spreads_tagged_buckets_over_every_primary_and_every_lookup_is_the_file(cluster, platform, reader,
                                                                                       scores):
    result = _publish(platform, scores[RUN_A], RUN_A)
    assert result.rows == 6000 and result.buckets == 128
    meta = rs.served_meta(reader)
    assert (meta["run_id"], meta["layout"], meta["buckets"], meta["groups"]) == (RUN_A, "compact", "128", "16")
    truth = _truth(scores[RUN_A])
    for cid in A_IDS:  # every customer, as a front-end reads it: one HGET routed by the key's slot
        assert rs.lookup_score(reader, cid) == _as_record(truth[cid]), cid
    assert rs.lookup_score(reader, "C99999999") is None
    # the documented key of a customer names its group's hash tag; one command per lookup
    cid = "C00000042"
    bucket = rs.bucket_of(cid, 128)
    key = f"churn:c:128:{{{group_of(bucket, 128, 16)}}}:{bucket}"
    assert rs.lookup_command(reader, cid) == f"HGET {key} {cid}"
    assert int(reader.hget(key, cid)) // 1000 == round(truth[cid]["churn_probability"] * 1e6)
    # every primary holds buckets, and a bucket lives on the node of its group's fence
    by_node = _keys_by_node(cluster)
    assert len(by_node) == 3
    buckets_per_node = {port: [k for k in keys if k.startswith("churn:c:")] for port, keys in by_node.items()}
    assert all(len(keys) >= 10 for keys in buckets_per_node.values()), {p: len(k) for p, k in buckets_per_node.items()}
    assert sum(len(k) for k in buckets_per_node.values()) == 128
    for port, keys in buckets_per_node.items():
        for key in keys:
            group = int(key.split("{")[1].split("}")[0])
            assert fence_key("churn", group) in by_node[port], (key, port)
    # the lease lives with the marker (the switch WATCHes both)
    assert cluster.primary_of(lock_key("churn", cluster=True)) == cluster.primary_of("churn:meta")
    # a re-publish of the same run rewrites nothing else
    before = {port: sorted(keys) for port, keys in by_node.items()}
    _publish(platform, scores[RUN_A], RUN_A)
    assert {port: sorted(keys) for port, keys in _keys_by_node(cluster).items()} == before


def test_the_javascript_client_reads_the_cluster_like_the_reference_client(cluster, platform, reader, scores):
    """ioredis' Cluster client, given the platform's redis+cluster:// URL, returns the reference record of
    every customer (and an event refresh's record)."""
    node = node_binary()
    _publish(platform, scores[RUN_A], RUN_A)
    meta = rs.served_meta(reader)
    event = "0.901234|10|high|2026-11-20|2026-11-20-logreg|2026-11-21T09:15:00Z|2026-11-21T09:14:58Z"
    platform.hset(rs.compact_key("C00000077", buckets=int(meta["buckets"]), groups=int(meta["groups"])),
                  "C00000077", event)
    ids = A_IDS + ["C99999999", "Ä-ü-€"]
    expected = [rs.lookup_score(reader, cid) for cid in ids]
    assert expected[76]["source"] == "event" and sum(r is not None for r in expected) == 6000
    assert client_lookups(js_lookup_command(node), cluster.url(REDIS_READER_USER), ids) == expected


def test_a_hash_tagged_event_stream_works_on_the_cluster(platform):
    """The stream feed's commands on a cluster: a stream named with a hash tag keeps its dead-letter stream in
    its slot (the dead-lettering is one transaction); read, dead-letter, acknowledge and trim."""
    from churn.data import event_stream

    stream = "{churn:events}"
    platform.xadd(stream, {"customer_id": "C00000001", "kind": "complaint"})
    platform.xadd(stream, {"kind": "no customer"})
    entries = event_stream.read_batch(platform, stream, "run-1", 10, 60)
    assert [e.customer_id for e in entries] == ["C00000001", None]
    assert event_stream.dead_letter(platform, stream, [e for e in entries if e.reason]) == 1
    dead = platform.xrange(event_stream.dead_stream(stream))
    assert len(dead) == 1 and b"no customer_id field" in dead[0][1][b"reason"]
    assert event_stream.acknowledge(platform, stream, [entries[0].entry_id]) == 1
    assert platform.xlen(stream) == 0 and event_stream.backlog(platform, stream)[:2] == (0, 0)


def test_json_and_hash_layouts_are_refused_on_a_cluster_with_the_fix(platform, scores):
    for layout in ("json", "hash"):
        with pytest.raises(rs.RedisPublishError, match="CHURN_REDIS_LAYOUT=compact"):
            rs.publish_scores(platform, scores[RUN_A], RUN_A, "m", layout=layout)
    assert rs.served_meta(platform) == {}


class Reader(threading.Thread):
    """Looks customers up during a publish: each lookup must return a complete record of run A or B."""

    def __init__(self, url: str, truths: dict[str, dict[str, dict]]):
        super().__init__(daemon=True)
        self.client = redis_from_url(url, socket_timeout=10)
        self.truths = truths
        self.stop = threading.Event()
        self.lookups = 0
        self.bad: list[object] = []
        self.errors: list[str] = []

    def run(self) -> None:
        rng = random.Random(5)
        both = A_IDS[1000:]
        while not self.stop.is_set():
            cid = rng.choice(both)
            try:
                record = rs.lookup_score(self.client, cid)
            except redis.RedisError as exc:  # a node being failed over: counted, not a wrong answer
                self.errors.append(type(exc).__name__)
                time.sleep(0.05)
                continue
            self.lookups += 1
            if record is None or set(record) != FIELDS:
                self.bad.append(("incomplete", cid, record))
            elif record != _as_record(self.truths[record["run_id"]][cid]):
                self.bad.append(("not run A's or B's record", cid, record))


def test_readers_see_complete_records_during_a_publish_and_stale_customers_go_after_the_switch(
        cluster, platform, scores):
    truths = {RUN_A: _truth(scores[RUN_A]), RUN_B: _truth(scores[RUN_B])}
    _publish(platform, scores[RUN_A], RUN_A)
    reader = Reader(cluster.url(REDIS_READER_USER), truths)
    reader.start()
    try:
        while reader.lookups < 20:
            time.sleep(0.005)
        _publish(platform, scores[RUN_B], RUN_B, _stale(A_IDS, B_IDS), hook=lambda point: time.sleep(0.005))
        seen = reader.lookups
        while reader.lookups < seen + 20:
            time.sleep(0.005)
    finally:
        reader.stop.set()
        reader.join(10)
    assert not reader.bad and not reader.errors, (reader.bad[:5], reader.errors[:5])
    assert reader.lookups > 100
    assert rs.served_run(platform) == RUN_B
    for cid in A_IDS[:1000]:
        assert rs.lookup_score(platform, cid) is None
    for cid in random.Random(2).sample(B_IDS, 500):
        assert rs.lookup_score(platform, cid) == _as_record(truths[RUN_B][cid])
    fields = sum(platform.hlen(k) for keys in _keys_by_node(cluster).values() for k in keys if k.startswith("churn:c:"))
    assert fields == 7000  # one record per customer: nothing of run A's 1,000 dropped customers is left


def test_a_growing_population_is_re_bucketed_beside_the_served_keys_on_the_cluster(cluster, platform, scores,
                                                                                   tmp_path):
    from tests.support.scores import write_scores

    _publish(platform, scores[RUN_A], RUN_A)
    big = write_scores(tmp_path / "big.parquet", RUN_B, 0, 40_000, seed=4)
    result = _publish(platform, big, RUN_B, _stale([], []))
    assert result.buckets == 1024 and rs.served_meta(platform)["groups"] == str(cluster_groups(1024))
    keys = [k for keys in _keys_by_node(cluster).values() for k in keys if k.startswith("churn:c:")]
    assert keys and all(k.startswith("churn:c:1024:{") for k in keys)  # the 128-bucket keys are gone
    truth = _truth(big)
    for cid in random.Random(4).sample(sorted(truth), 500):
        assert rs.lookup_score(platform, cid) == _as_record(truth[cid])


def test_a_publisher_stalled_past_its_lease_writes_nothing_after_another_took_over(cluster, platform, scores):
    """A stalls after its first batch; its lease lapses; B publishes a newer run (claiming every group's
    fence); A resumes and the next group's node refuses A's batch whole."""
    _publish(platform, scores[RUN_A], RUN_A)
    home = platform.get_node_from_key("churn:meta").redis_connection
    other = redis_from_url(cluster.url(), socket_timeout=10)
    newer = "2026-11-22"
    from tests.support.scores import write_scores

    newer_path = write_scores(scores[RUN_B].parent / "c.parquet", newer, 1000, 7000, seed=3)
    batches = 0

    def stall(point: str) -> None:
        nonlocal batches
        batches += point == "batch"
        if point == "batch" and batches == 1:
            home.delete(lock_key("churn", cluster=True))  # A's lease lapsed while A was stopped
            _publish(other, newer_path, newer, _stale(A_IDS, B_IDS))

    with pytest.raises(rs.LeaseLost, match="no longer this publisher's"):
        _publish(platform, scores[RUN_B], RUN_B, _stale(A_IDS, B_IDS), hook=stall)
    truth = _truth(newer_path)
    assert rs.served_run(platform) == newer
    for cid in B_IDS:  # every record is B's publisher's: none of the stalled A's batches landed after it
        assert rs.lookup_score(platform, cid) == _as_record(truth[cid]), cid
    other.close()


def _wait_for_failover(cluster: LocalCluster, dead: int, timeout: float = 60.0) -> None:
    """Until a live node serves every slot again (the dead primary's replica promoted)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = [p for p in cluster.ports if p != dead]
        try:
            info = cluster.admin(live[0]).execute_command("CLUSTER", "INFO").decode()
            slots = cluster.admin(live[0]).execute_command("CLUSTER", "SLOTS")
        except redis.RedisError:
            time.sleep(0.1)
            continue
        served = sum(high - low + 1 for low, high, primary, *_ in slots if int(primary[1]) != dead)
        if "cluster_state:ok" in info and served == 16384:
            return
        time.sleep(0.1)
    raise AssertionError(f"no failover of node {dead} within {timeout} s")


@pytest.mark.parametrize("victim", ["marker", "buckets"])
def test_a_primary_killed_mid_publish_leaves_readers_on_complete_records_and_the_retry_finishes(
        cluster, platform, scores, victim):
    """SIGKILL of a primary (the marker's, or one holding only buckets) after two batches of run B: the publish
    fails, the replica is promoted, every customer still reads a complete record (run A's, or run B's where
    it was written) under run A's marker, and the retry with a new client publishes run B whole.

    The lease is short here: the dead node's lease key survives on its replica, and the retry waits it out
    (``CHURN_PUBLISH_LEASE_SECONDS``; the failed publish could not release it on a dead node)."""
    truths = {RUN_A: _truth(scores[RUN_A]), RUN_B: _truth(scores[RUN_B])}
    _publish(platform, scores[RUN_A], RUN_A)
    for port in _live_primaries(cluster):  # the served batch is on the replicas before the crash
        cluster.admin(port).execute_command("WAIT", 1, 5000)
    home = cluster.primary_of("churn:meta")
    dead = home if victim == "marker" else next(p for p in _live_primaries(cluster) if p != home)
    batches = 0

    def crash(point: str) -> None:
        nonlocal batches
        batches += point == "batch"
        if point == "batch" and batches == 3:
            cluster.kill(dead)

    after = None
    try:
        with pytest.raises(rs.RedisPublishError, match="retry"):
            _publish(platform, scores[RUN_B], RUN_B, _stale(A_IDS, B_IDS), hook=crash, lock_lease_seconds=3)
        assert batches >= 3  # the node died mid-publish, after two batches were written
        _wait_for_failover(cluster, dead)
        after = redis_from_url(cluster.url(REDIS_READER_USER), socket_timeout=10)
        assert rs.served_run(after) == RUN_A  # the marker never moved
        runs = set()
        for cid in A_IDS:  # every customer of the served batch: a complete record of run A or of run B
            record = rs.lookup_score(after, cid)
            assert record is not None and record == _as_record(truths[record["run_id"]][cid]), (cid, record)
            runs.add(record["run_id"])
        assert RUN_A in runs
        retry = redis_from_url(cluster.url(), socket_timeout=10)  # the task's retry: a new client, new topology
        _publish(retry, scores[RUN_B], RUN_B, _stale(A_IDS, B_IDS), lock_lease_seconds=3)
        retry.close()
        assert rs.served_run(after) == RUN_B
        for cid in B_IDS:
            assert rs.lookup_score(after, cid) == _as_record(truths[RUN_B][cid]), cid
        assert all(rs.lookup_score(after, cid) is None for cid in A_IDS[:1000])
    finally:
        if after is not None:
            after.close()
        if batches >= 3:
            cluster.start_node(dead)  # back as a replica of the promoted node, for the next test
            cluster.wait_ok(120)
