"""The streamed profile: exact figures equal the whole-frame ones, sampled ones say their sample size, stored in
Postgres (chunks and samples: tests/unit/test_data_stream.py; ``snapshot`` is in tests/conftest.py)."""

from __future__ import annotations

import pytest

from churn.data.profile import profile_frame, profile_snapshot


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
