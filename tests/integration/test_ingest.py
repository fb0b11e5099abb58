"""Integration: point-in-time snapshots from the real Postgres source tables."""

from datetime import date, datetime, timedelta

import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from churn.data.generate import generate, load_source_tables
from churn.data.ingest import NUMERIC_FEATURES, extract_snapshot

AS_OF = date(2026, 11, 20)


@pytest.fixture
def loaded(pg_conn):
    load_source_tables(pg_conn, generate(6000, AS_OF, seed=11))
    return pg_conn


def test_snapshot_ignores_records_after_the_snapshot(loaded, tmp_path):
    snapshot = AS_OF - timedelta(days=30)
    before = pd.read_parquet(extract_snapshot(loaded, snapshot, tmp_path / "a.parquet", 30).path)
    victim = before["customer_id"].iloc[0]
    with loaded.cursor() as cur:
        # Facts recorded on/after the snapshot date: a complaint, usage of the snapshot's month, a churn.
        cur.execute("INSERT INTO src.support_contacts VALUES (%s, %s, 'complaint', false)",
                    (victim, datetime.combine(snapshot, datetime.min.time())))
        cur.execute("INSERT INTO src.support_contacts VALUES (%s, %s, 'complaint', false)",
                    (victim, datetime.combine(snapshot, datetime.min.time()) + timedelta(days=3)))
        cur.execute("DELETE FROM src.usage_monthly WHERE customer_id = %s AND month = %s",
                    (victim, snapshot.replace(day=1)))
        cur.execute("INSERT INTO src.usage_monthly VALUES (%s, %s, 99999, 999, 99)", (victim, snapshot.replace(day=1)))
    loaded.commit()
    after = pd.read_parquet(extract_snapshot(loaded, snapshot, tmp_path / "b.parquet", 30).path)
    pd.testing.assert_frame_equal(before, after)
    # ... while a snapshot taken later does see them
    later = pd.read_parquet(extract_snapshot(loaded, snapshot + timedelta(days=40), tmp_path / "c.parquet").path)
    row = later.set_index("customer_id").loc[victim]
    assert row["complaints_90d"] >= 2


def test_snapshot_population_and_label(loaded, tmp_path):
    snapshot = AS_OF - timedelta(days=30)
    frame = pd.read_parquet(extract_snapshot(loaded, snapshot, tmp_path / "t.parquet", 30).path)
    with loaded.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM src.customers c LEFT JOIN src.churn_events e USING (customer_id) "
            "WHERE c.signup_date <= %s AND (e.churn_date IS NULL OR e.churn_date > %s)", (snapshot, snapshot))
        expected = cur.fetchone()[0]
        cur.execute("SELECT count(*) FROM src.churn_events e JOIN src.customers c USING (customer_id) "
                    "WHERE c.signup_date <= %s AND e.churn_date > %s AND e.churn_date <= %s",
                    (snapshot, snapshot, snapshot + timedelta(days=30)))
        churned = cur.fetchone()[0]
    assert len(frame) == expected and frame["customer_id"].is_unique
    assert frame["churned"].sum() == churned > 0


def test_features_carry_real_but_imperfect_signal(loaded, tmp_path):
    frame = pd.read_parquet(extract_snapshot(loaded, AS_OF - timedelta(days=30), tmp_path / "s.parquet", 30).path)
    x = pd.get_dummies(frame[NUMERIC_FEATURES + ["contract"]].fillna(0), columns=["contract"]).astype(float)
    x = (x - x.mean()) / x.std().replace(0, 1)
    half = len(frame) // 2
    model = LogisticRegression(max_iter=1000).fit(x.iloc[:half], frame["churned"].iloc[:half])
    auc = roc_auc_score(frame["churned"].iloc[half:], model.predict_proba(x.iloc[half:])[:, 1])
    assert 0.65 < auc < 0.99


def test_unreadable_source_fails_with_the_fix_and_leaves_no_file(pg_conn, tmp_path):
    """No src.* tables: the COPY thread's error surfaces as IngestError; no snapshot, no temporary file."""
    from churn.data.ingest import IngestError

    out = tmp_path / "snap" / "score_raw.parquet"
    with pytest.raises(IngestError, match=r"src\.\* tables loaded \(make demo"):
        extract_snapshot(pg_conn, AS_OF, out)
    assert list(out.parent.iterdir()) == []
    with pg_conn.cursor() as cur:  # the connection was rolled back and is usable again
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    assert not [t for t in __import__("threading").enumerate() if t.name == "snapshot-copy"]


def test_an_empty_population_gives_an_empty_snapshot(loaded, tmp_path):
    snap = extract_snapshot(loaded, date(2000, 1, 1), tmp_path / "empty.parquet", 30)
    assert snap.rows == 0
    frame = pd.read_parquet(snap.path)
    assert len(frame) == 0 and "churned" in frame.columns and "customer_id" in frame.columns


def test_the_generators_oracle_reaches_no_stage_but_matches_the_training_snapshot(pg_conn, tmp_path):
    """The true probabilities stay with the benchmark: no source table or snapshot column carries them."""
    tables = generate(6000, AS_OF, seed=12)
    load_source_tables(pg_conn, tables)
    with pg_conn.cursor() as cur:
        cur.execute("SELECT table_schema, table_name, column_name FROM information_schema.columns "
                    "WHERE column_name ILIKE '%%probab%%' OR column_name ILIKE '%%oracle%%'")
        assert cur.fetchall() == []
    frame = pd.read_parquet(extract_snapshot(pg_conn, AS_OF - timedelta(days=30), tmp_path / "t.parquet", 30).path)
    oracle = tables.oracle.set_index("customer_id")
    assert set(frame["customer_id"]) == set(oracle.index)  # the oracle describes exactly the training population
    joined = frame.set_index("customer_id").join(oracle["true_probability"])
    assert (joined["churned"] == oracle.loc[joined.index, "churned"]).all()
    for column in frame.columns:
        if column not in ("customer_id", "churned") and pd.api.types.is_numeric_dtype(frame[column]):
            assert abs(joined[column].corr(joined["true_probability"])) < 0.9, column  # no column is the oracle
