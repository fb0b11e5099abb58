"""Event re-scoring for a file source: delta files dropped in a folder (issue 15, file sources).

The Telco file is the nightly source (configuration only, as in README); a delta file carries the
changed customers' rows with the same columns. Real Postgres and Redis.
"""

from __future__ import annotations

import csv

import psycopg2
import pytest
import redis

from churn.config import ChurnConfig
from churn.connections import Resources
from churn.data import outbox
from churn.publish.redis_store import lookup_score
from churn.stages.rescore import rescore, start_rescore
from tests.support.datasets import TELCO, TELCO_ENV, require_dataset
from tests.support.nightly import RUN_DATE, run_nightly
from tests.support.servers import fresh_stores


@pytest.fixture(scope="module")
def telco_platform(services, pg_admin_url, tmp_path_factory):
    require_dataset(TELCO)
    tmp = tmp_path_factory.mktemp("rescore_files")
    pg_url, redis_url = fresh_stores(services, pg_admin_url, "rescore_files", 7)
    cfg = ChurnConfig.from_env({**TELCO_ENV, "CHURN_STATE_DIR": str(tmp / "state"), "CHURN_TRAIN_TPOT": "false",
                                "CHURN_PG_READER_ROLE": "", "CHURN_RESCORE_DELTA_DIR": str(tmp / "deltas")})
    res = Resources.from_urls(pg_url, redis_url)
    run_nightly(cfg, res, RUN_DATE)
    with TELCO.open(newline="", encoding="utf-8") as handle:
        rows = {row["customerID"]: row for row in csv.DictReader(handle)}
    (tmp / "deltas").mkdir()
    return {"cfg": cfg, "res": res, "pg_url": pg_url, "redis_url": redis_url, "rows": rows, "tmp": tmp}


def _current(platform, customer: str) -> tuple:
    conn = psycopg2.connect(platform["pg_url"])
    with conn.cursor() as cur:
        cur.execute("SELECT churn_probability, source FROM churn.scores_current WHERE customer_id = %s", (customer,))
        row = cur.fetchone()
    conn.close()
    return row


def _write_delta(path, rows: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_a_delta_file_rescores_its_customers_and_bad_rows_and_files_are_quarantined(telco_platform):
    rows, deltas = telco_platform["rows"], telco_platform["tmp"] / "deltas"
    loyal = [cid for cid, r in rows.items() if r["Contract"] == "Two year" and r["Churn"] == "No"][:2]
    before = {cid: _current(telco_platform, cid)[0] for cid in loyal}
    # A downgrade to month-to-month with electronic checks: the pattern Telco churners show.
    changed = [{**rows[cid], "Contract": "Month-to-month", "PaymentMethod": "Electronic check"} for cid in loyal]
    bad = {**rows[list(rows)[10]], "tenure": "about a year"}  # not a number: quarantined, never scored
    _write_delta(deltas / "crm_delta_0001.csv", [*changed, bad])
    (deltas / "crm_delta_0002.csv").write_text("id;whatever\n1;2\n")  # not the file's columns: rejected
    result = rescore(telco_platform["cfg"], telco_platform["res"], start_rescore("run-delta"))
    assert result["delta_files"] == {"files": 1, "events": 3, "rejected": ["crm_delta_0002.csv"]}
    assert result["rescored"] == 2 and result["quarantined"] == 1
    client = redis.Redis.from_url(telco_platform["redis_url"])
    for cid in loyal:
        proba, source = _current(telco_platform, cid)
        assert source == "event" and proba > before[cid]
        assert lookup_score(client, cid)["source"] == "event"
    assert _current(telco_platform, bad["customerID"])[1] == "batch"
    assert (deltas / "done" / "crm_delta_0001.csv").exists() and not (deltas / "crm_delta_0001.csv").exists()
    reason = (deltas / "rejected" / "crm_delta_0002.csv.reason.txt").read_text()
    assert "lacks column(s)" in reason and "customerID" in reason
    conn = psycopg2.connect(telco_platform["pg_url"])
    with conn.cursor() as cur:
        cur.execute("SELECT customer_id, reasons FROM churn.quarantine WHERE run_key LIKE 'event-run-delta%%'")
        quarantined = dict(cur.fetchall())
        cur.execute("SELECT reasons FROM churn.quarantine WHERE dataset = 'event_outbox' AND record->>'file' = "
                    "'crm_delta_0002.csv'")
        file_reasons = cur.fetchone()[0]
    conn.close()
    assert "unparseable" in " ".join(quarantined[bad["customerID"]]) and "lacks column(s)" in file_reasons[0]


def test_a_delta_file_is_recorded_once_even_if_it_comes_back(telco_platform):
    rows, deltas = telco_platform["rows"], telco_platform["tmp"] / "deltas"
    cid = list(rows)[20]
    _write_delta(deltas / "again.csv", [rows[cid]])
    conn = psycopg2.connect(telco_platform["pg_url"])
    spec_columns = ["customerID"]
    first = outbox.ingest_delta_files(conn, deltas, "customerID", spec_columns)
    (deltas / "done" / "again.csv").replace(deltas / "again.csv")  # a crash before the move, say
    second = outbox.ingest_delta_files(conn, deltas, "customerID", spec_columns)
    conn.close()
    assert (first["events"], second["events"]) == (1, 0)
    assert outbox.delta_files(deltas) == []
