"""Bounded-memory snapshot access: chunks with global row numbers, id-hash samples, cross-chunk duplicates,
and the streamed profile (exact figures equal the whole-frame ones; sampled ones say their sample size)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from churn.data import stream
from churn.data.profile import profile_frame, profile_snapshot


@pytest.fixture
def snapshot(tmp_path):
    rng = np.random.default_rng(0)
    n = 5000
    frame = pd.DataFrame({
        "customer_id": [f"C{i:07d}" for i in range(n)],
        "tenure": rng.integers(0, 100, n).astype(float),
        "plan": rng.choice(["basic", "plus", "pro"], n),
        "churned": rng.integers(0, 2, n).astype("int8"),
    })
    frame.loc[[3, 4000], "tenure"] = np.nan
    path = tmp_path / "snap.parquet"
    frame.to_parquet(path, index=False)
    return path, frame


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


def test_streamed_profile_has_the_exact_figures_of_the_whole_frame(snapshot, pg_conn):
    path, frame = snapshot
    whole = profile_frame(frame)
    streamed = profile_snapshot(pg_conn, path, "2026-11-20", "train", id_column="customer_id", chunk_rows=700,
                                sample_rows=2000)
    for column in frame.columns:
        for key in ("count", "nulls", "min", "max"):
            assert streamed[column].get(key) == whole[column].get(key), (column, key)
    assert streamed["tenure"]["mean"] == pytest.approx(whole["tenure"]["mean"])
    assert streamed["tenure"]["std"] == pytest.approx(whole["tenure"]["std"])
    assert streamed["tenure"]["nulls"] == 2 and streamed["tenure"]["count"] == 5000
    sample_rows = streamed["tenure"]["sample_rows"]
    assert 1700 < sample_rows < 2300  # quantiles, distinct and top values come from this many rows
    assert streamed["tenure"]["quantiles"]["p50"] == pytest.approx(whole["tenure"]["quantiles"]["p50"], abs=5)
    assert set(streamed["plan"]["top"]) == {"basic", "plus", "pro"}
    assert sum(streamed["plan"]["top"].values()) == sample_rows
    with pg_conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM churn.column_profiles WHERE run_key = '2026-11-20'")
        assert cur.fetchone()[0] == 4
