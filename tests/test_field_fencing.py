"""Fencing (issue 26 item 17): a stalled Redis publisher writes nothing once its lease is gone; champion
changes land in an append-only history, and a gate-refused model needs an explicit override and a reason."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import redis

from churn.publish import redis_store as rs
from churn.publish.redis_encoding import Fence, encode_json, send_fenced
from tests.test_publish_postgres import write_scores

OLD, NEW = "2026-11-20", "2026-11-21"
N = 600


def _runs_served(admin, layout: str) -> set[str]:
    return {rs.lookup_score(admin, f"C{i:08d}", layout=layout, buckets=64)["run_id"] for i in range(1, N + 1)}


@pytest.mark.parametrize("layout", rs.LAYOUTS)
def test_a_publisher_stalled_past_its_lease_writes_no_batch_after_another_took_over(
        redis_url, redis_client, tmp_path, monkeypatch, layout):
    """Publisher A stalls just before it sends a batch (its lease check already passed); meanwhile its lease
    lapses and publisher B publishes a newer run. When A resumes, the server refuses A's batch whole.

    Without fencing A's batch lands on top of B's run: records of two runs behind B's marker.
    """
    old_path = write_scores(tmp_path / "old.parquet", OLD, 0, N, seed=1)
    new_path = write_scores(tmp_path / "new.parquet", NEW, 0, N, seed=2)
    a = redis.Redis.from_url(redis_url, client_name="publisher-a")  # the platform's ACL user, as the pipeline
    b = redis.Redis.from_url(redis_url, client_name="publisher-b")
    data_key = b"churn:score:" if layout == "json" else b"churn:h:"
    original = redis.connection.AbstractConnection.send_packed_command
    stalled = []

    def send(self, packet, check_health=True):
        chunks = packet if isinstance(packet, (list, tuple)) else [packet]
        if (self.client_name == "publisher-a" and not stalled
                and any(data_key in bytes(memoryview(c)) for c in chunks)):
            stalled.append(True)  # A is paused here (GC, SIGSTOP) past its lease...
            redis_client.delete(rs.lock_key())  # ...the lease lapses...
            rs.publish_scores(b, new_path, NEW, "m-new", layout=layout, buckets=64, batch_rows=100)  # ...B publishes
        return original(self, packet, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", send)
    with pytest.raises(rs.RedisPublishError) as raised:
        rs.publish_scores(a, old_path, OLD, "m-old", layout=layout, buckets=64, batch_rows=100,
                          hash_partition_rows=200, lock_lease_seconds=5)
    assert stalled
    assert _runs_served(redis_client, layout) == {NEW}  # not one record of A's stale batch
    assert rs.served_run(redis_client) == NEW
    assert isinstance(raised.value, rs.LeaseLost), raised.value
    assert "lease" in str(raised.value) and "CHURN_PUBLISH_LEASE_SECONDS" in str(raised.value)


def test_a_batch_sent_with_a_stale_lease_token_writes_nothing(redis_url, redis_client, tmp_path):
    """The internal batch write with A's token after B acquired the lease: refused, B's data and lease intact."""
    path = write_scores(tmp_path / "old.parquet", OLD, 0, 50, seed=1)
    client = redis.Redis.from_url(redis_url)
    lease_a = client.lock(rs.lock_key(), timeout=5, thread_local=False)
    assert lease_a.acquire(blocking=False)
    redis_client.delete(rs.lock_key())  # A's lease lapsed while A was stopped
    lease_b = client.lock(rs.lock_key(), timeout=5, thread_local=False)
    assert lease_b.acquire(blocking=False)
    redis_client.set("churn:score:C00000001", b"B's record")
    batch = next(pq.ParquetFile(path).iter_batches(batch_size=50))

    with pytest.raises(rs.LeaseLost, match="lease churn:publish_lock is no longer this publisher's"):
        send_fenced(client, Fence(rs.lock_key(), lease_a.local.token, 5000), encode_json(batch, "churn"))
    assert redis_client.get("churn:score:C00000001") == b"B's record"
    assert redis_client.get("churn:score:C00000002") is None
    assert redis_client.get(rs.lock_key()) == lease_b.local.token  # B's lease neither renewed nor dropped by A
    # the holder's own write goes through and renews its lease
    send_fenced(client, Fence(rs.lock_key(), lease_b.local.token, 9000), encode_json(batch, "churn"))
    assert rs.lookup_score(redis_client, "C00000002")["run_id"] == OLD
    assert 5000 < redis_client.pttl(rs.lock_key()) <= 9000
    assert client.ping()  # the refused connection went back to the pool clean (no WATCH left behind)
