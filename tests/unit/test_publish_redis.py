"""The hash layout's bucket function without a server (publish on the real server:
tests/integration/test_publish_redis.py)."""

from __future__ import annotations

import random

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
