"""The hash layout's bucket function without a server (publish on the real server:
tests/integration/test_publish_redis.py)."""

from __future__ import annotations

import random

import pytest

from churn.publish import redis_store as rs

BUCKETS = 64  # as in tests/integration/test_publish_redis.py


def test_vectorized_crc32_equals_zlib_for_any_utf8_id():
    import zlib

    import numpy as np
    import pyarrow as pa

    rng = random.Random(4)
    ids = ["", "a", "C00000042", "Zürich-東京", "x" * 300, "7590-VHVEG"] + [
        "".join(rng.choice("abcZ09-_é東\u00ff") for _ in range(rng.randint(0, 40))) for _ in range(3000)]
    array = pa.array(ids)
    expected_crc = np.array([zlib.crc32(i.encode()) for i in ids], dtype=np.uint32)
    assert (rs.crc32_array(array) == expected_crc).all()
    assert (rs.crc32_array(array.slice(5, 700)) == expected_crc[5:705]).all()  # offsets of a sliced array
    assert (rs.crc32_array(pa.chunked_array([array[:10], array[10:]])) == expected_crc).all()
    assert all(int(b) == rs.bucket_of(i, BUCKETS) for b, i in zip(rs.crc32_array(array) % BUCKETS, ids))


def test_compact_values_decode_to_what_was_encoded():
    """Every decile, band and slot, and the probability ends, survive encode -> Redis integer -> decode."""
    import pyarrow as pa

    from churn.publish.redis_encoding import encode_compact_ints
    from churn.publish.redis_keys import BAND_NAMES

    rows = [(p, d, b) for p in (0.0, 1e-6, 0.4999995, 0.812346, 1.0) for d in range(1, 11) for b in BAND_NAMES]
    batch = pa.RecordBatch.from_pydict({"churn_probability": [r[0] for r in rows], "risk_decile": [r[1] for r in rows],
                                        "risk_band": [r[2] for r in rows]})
    for slot in (0, 7, 9):
        values = [int(v) for v in encode_compact_ints(batch, slot).to_pylist()]
        assert max(values) < 2**31  # Redis keeps it as a 5-byte integer inside a bucket
        for (p, d, b), value in zip(rows, values):
            proba, decile, band, got_slot = rs.decode_compact(value)
            assert (decile, BAND_NAMES[band], got_slot) == (d, b, slot)
            assert abs(proba - p) <= 5e-7 + 1e-12  # rounded to millionths


def test_a_row_outside_the_compact_range_is_refused():
    import pyarrow as pa
    import pytest

    from churn.publish.redis_encoding import encode_compact_ints

    for proba, decile, band in ((1.5, 1, "low"), (0.5, 11, "low"), (0.5, 3, "extreme")):
        batch = pa.RecordBatch.from_pydict({"churn_probability": [proba], "risk_decile": [decile],
                                            "risk_band": [band]})
        with pytest.raises(rs.RedisPublishError, match="CHURN_REDIS_LAYOUT=json"):
            encode_compact_ints(batch, 0)


def test_bucket_counts_keep_the_mean_bucket_under_the_fill_and_are_powers_of_two():
    for customers in (0, 1, 77, 78, 1_000_000, 10_000_000, 100_000_000):
        buckets = rs.bucket_count(customers, 128, 0.6)
        assert buckets & (buckets - 1) == 0
        assert customers / buckets <= 128 * 0.6
        assert buckets == 1 or customers / (buckets // 2) > 128 * 0.6  # the smallest such power of two
    assert rs.bucket_count(10_000_000, 128, 0.6) == 131_072


def test_each_publish_takes_the_next_slot_and_a_retry_keeps_its_own():
    from churn.publish.redis_store import _slots_for

    def slot_for(meta, run):
        return _slots_for(meta, run, [("m", "", "")])[0]

    assert slot_for({}, "2026-11-20") == 0
    served = {"slot": "3", "slot_last": "3", "slot_3": "2026-11-20|m|t|low"}
    assert slot_for(served, "2026-11-21") == 4
    assert slot_for(served, "2026-11-20") == 3  # the served run published again: the same values
    writing = {**served, "slot_writing": "4", "slot_last": "4", "slot_4": "2026-11-21|m|t|low"}
    assert slot_for(writing, "2026-11-21") == 4  # a retry of the attempt in progress
    assert slot_for(writing, "2026-11-22") == 5  # another run: a fresh slot, never the one being written
    assert slot_for({"slot": "9", "slot_last": "9", "slot_9": "x|m|t|low"}, "y") == 0  # wraps after 9


def test_an_experiment_run_takes_a_slot_per_arm_never_the_served_ones_and_keeps_them_on_retry():
    from churn.publish.redis_keys import RedisPublishError
    from churn.publish.redis_store import _slots_for

    combos = [("champ", "", ""), ("champ", "exp", "control"), ("boost", "exp", "challenger")]
    served = {"run_id": "2026-11-20", "slot": "8", "slots": "8,9,0", "slot_last": "0",
              "slot_8": "2026-11-20|champ|t|low", "slot_9": "2026-11-20|champ|t|low|exp|control",
              "slot_0": "2026-11-20|boost|t|low|exp|challenger"}
    assert _slots_for(served, "2026-11-20", combos) == [8, 9, 0]  # the served run again: its own slots
    assert _slots_for(served, "2026-11-21", combos) == [1, 2, 3]
    writing = {**served, "slots_writing": "1,2,3", "slot_writing": "1", "slot_last": "3",
               "slot_1": "2026-11-21|champ|t|low", "slot_2": "2026-11-21|champ|t|low|exp|control",
               "slot_3": "2026-11-21|boost|t|low|exp|challenger"}
    assert _slots_for(writing, "2026-11-21", combos) == [1, 2, 3]  # a retry keeps its slots
    assert _slots_for(writing, "2026-11-21", combos[:2]) == [1, 2]
    wrapped = {**served, "slot_last": "7"}
    assert _slots_for(wrapped, "2026-11-21", combos) == [1, 2, 3]  # skips the served 8, 9, 0
    # the served run published again with another combination: the changed one never takes a served digit
    changed = [("champ", "", ""), ("champ", "exp", "control"), ("boost2", "exp", "challenger")]
    assert _slots_for(served, "2026-11-20", changed) == [8, 9, 1]
    # a re-scored re-publish of the served run (another scoring time): new digits, the served ones untouched
    assert _slots_for(served, "2026-11-20", combos, scored_at="t2") == [1, 2, 3]
    assert _slots_for(served, "2026-11-20", combos, scored_at="t") == [8, 9, 0]
    with pytest.raises(RedisPublishError, match="free slots"):
        _slots_for(served, "2026-11-21", [("v", "e", f"a{i}") for i in range(8)])


def test_cluster_groups_spread_buckets_in_contiguous_ranges_within_the_slot_count():
    from churn.publish.redis_keys import cluster_groups, group_of

    assert [cluster_groups(b) for b in (1, 8, 128, 16_384, 131_072, 2 ** 21, 2 ** 24)] == [
        1, 8, 16, 128, 1024, 16_384, 16_384]
    for buckets in (128, 1000, 131_072):
        groups = cluster_groups(buckets)
        owners = [group_of(b, buckets, groups) for b in range(buckets)]
        assert owners == sorted(owners) and set(owners) == set(range(groups))  # contiguous, every group used


def test_cluster_keys_carry_the_group_hash_tag_and_the_lease_shares_the_marker_slot():
    from churn.publish.redis_keys import compact_key, fence_key, group_of, lock_key

    cid = "C00000042"
    bucket = rs.bucket_of(cid, 131_072)
    assert rs.compact_key(cid, "churn", 131_072) == f"churn:c:131072:{bucket}"
    assert compact_key(cid, "churn", 131_072, 1024) == f"churn:c:131072:{{{group_of(bucket, 131_072, 1024)}}}:{bucket}"
    assert fence_key("churn", 17) == "churn:fence:{17}"
    assert lock_key("churn") == "churn:publish_lock"
    assert lock_key("churn", cluster=True) == "{churn:meta}:publish_lock"  # hashes like "churn:meta"
    meta = {"layout": "compact", "buckets": "131072", "groups": "1024"}
    assert rs.record_key(cid, meta) == ("HGET", compact_key(cid, "churn", 131_072, 1024))


def test_cluster_batches_never_span_two_groups_and_name_their_group():
    import numpy as np
    import pyarrow as pa

    from churn.publish.redis_encoding import _grouped_hset_chunks

    rng = np.random.default_rng(3)
    buckets, groups, rows = 256, 16, 20_000
    bucket = rng.integers(0, buckets, rows).astype(np.int32)
    table = pa.table({"bucket": bucket, "customer_id": [f"C{i}" for i in range(rows)],
                      "value": [str(i) for i in range(rows)]})
    seen_rows = 0
    for encoded in _grouped_hset_chunks(table, "churn:c:256:", 3000, buckets, groups):
        body = b"".join(bytes(part) for part in encoded.data)
        tags = {int(t.split(b"}")[0]) for t in body.split(b"churn:c:256:{")[1:]}
        assert tags == {encoded.group}, tags  # one group per transaction: one slot on a cluster
        seen_rows += encoded.rows
    assert seen_rows == rows


def test_a_cluster_url_with_another_database_is_refused_with_the_fix():
    import pytest

    from churn.connections import redis_from_url

    with pytest.raises(ValueError, match="only database 0: end the cluster URL with /0, not /3"):
        redis_from_url("redis+cluster://churn:pw@127.0.0.1:7000,127.0.0.1:7001/3")
