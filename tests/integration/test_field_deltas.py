"""Delta files between nights (issue 26 items 16-17): consumed only when complete, applied in data order,
read in chunks and inserted in batches. Real Postgres; no scheduler."""

from __future__ import annotations

import os
import time

import pandas as pd

from churn.data.outbox import delta_files, ingest_delta_files

COLUMNS = ["customer_id", "tenure", "plan"]


def _write(path, rows: list[tuple]) -> None:
    pd.DataFrame(rows, columns=COLUMNS).to_csv(path, index=False)


def _events(pg_conn) -> list[tuple]:
    with pg_conn.cursor() as cur:
        cur.execute("SELECT o.event_id, o.customer_id, o.source_table, d.record->>'tenure' FROM churn.rescore_outbox o "
                    "JOIN churn.rescore_delta_rows d USING (event_id) ORDER BY o.event_id")
        rows = cur.fetchall()
    pg_conn.rollback()
    return rows


def test_files_being_written_or_not_announced_are_left_alone(tmp_path, pg_conn):
    (tmp_path / ".delta_1.csv").write_text("customer_id,tenure,plan\nA,1,x\n")  # written, not yet renamed in
    (tmp_path / "delta_2.csv.partial").write_text("customer_id,tenure,plan\nA,1,x\n")
    _write(tmp_path / "delta_3.csv", [("A", 3, "x")])
    assert [p.name for p in delta_files(tmp_path)] == ["delta_3.csv"]
    assert delta_files(tmp_path, require_ready=True) == []  # the writer has not said it is complete
    out = ingest_delta_files(pg_conn, tmp_path, "customer_id", COLUMNS, require_ready=True)
    assert out["events"] == 0 and (tmp_path / "delta_3.csv").exists()
    (tmp_path / "delta_3.csv.ready").touch()
    out = ingest_delta_files(pg_conn, tmp_path, "customer_id", COLUMNS, require_ready=True)
    assert out == {"files": 1, "events": 1, "rejected": []}
    assert (tmp_path / "done" / "delta_3.csv").exists() and not (tmp_path / "delta_3.csv.ready").exists()


def test_a_late_file_of_older_data_never_overtakes_a_newer_one(tmp_path, pg_conn):
    newer, older = tmp_path / "delta_2026-11-25T1000.csv", tmp_path / "delta_2026-11-25T0900.csv"
    _write(newer, [("A", 10, "x")])
    time.sleep(0.01)
    _write(older, [("A", 9, "x")])  # arrives last (newer mtime) but holds older data
    os.utime(newer, (time.time() - 60, time.time() - 60))
    ingest_delta_files(pg_conn, tmp_path, "customer_id", COLUMNS)
    events = _events(pg_conn)
    assert [e[3] for e in events] == ["9", "10"]  # event ids follow the data order: the newest row has the last id


def test_a_large_delta_file_is_read_in_chunks_with_rows_and_ids_kept_together(tmp_path, pg_conn):
    rows = [(f"C{i:05d}", i, "x") for i in range(12_345)] + [("C00007", 999_999, "y")]  # C00007 changes twice
    _write(tmp_path / "delta_big.csv", rows)
    out = ingest_delta_files(pg_conn, tmp_path, "customer_id", COLUMNS, chunk_rows=1_000)
    assert out["events"] == len(rows)
    events = _events(pg_conn)
    assert all(cid == f"C{int(tenure):05d}" for _, cid, _, tenure in events[:-1])  # every record with its id
    assert events[-1][1:] == ("C00007", events[-1][2], "999999")  # the later row of C00007 has the higher id
