"""Bounded-memory snapshot access: chunks with global row numbers, id-hash samples, cross-chunk duplicates (the
streamed profile stored in Postgres: tests/integration/test_data_stream.py; ``snapshot`` is in tests/conftest.py)."""

from __future__ import annotations

import pandas as pd

from churn.data import stream


def test_chunks_carry_global_row_numbers(snapshot):
    path, frame = snapshot
    chunks = list(stream.iter_frames(path, chunk_rows=1200))
    assert [len(c) for c in chunks] == [1200, 1200, 1200, 1200, 200]
    assert chunks[2].index[0] == 2400 and chunks[-1].index[-1] == 4999
    pd.testing.assert_frame_equal(pd.concat(chunks), frame)


def test_id_hash_samples_are_deterministic_and_sized(snapshot):
    path, frame = snapshot
    first, total = stream.sample_frame(path, 1000, "customer_id", seed=7, chunk_rows=700)
    again, _ = stream.sample_frame(path, 1000, "customer_id", seed=7, chunk_rows=5000)
    other, _ = stream.sample_frame(path, 1000, "customer_id", seed=8)
    assert total == 5000 and 850 < len(first) < 1150
    assert first["customer_id"].tolist() == again["customer_id"].tolist()  # chunk size does not matter
    assert set(first["customer_id"]) != set(other["customer_id"])  # the seed does
    everything, _ = stream.sample_frame(path, 10_000, "customer_id")
    assert len(everything) == 5000  # a snapshot smaller than the sample is read whole


def test_write_sample_replaces_the_file_with_the_kept_rows(snapshot):
    path, frame = snapshot
    kept = stream.write_sample(path, 0.25, "customer_id", seed=1, chunk_rows=999)
    sampled = pd.read_parquet(path)
    assert len(sampled) == kept and 1000 < kept < 1500
    assert set(sampled["customer_id"]) <= set(frame["customer_id"])


def test_duplicates_are_found_across_chunks(tmp_path):
    ids = [f"C{i}" for i in range(3000)]
    ids[2900] = ids[10]  # in different chunks of 1000
    ids[500] = ids[501]  # in the same chunk
    path = tmp_path / "d.parquet"
    pd.DataFrame({"customer_id": ids, "x": range(3000)}).to_parquet(path, index=False)
    assert stream.duplicated_ids(path, "customer_id", chunk_rows=1000) == {"C10", "C501"}
    pd.DataFrame({"customer_id": [f"C{i}" for i in range(3000)]}).to_parquet(path, index=False)
    assert stream.duplicated_ids(path, "customer_id", chunk_rows=1000) == set()
