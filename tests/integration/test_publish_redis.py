"""Integration: Redis publish on the real server, both layouts (json GET, compact hash HGET)."""

from __future__ import annotations

import random
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from churn.publish import redis_store as rs
from churn.dev.services import embedded_redis_url, start_redis, stop_redis
from tests.support.net import free_port
from tests.support.scores import RUN_A, RUN_B

FIELDS = {"customer_id", "churn_probability", "risk_band", "risk_decile", "model_version", "run_id", "scored_at"}
A_IDS = [f"C{i:08d}" for i in range(1, 6001)]
B_IDS = [f"C{i:08d}" for i in range(1001, 8001)]
BUCKETS = 64  # ~110 customers per bucket at 7000: small hashes, like production's 65,536 at millions


def expected(path) -> dict[str, dict]:
    table = pq.read_table(path).to_pylist()
    return {r["customer_id"]: r for r in table}


def stale_between(old_ids, new_ids):
    """What the pipeline answers from Postgres: ids of the given runs that the new run lacks."""
    new = set(new_ids)
    return lambda sources: [c for c in old_ids if c not in new] if sources else []


def publish(client, path, run, layout, stale=None, **kwargs):
    return rs.publish_scores(client, path, run, f"{run}-logreg", stale, layout=layout, buckets=BUCKETS,
                             batch_rows=500, hash_partition_rows=500, **kwargs)


def lookup(client, cid, layout):
    return rs.lookup_score(client, cid, layout=layout, buckets=BUCKETS)


def check_record(record, cid, truth):
    assert record is not None, f"{cid} missing"
    assert set(record) == FIELDS and None not in record.values(), record
    row = truth[cid]
    assert record["customer_id"] == cid
    assert abs(record["churn_probability"] - row["churn_probability"]) < 1e-6
    assert (record["risk_band"], record["risk_decile"], record["model_version"], record["run_id"]) == (
        row["risk_band"], row["risk_decile"], row["model_version"], row["run_id"])
    assert record["scored_at"] == row["scored_at"].strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize("layout", rs.LAYOUTS)
def test_publish_writes_every_record_and_republish_is_identical(redis_client, scores, layout):
    truth = expected(scores[RUN_A])
    result = publish(redis_client, scores[RUN_A], RUN_A, layout)
    assert result.rows == 6000
    for cid in random.Random(1).sample(A_IDS, 300):
        check_record(lookup(redis_client, cid, layout), cid, truth)
    snapshot = {k: redis_client.dump(k) for k in redis_client.keys() if k != b"churn:meta"}
    size = redis_client.dbsize()
    publish(redis_client, scores[RUN_A], RUN_A, layout)
    assert redis_client.dbsize() == size
    assert {k: redis_client.dump(k) for k in redis_client.keys() if k != b"churn:meta"} == snapshot
    assert rs.served_meta(redis_client)["run_id"] == RUN_A
    assert "writing" not in rs.served_meta(redis_client)
    assert lookup(redis_client, "C99999999", layout) is None


def test_json_layout_key_contract_is_plain_get(redis_client, scores):
    publish(redis_client, scores[RUN_A], RUN_A, "json")
    assert redis_client.dbsize() == 6000 + 1  # one key per customer plus the marker
    raw = redis_client.get("churn:score:C00000042")
    import json

    assert json.loads(raw) == lookup(redis_client, "C00000042", "json")


def test_hash_layout_key_contract_is_one_hget_on_a_crc32_bucket(redis_client, scores):
    import zlib

    publish(redis_client, scores[RUN_A], RUN_A, "hash")
    bucket = zlib.crc32(b"C00000042") % BUCKETS
    raw = redis_client.hget(f"churn:h:{bucket}", "C00000042").decode()
    proba, decile, band, run = raw.split("|")
    record = lookup(redis_client, "C00000042", "hash")
    assert (float(proba), int(decile), band, run) == (record["churn_probability"], record["risk_decile"],
                                                      record["risk_band"], RUN_A)
    meta = rs.served_meta(redis_client)
    assert meta["layout"] == "hash" and int(meta["buckets"]) == BUCKETS
    assert redis_client.hlen("churn:runs") == 1
    assert sum(redis_client.hlen(f"churn:h:{b}") for b in range(BUCKETS)) == 6000


def test_compact_layout_key_contract_is_one_hget_of_an_integer(redis_client, scores):
    import zlib

    truth = expected(scores[RUN_A])
    publish(redis_client, scores[RUN_A], RUN_A, "compact")
    meta = rs.served_meta(redis_client)
    assert meta["layout"] == "compact" and int(meta["buckets"]) == BUCKETS
    # what a JavaScript or Java client does: one HGET, then arithmetic and the marker's slot details
    bucket = zlib.crc32(b"C00000042") % BUCKETS
    value = int(redis_client.hget(f"churn:c:{BUCKETS}:{bucket}", "C00000042"))
    micro, rest = divmod(value, 1000)
    decile, band, slot = rest // 100 + 1, rest // 10 % 10, rest % 10
    run_id, version, scored_at, bands = meta[f"slot_{slot}"].split("|")
    row = truth["C00000042"]
    assert abs(micro / 1e6 - row["churn_probability"]) < 1e-6
    assert (decile, bands.split(",")[band], run_id, version) == (row["risk_decile"], row["risk_band"], RUN_A,
                                                                 row["model_version"])
    assert meta["slot"] == str(slot) and "slot_writing" not in meta
    assert rs.decode_compact(value) == (micro / 1e6, decile, band, slot)
    assert redis_client.object("encoding", f"churn:c:{BUCKETS}:{bucket}") in (b"listpack", b"ziplist")
    assert not redis_client.exists("churn:runs")


def test_compact_slots_advance_per_run_and_a_retry_keeps_its_slot(redis_client, scores):
    publish(redis_client, scores[RUN_A], RUN_A, "compact")
    first = rs.served_meta(redis_client)["slot"]
    publish(redis_client, scores[RUN_A], RUN_A, "compact")  # the same run again: the same values
    assert rs.served_meta(redis_client)["slot"] == first
    publish(redis_client, scores[RUN_B], RUN_B, "compact", stale_between(A_IDS, B_IDS))
    meta = rs.served_meta(redis_client)
    assert meta["slot"] == str((int(first) + 1) % 10)
    assert meta[f"slot_{first}"].startswith(RUN_A + "|")  # the previous run's details stay until reused
    assert lookup(redis_client, "C00005000", "compact")["run_id"] == RUN_B


def test_buckets_follow_the_population_and_readers_never_miss_during_a_re_bucket(redis_client, scores, tmp_path,
                                                                                 services):
    """0 buckets = sized by the batch: a population that grows past the threshold is re-bucketed beside the
    served keys, the marker moves, then the old keys go; a reader that follows the marker never misses."""
    import pyarrow.compute as pc

    small = tmp_path / "small.parquet"
    kept = [f"C{i:08d}" for i in range(1001, 1301)]  # 300 customers of run A that run B also scores
    table = pq.read_table(scores[RUN_A])
    pq.write_table(table.filter(pc.is_in(table.column("customer_id"), value_set=pa.array(kept))), small)
    sized = rs.publish_scores(redis_client, small, RUN_A, f"{RUN_A}-logreg", None, layout="compact", buckets=0,
                              batch_rows=500, hash_partition_rows=500)
    limit = rs.compact_limit(redis_client)
    assert sized.buckets == rs.bucket_count(300, limit, 0.6)
    assert all(redis_client.hlen(k) <= limit for k in redis_client.scan_iter("churn:c:*"))
    reader = redis.Redis.from_url(services.redis_admin_url())
    assert rs.lookup_score(reader, "C00001001")["run_id"] == RUN_A  # the reader caches this marker
    misses: list[str] = []
    runs: set[str] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            for cid in ("C00001001", "C00001150", "C00001300"):
                record = rs.lookup_score(reader, cid)
                if record is None:
                    misses.append(cid)
                else:
                    runs.add(record["run_id"])

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    try:
        grown = rs.publish_scores(redis_client, scores[RUN_B], RUN_B, f"{RUN_B}-logreg",
                                  stale_between(kept, B_IDS), layout="compact",
                                  buckets=0, batch_rows=500, hash_partition_rows=500)
    finally:
        stop.set()
        thread.join(10)
    assert grown.buckets == rs.bucket_count(7000, limit, 0.6) > sized.buckets
    assert misses == [] and runs == {RUN_A, RUN_B}  # read all along, the old batch then the new one
    assert not list(redis_client.scan_iter(f"churn:c:{sized.buckets}:*"))  # the old bucket count's keys are gone
    assert rs.lookup_score(reader, "C00005000")["run_id"] == RUN_B
    # the same population again keeps the bucket count (no re-bucket every night)
    again = rs.publish_scores(redis_client, scores[RUN_B], RUN_B, f"{RUN_B}-logreg", None, layout="compact",
                              buckets=0, batch_rows=500, hash_partition_rows=500)
    assert again.buckets == grown.buckets


class LookupReader(threading.Thread):
    """Looks customers up during a publish: every existing customer must return a complete record."""

    def __init__(self, url: str, layout: str, truths: dict[str, dict[str, dict]]):
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(url)
        self.layout, self.truths = layout, truths
        self.stop = threading.Event()
        self.lookups = 0
        self.bad: list[object] = []
        self.marker_runs: list[str] = []

    def run(self) -> None:
        rng = random.Random(7)
        overlap = [c for c in A_IDS if c in set(B_IDS)]
        new_only = B_IDS[-2000:]
        while not self.stop.is_set():
            marker = rs.served_run(self.client)
            self.marker_runs.append(marker)
            cid = rng.choice(overlap)
            record = rs.lookup_score(self.client, cid, layout=self.layout, buckets=BUCKETS)
            self.lookups += 1
            if record is None or set(record) != FIELDS or None in record.values():
                self.bad.append(("incomplete", cid, record))
            elif record != self._as_record(record["run_id"], cid):
                self.bad.append(("not an old or new record", cid, record))
            if marker == RUN_B:
                # the marker moved: every record of run B must already be there
                cid = rng.choice(new_only)
                record = rs.lookup_score(self.client, cid, layout=self.layout, buckets=BUCKETS)
                if record is None or record["run_id"] != RUN_B:
                    self.bad.append(("marker moved before all records", cid, record))

    def _as_record(self, run, cid):
        row = self.truths.get(run, {}).get(cid)
        if row is None:
            return None
        return {"customer_id": cid, "churn_probability": round(float(row["churn_probability"]), 6),
                "risk_band": row["risk_band"], "risk_decile": row["risk_decile"], "model_version": row["model_version"],
                "run_id": run, "scored_at": row["scored_at"].strftime("%Y-%m-%dT%H:%M:%SZ")}


@pytest.mark.parametrize("layout", rs.LAYOUTS)
def test_during_publish_every_customer_has_a_complete_record_and_stale_ones_go_after_the_switch(
        redis_client, redis_url, scores, layout):
    truths = {RUN_A: expected(scores[RUN_A]), RUN_B: expected(scores[RUN_B])}
    publish(redis_client, scores[RUN_A], RUN_A, layout)
    size_a = redis_client.info("memory")["used_memory"]
    reader = LookupReader(redis_url, layout, truths)
    marker_at_points: dict[str, str | None] = {}
    stale_present: dict[str, bool] = {}

    def hook(point: str) -> None:
        marker_at_points[point] = rs.served_run(redis_client)
        stale_present[point] = lookup(redis_client, "C00000001", layout) is not None
        time.sleep(0.01)  # give the reader time inside every step

    reader.start()
    try:
        while reader.lookups < 20:
            time.sleep(0.005)
        publish(redis_client, scores[RUN_B], RUN_B, layout, stale_between(A_IDS, B_IDS), hook=hook)
        seen = reader.lookups
        while reader.lookups < seen + 20:
            time.sleep(0.005)
    finally:
        reader.stop.set()
        reader.join(10)
    assert not reader.bad, reader.bad[:5]
    assert reader.lookups > 100
    assert marker_at_points["records_written"] == RUN_A and marker_at_points["switched"] == RUN_B
    assert stale_present["switched"] and not stale_present["cleaned"]  # stale removed only after the switch
    assert RUN_A in reader.marker_runs and reader.marker_runs[-1] == RUN_B
    for cid in ("C00000001", "C00001000"):
        assert lookup(redis_client, cid, layout) is None
    for cid in random.Random(3).sample(B_IDS, 300):
        check_record(lookup(redis_client, cid, layout), cid, truths[RUN_B])
    # old versions never pile up: one record per customer, memory about the same as one batch
    if layout == "json":
        assert redis_client.dbsize() == 7000 + 1
    elif layout == "compact":
        assert sum(redis_client.hlen(f"churn:c:{BUCKETS}:{b}") for b in range(BUCKETS)) == 7000
        assert redis_client.dbsize() == BUCKETS + 1  # the buckets and the marker, nothing else
    else:
        assert sum(redis_client.hlen(f"churn:h:{b}") for b in range(BUCKETS)) == 7000
        assert [k.decode() for k in redis_client.hkeys("churn:runs")] == [RUN_B]
    assert redis_client.info("memory")["used_memory"] < size_a * 1.5
    assert set(rs.served_meta(redis_client)) >= {"run_id", "customers", "layout"}
    assert rs.served_meta(redis_client)["customers"] == "7000"
    assert "cleanup_from" not in rs.served_meta(redis_client)


def test_switching_layout_removes_the_old_layout_after_the_switch(redis_client, scores):
    publish(redis_client, scores[RUN_A], RUN_A, "json")
    publish(redis_client, scores[RUN_B], RUN_B, "hash", stale_between(A_IDS, B_IDS))
    assert not list(redis_client.scan_iter("churn:score:*"))
    assert lookup(redis_client, "C00005000", "hash")["run_id"] == RUN_B
    publish(redis_client, scores[RUN_B], RUN_B, "json")
    assert not list(redis_client.scan_iter("churn:h:*")) and not redis_client.exists("churn:runs")
    assert redis_client.dbsize() == 7000 + 1


def test_an_interrupted_layout_change_is_cleaned_by_the_retry(redis_client, scores):
    publish(redis_client, scores[RUN_A], RUN_A, "json")

    class Killed(Exception):
        pass

    def stop_after_switch(point: str) -> None:
        if point == "switched":
            raise Killed  # the process dies right after the marker moved

    with pytest.raises(Killed):
        publish(redis_client, scores[RUN_B], RUN_B, "hash", stale_between(A_IDS, B_IDS), hook=stop_after_switch)
    assert rs.served_meta(redis_client)["cleanup_layout"] == "json"
    assert list(redis_client.scan_iter("churn:score:*"))  # old layout still there
    publish(redis_client, scores[RUN_B], RUN_B, "hash", stale_between(A_IDS, B_IDS))
    assert not list(redis_client.scan_iter("churn:score:*"))
    assert "cleanup_layout" not in rs.served_meta(redis_client)
    assert lookup(redis_client, "C00000001", "hash") is None
    assert lookup(redis_client, "C00008000", "hash")["run_id"] == RUN_B


def test_a_file_of_another_run_is_refused_and_the_marker_stays(redis_client, scores):
    publish(redis_client, scores[RUN_A], RUN_A, "json")
    with pytest.raises(rs.RedisPublishError, match="not '2026-11-22'"):
        publish(redis_client, scores[RUN_B], "2026-11-22", "json")
    assert rs.served_run(redis_client) == RUN_A


def test_unreachable_redis_fails_with_a_clear_error(scores):
    client = redis.Redis(port=free_port(), socket_connect_timeout=1)
    with pytest.raises(rs.RedisPublishError, match="check that Redis is reachable"):
        publish(client, scores[RUN_A], RUN_A, "json")


@pytest.mark.parametrize("layout", rs.LAYOUTS)
def test_redis_dying_mid_publish_leaves_the_marker_and_a_retry_completes(tmp_path, scores, layout):
    port = free_port()
    start_redis(tmp_path / "redis", port)
    admin_url = embedded_redis_url(tmp_path / "redis", port, admin=True)  # SAVE and SHUTDOWN need the admin user
    client = redis.Redis.from_url(admin_url, socket_timeout=5, socket_connect_timeout=1)
    try:
        publish(client, scores[RUN_A], RUN_A, layout)
        client.save()  # the served batch is on disk, as in production persistence
        batches = 0

        def die(point: str) -> None:
            nonlocal batches
            batches += point == "batch"
            if batches == 3:
                admin = redis.Redis.from_url(admin_url)
                try:
                    admin.shutdown(nosave=True)  # the server crashes mid-publish
                except redis.ConnectionError:
                    pass  # SHUTDOWN closes the connection: that is its success
                while True:  # wait until the port is closed
                    try:
                        redis.Redis.from_url(admin_url, socket_connect_timeout=0.2).ping()
                        time.sleep(0.05)
                    except redis.ConnectionError:
                        break

        with pytest.raises(rs.RedisPublishError, match="reachable.*retry"):
            publish(client, scores[RUN_B], RUN_B, layout, stale_between(A_IDS, B_IDS), hook=die)
        start_redis(tmp_path / "redis", port)  # back from its last dump: run A served
        assert rs.served_run(client) == RUN_A
        assert lookup(client, "C00000001", layout)["run_id"] == RUN_A
        publish(client, scores[RUN_B], RUN_B, layout, stale_between(A_IDS, B_IDS))
        assert rs.served_run(client) == RUN_B
        assert lookup(client, "C00000001", layout) is None
        assert lookup(client, "C00008000", layout)["run_id"] == RUN_B
    finally:
        client.close()
        stop_redis(tmp_path / "redis")


def test_an_encoding_error_in_the_helper_thread_fails_before_the_switch(redis_client, scores, tmp_path):
    publish(redis_client, scores[RUN_A], RUN_A, "json")
    table = pq.read_table(scores[RUN_B])
    ids = table.column("customer_id").to_pylist()
    ids[4321] = 'C"quoted'  # cannot be a JSON record key: refused in the encoder, which runs in a thread
    bad = tmp_path / "bad.parquet"
    pq.write_table(table.set_column(0, "customer_id", pa_array(ids)), bad)
    with pytest.raises(rs.RedisPublishError, match="quotes"):
        publish(redis_client, bad, RUN_B, "json")
    assert rs.served_run(redis_client) == RUN_A
    assert lookup(redis_client, "C00000001", "json")["run_id"] == RUN_A
    assert not [t for t in threading.enumerate() if t.name == "redis-encode"]  # the helper thread is gone


def pa_array(values):
    import pyarrow as pa

    return pa.array(values, pa.string())


@pytest.mark.parametrize("buckets, partition_rows", [(1, 500), (64, 6000), (4096, 250)])
def test_grouped_hash_writes_equal_the_file_whatever_the_grouping(redis_client, scores, buckets, partition_rows):
    """One bucket (one HSET with every field), one range, or many ranges: every field arrives once."""
    truth = expected(scores[RUN_A])
    result = rs.publish_scores(redis_client, scores[RUN_A], RUN_A, f"{RUN_A}-logreg", layout="hash",
                               buckets=buckets, hash_partition_rows=partition_rows)
    assert result.rows == 6000
    fields = sum(redis_client.hlen(key) for key in redis_client.scan_iter("churn:h:*"))
    assert fields == 6000
    for cid in random.Random(2).sample(A_IDS, 200):
        check_record(rs.lookup_score(redis_client, cid, layout="hash", buckets=buckets), cid, truth)
    assert not list(scores[RUN_A].parent.glob(".*redis-spill*"))  # the spill folder is removed


def test_hash_file_of_another_run_is_refused_before_any_field_is_written(redis_client, scores):
    publish(redis_client, scores[RUN_A], RUN_A, "hash")
    before = {k: redis_client.dump(k) for k in redis_client.keys()}
    with pytest.raises(rs.RedisPublishError, match="not '2026-11-22'"):
        publish(redis_client, scores[RUN_B], "2026-11-22", "hash")
    # no record touched (churn:meta notes the attempt; churn:runs may hold the new run's info, harmlessly)
    control = (b"churn:meta", b"churn:runs")
    after = {k: redis_client.dump(k) for k in redis_client.keys() if k not in control}
    assert after == {k: v for k, v in before.items() if k not in control}
    assert redis_client.hexists("churn:runs", RUN_A)
    assert rs.served_run(redis_client) == RUN_A
    assert not list(scores[RUN_B].parent.glob(".*redis-spill*"))


@pytest.mark.parametrize("layout", rs.LAYOUTS)
def test_an_older_run_never_replaces_a_newer_served_batch(redis_client, scores, layout):
    # in order: A (2026-11-20) then B (2026-11-21) both publish
    publish(redis_client, scores[RUN_A], RUN_A, layout)
    publish(redis_client, scores[RUN_B], RUN_B, layout, stale_between(A_IDS, B_IDS))
    truth = expected(scores[RUN_B])
    before = {k: redis_client.dump(k) for k in redis_client.keys() if k != b"churn:meta"}
    # then A's publish again (a cleared task of yesterday): refused before a single record is written
    with pytest.raises(rs.OlderRunRefused, match="newer than 2026-11-20"):
        publish(redis_client, scores[RUN_A], RUN_A, layout)
    assert rs.served_run(redis_client) == RUN_B
    assert {k: redis_client.dump(k) for k in redis_client.keys() if k != b"churn:meta"} == before
    for cid in random.Random(3).sample(B_IDS, 100):
        check_record(lookup(redis_client, cid, layout), cid, truth)
    assert "writing" not in rs.served_meta(redis_client)


def test_the_switch_refuses_when_a_newer_run_was_served_meanwhile(redis_client, scores):
    publish(redis_client, scores[RUN_A], RUN_A, "json")

    def newer_run_switches_in(point):
        if point == "records_written":  # another publisher moved the marker on while A wrote its records
            redis_client.hset("churn:meta", "run_id", "2026-11-30")

    with pytest.raises(rs.OlderRunRefused):
        publish(redis_client, scores[RUN_B], RUN_B, "json", hook=newer_run_switches_in)
    assert rs.served_run(redis_client) == "2026-11-30"
