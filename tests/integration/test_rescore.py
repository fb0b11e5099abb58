"""Event re-scoring between nights (issue 15): outbox, claims, the re-score stage, consistency with the batch.

Real Postgres and Redis; the nightly job's stages run in-process once (baseline model, no TPOT) to give
a champion and a served batch, then events are written to the source tables as an application would.
The scheduler-driven path (triggerer -> asset -> run) is tested in tests/scheduler/test_stack_local.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone

import pandas as pd
import psycopg2
import pytest
import redis

from churn.config import ChurnConfig
from churn.connections import Resources
from churn.data import outbox
from churn.publish import refresh
from churn.publish.redis_store import lookup_score
from churn.stages import publish
from churn.stages.rescore import rescore, start_rescore
from tests.support import REPO_ROOT
from tests.support.stage_refs import scored_ref
from tests.support.nightly import RUN_DATE, complain, run_nightly
from tests.support.servers import fresh_stores, pg_rows

REPO = str(REPO_ROOT)


@pytest.fixture(scope="module")
def platform(services, pg_admin_url, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rescore")
    pg_url, redis_url = fresh_stores(services, pg_admin_url, "rescore", 6, customers=12000, as_of=RUN_DATE, seed=44)
    cfg = ChurnConfig.from_env({"CHURN_STATE_DIR": str(tmp / "state"), "CHURN_TRAIN_TPOT": "false",
                                "CHURN_MIN_ROC_AUC": "0.5", "CHURN_PG_READER_ROLE": ""})
    res = Resources.from_urls(pg_url, redis_url)
    nightly = run_nightly(cfg, res, RUN_DATE)
    with res.pg_session() as conn:
        outbox.install_triggers(conn, outbox.DEMO_TABLES, "customer_id")
    return {"cfg": cfg, "res": res, "pg_url": pg_url, "redis_url": redis_url, "nightly": nightly, "tmp": tmp}


def _pg(platform, sql: str, params=()) -> list[tuple]:
    return pg_rows(platform["pg_url"], sql, params)


def _current(platform) -> dict[str, tuple]:
    rows = _pg(platform, "SELECT customer_id, churn_probability, risk_band, risk_decile, model_version, run_id, "
                         "source, event_at FROM churn.scores_current")
    return {r[0]: r[1:] for r in rows}


def _redis(platform, customer_id: str) -> dict:
    return lookup_score(redis.Redis.from_url(platform["redis_url"]), customer_id)


def _complain(platform, customer_ids: list[str], complaints: int = 4) -> None:
    complain(platform["pg_url"], customer_ids, complaints)


def _drain(platform, claimer: str, **params) -> dict:
    return rescore(platform["cfg"], platform["res"], start_rescore(claimer, params))


def _low_risk_customers(platform, n: int) -> list[str]:
    # mid-range scores: a complaint visibly moves them (at 1e-8 a logistic model hardly moves)
    # and no complaint in the last 90 days: the synthetic hazard acts past two complaints, so a customer already
    # over that threshold may hardly move under a tree model
    rows = _pg(platform, "SELECT customer_id FROM churn.scores_current WHERE source = 'batch' AND churn_probability "
                         "BETWEEN 0.02 AND 0.4 AND customer_id NOT IN (SELECT customer_id FROM src.support_contacts "
                         "WHERE kind = 'complaint' AND contact_ts > now() - interval '90 days') "
                         "ORDER BY customer_id LIMIT %s", (n,))
    return [r[0] for r in rows]


def test_a_complaint_rescores_that_customer_in_both_stores_and_only_them(platform):
    before = _current(platform)
    customer = _low_risk_customers(platform, 1)[0]
    _complain(platform, [customer])
    waiting = _pg(platform, "SELECT customer_id, kind FROM churn.rescore_outbox WHERE done_at IS NULL")
    assert waiting == [(customer, "support_contacts")]  # one event per statement and customer, in the same commit
    result = _drain(platform, "run-complaint")
    assert (result["events"], result["rescored"]) == (1, 1)
    after = _current(platform)
    champion = _pg(platform, "SELECT version FROM churn.model_champion")[0][0]
    proba, band, decile, version, run_id, source, event_at = after[customer]
    assert (version, source, run_id) == (champion, "event", "event-run-complaint")
    assert proba > before[customer][0] + 0.01  # four unresolved complaints raise the risk
    assert event_at is not None
    assert {k: v for k, v in after.items() if k != customer} == {k: v for k, v in before.items() if k != customer}
    record = _redis(platform, customer)
    assert record["source"] == "event" and record["model_version"] == champion and record["run_id"] == run_id
    assert abs(record["churn_probability"] - proba) < 1e-6 and record["risk_decile"] == decile
    assert record["risk_band"] == band
    history = _pg(platform, "SELECT run_id FROM churn.scores_history WHERE customer_id = %s ORDER BY run_id",
                  (customer,))
    assert [r[0] for r in history] == [RUN_DATE.isoformat(), "event-run-complaint"]  # nightly and event scores
    assert _pg(platform, "SELECT outcome FROM churn.rescore_outbox WHERE customer_id = %s", (customer,)) == [
        ("rescored",)]


def test_bad_events_are_quarantined_with_a_reason_and_do_not_stop_the_others(platform):
    good, renamed = _low_risk_customers(platform, 2)
    conn = psycopg2.connect(platform["pg_url"])
    with conn.cursor() as cur:
        cur.execute("UPDATE src.customers SET plan = 'platinum' WHERE customer_id = %s", (renamed,))  # not in suite
        cur.execute("INSERT INTO churn.rescore_outbox (customer_id, kind, source_table) VALUES "
                    "('C-NOBODY', 'support_contacts', 'src.support_contacts'), (NULL, 'customers', 'src.customers')")
    conn.commit()
    conn.close()
    _complain(platform, [good])
    result = _drain(platform, "run-bad-events")
    assert result["rescored"] == 1 and result["quarantined"] == 3
    outcomes = dict(_pg(platform, "SELECT coalesce(customer_id, '<none>'), outcome FROM churn.rescore_outbox "
                                  "WHERE claimed_by = 'run-bad-events'"))
    assert outcomes == {good: "rescored", renamed: "quarantined", "C-NOBODY": "quarantined", "<none>": "quarantined"}
    reasons = {r[0]: r[1] for r in _pg(platform, "SELECT coalesce(customer_id, '<none>'), reasons FROM "
                                                 "churn.quarantine WHERE run_key LIKE 'event-run-bad-events%'")}
    assert "expect_column_values_to_be_in_set(plan)" in reasons[renamed]
    assert reasons["C-NOBODY"] == ["unknown customer: not in the source's population as of now"]
    assert reasons["<none>"] == ["event without a customer id"]
    assert _current(platform)[renamed][5] == "batch" and _redis(platform, renamed).get("source") is None
    _pg(platform, "UPDATE src.customers SET plan = 'basic' WHERE customer_id = %s", (renamed,))
    _drain(platform, "run-bad-events-cleanup")


def test_claims_are_exactly_once_across_concurrent_consumers(platform):
    conn = psycopg2.connect(platform["pg_url"])
    outbox.enqueue(conn, [f"X{i:05d}" for i in range(600)], kind="claim-test")
    conn.close()
    claimed: dict[str, list[int]] = {"a": [], "b": []}

    def consume(name: str) -> None:
        own = psycopg2.connect(platform["pg_url"])
        while True:
            events = outbox.claim(own, f"claim-test-{name}", 37, lease_seconds=600)
            if not events:
                break
            claimed[name] += [e.event_id for e in events]
            outbox.complete(own, f"claim-test-{name}", {e.event_id: "quarantined" for e in events})
        own.close()

    threads = [threading.Thread(target=consume, args=(n,)) for n in claimed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    ids = [r[0] for r in _pg(platform, "SELECT event_id FROM churn.rescore_outbox WHERE kind = 'claim-test'")]
    assert sorted(claimed["a"] + claimed["b"]) == sorted(ids) and len(ids) == 600
    assert not set(claimed["a"]) & set(claimed["b"]) and claimed["a"] and claimed["b"]
    # a claim is its claimer's until it expires; a retry (same claimer) takes it back at once
    conn = psycopg2.connect(platform["pg_url"])
    outbox.enqueue(conn, ["Y1"], kind="claim-test-2")
    first = outbox.claim(conn, "owner", 10, lease_seconds=600)
    assert [e.customer_id for e in first] == ["Y1"] and outbox.claim(conn, "other", 10, lease_seconds=600) == []
    again = outbox.claim(conn, "owner", 10, lease_seconds=600)
    assert [(e.event_id, e.attempts) for e in again] == [(first[0].event_id, 2)]
    assert [e.event_id for e in outbox.claim(conn, "other", 10, lease_seconds=0)] == [first[0].event_id]  # expired
    assert outbox.complete(conn, "owner", {first[0].event_id: "rescored"}) == 0  # lost claim: changes nothing
    assert outbox.complete(conn, "other", {first[0].event_id: "quarantined"}) == 1
    conn.close()


_KILLED_CHILD = r"""
import os, signal, sys
from churn.config import ChurnConfig
from churn.connections import Resources
from churn.stages.rescore import rescore, start_rescore
cfg = ChurnConfig.from_env({"CHURN_STATE_DIR": sys.argv[3], "CHURN_PG_READER_ROLE": "", "CHURN_RESCORE_BATCH_ROWS": "20"})
def hook(point):
    if point == sys.argv[4]:
        os.kill(os.getpid(), signal.SIGKILL)
rescore(cfg, Resources.from_urls(sys.argv[1], sys.argv[2]), start_rescore("run-killed"), hook=hook)
"""


@pytest.mark.parametrize("kill_at", ["claimed", "written_postgres"])
def test_a_killed_rescore_loses_no_event_and_applies_none_twice(platform, kill_at):
    customers = _low_risk_customers(platform, 30)
    _pg(platform, "DELETE FROM churn.score_refresh_log WHERE run_id = 'event-run-killed'")
    _complain(platform, customers, complaints=2)
    env = {**os.environ, "PYTHONPATH": os.path.join(REPO, "include")}
    child = subprocess.run([sys.executable, "-c", _KILLED_CHILD, platform["pg_url"], platform["redis_url"],
                            str(platform["tmp"] / "state"), kill_at], env=env, capture_output=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    pending = _pg(platform, "SELECT count(*), count(*) FILTER (WHERE claimed_by = 'run-killed') FROM "
                            "churn.rescore_outbox WHERE done_at IS NULL")[0]
    assert pending[0] == 30 and pending[1] >= 20  # the first batch stays claimed, nothing was marked done
    result = _drain(platform, "run-killed")  # the task's retry: same run id, same claimer
    assert result["rescored"] == 30 and result["events"] == 30
    assert _pg(platform, "SELECT count(*) FROM churn.rescore_outbox WHERE done_at IS NULL") == [(0,)]
    logged = _pg(platform, "SELECT customer_id, count(*) FROM churn.score_refresh_log WHERE run_id = "
                           "'event-run-killed' GROUP BY 1")
    assert sorted(c for c, _ in logged) == sorted(customers) and {n for _, n in logged} == {1}
    current = _current(platform)
    for cid in customers:
        assert current[cid][5] == "event"
        assert abs(_redis(platform, cid)["churn_probability"] - current[cid][0]) < 1e-6


def test_an_older_refresh_never_replaces_a_newer_one(platform):
    cid = _low_risk_customers(platform, 1)[0]
    conn = psycopg2.connect(platform["pg_url"])
    now = datetime.now(timezone.utc)
    newer = pd.DataFrame({"customer_id": [cid], "churn_probability": [0.91], "risk_band": ["high"],
                          "risk_decile": [10], "event_at": [now.isoformat()]})
    older = newer.assign(churn_probability=[0.11], risk_band=["low"], risk_decile=[1])
    first = refresh.apply_postgres(conn, newer, model_version="m", run_id="event-newer", scored_at=now,
                                   data_at=now)
    late = refresh.apply_postgres(conn, older, model_version="m", run_id="event-older", scored_at=now,
                                  data_at=now - timedelta(seconds=30))
    assert (first.applied, late.applied, late.superseded) == ([cid], [], [cid])
    refresh.write_redis(redis.Redis.from_url(platform["redis_url"]), conn, [cid])
    conn.close()
    assert abs(_current(platform)[cid][0] - 0.91) < 1e-6
    assert abs(_redis(platform, cid)["churn_probability"] - 0.91) < 1e-6


def test_outbox_activity_shows_waiting_done_and_lag(platform):
    _complain(platform, _low_risk_customers(platform, 2)[1:])
    waiting = outbox.activity(psycopg2.connect(platform["pg_url"]))
    assert waiting["installed"] and waiting["waiting"] >= 1 and waiting["oldest_waiting_seconds"] >= 0
    _drain(platform, "run-activity")
    done = outbox.activity(psycopg2.connect(platform["pg_url"]))
    assert done["waiting"] == 0 and done["rescored_last_window"] >= 1
    assert 0 <= done["lag_p50_seconds"] <= done["lag_p95_seconds"] < 600
    json.dumps(done)  # what the Churn page and the alerts read


def test_manual_rescore_of_given_ids_takes_the_same_path_once(platform):
    customers = _low_risk_customers(platform, 2)
    result = _drain(platform, "run-manual", customer_ids=customers)
    assert (result["events"], result["rescored"]) == (2, 2)
    assert {_current(platform)[c][5] for c in customers} == {"event"}
    again = _drain(platform, "run-manual", customer_ids=customers)  # the task's retry: no second request
    assert again["events"] == 0
    assert _pg(platform, "SELECT count(*) FROM churn.rescore_outbox WHERE kind = 'manual:run-manual'") == [(2,)]


def test_a_lag_or_backlog_over_its_bound_raises_an_alert(platform):
    _complain(platform, _low_risk_customers(platform, 1))
    cfg = platform["cfg"].replace(rescore_max_lag_seconds=0.001)
    result = rescore(cfg, platform["res"], start_rescore("run-alert"))
    assert result["alerts"] and "CHURN_RESCORE_MAX_LAG_SECONDS" in result["alerts"][0]
    assert result["alert_delivery"]["logged"] is True  # churn.alerts.send_alert ran (no channel configured here)
    calm = rescore(platform["cfg"], platform["res"], start_rescore("run-no-alert"))
    assert calm["alerts"] == [] and calm["alert_delivery"] is None
    assert outbox.falling_behind({"waiting": 11, "lag_p95_seconds": None}, 10, 300) == [
        "11 events waiting, more than CHURN_RESCORE_MAX_WAITING=10"]
    assert outbox.falling_behind({"waiting": 10, "lag_p95_seconds": 299.0}, 10, 300) == []


def test_events_and_nightly_publishes_interleaved_leave_both_stores_agreeing(platform):
    """Re-scores run in a thread while batches (older data than the events) publish: no customer goes back."""
    customers = _low_risk_customers(platform, 40)
    errors: list[BaseException] = []

    def events() -> None:
        try:
            for round_ in range(4):
                _complain(platform, customers[round_ * 10:(round_ + 1) * 10])
                _drain(platform, f"run-interleaved-{round_}")
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(exc)

    worker = threading.Thread(target=events)
    worker.start()
    for day in (2, 3, 4):  # batches whose data (cutoff: their run date) is older than every event
        _republish(platform, (RUN_DATE + timedelta(days=day)).isoformat())
    worker.join(timeout=300)
    assert not errors and not worker.is_alive(), errors
    _drain(platform, "run-interleaved-last")  # events a batch switch refused mid-way are re-scored now
    current = _current(platform)
    client = redis.Redis.from_url(platform["redis_url"])
    for cid, row in current.items():
        record = lookup_score(client, cid)
        assert abs(record["churn_probability"] - row[0]) < 1e-6 and record["run_id"] == row[4], cid
        assert record.get("source", "batch") == row[5], cid
    assert all(current[c][5] == "event" for c in customers)  # the newest data of each is its event score


# Runs last: it publishes a batch newer than every refresh (later tests would see them superseded).
def _republish(platform, run_key: str) -> None:
    """Publish the served batch's scores again as run ``run_key`` (a later nightly run, without re-training)."""
    cfg, res = platform["cfg"], platform["res"]
    scored = platform["nightly"]["scored"]
    frame = pd.read_parquet(scored["path"])
    frame["run_id"] = run_key
    path = platform["tmp"] / f"scores-{run_key}.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pandas(frame, schema=pq.read_schema(scored["path"]), preserve_index=False), path)
    run = {"run_key": run_key, "run_dir": str(platform["tmp"]), "params": {}}
    ref = scored_ref(path, scored["model_version"])
    pg_published = publish.publish_postgres(cfg, res, run, ref)
    publish.publish_redis(cfg, res, run, ref, pg_published)


def test_the_batch_keeps_newer_refreshes_and_the_next_nightly_batch_supersedes_them(platform):
    customers = _low_risk_customers(platform, 3)
    _complain(platform, customers)
    _drain(platform, "run-before-nightly")
    refreshed = {cid: _current(platform)[cid] for cid in customers}
    # A nightly batch whose data is older than the refreshes (its cutoff: its run date) publishes now:
    _republish(platform, (RUN_DATE + timedelta(days=1)).isoformat())
    for cid in customers:
        assert _current(platform)[cid][5:6] == ("event",) and _current(platform)[cid][0] == refreshed[cid][0]
        assert _redis(platform, cid)["source"] == "event"  # the nightly Redis publish left it alone
    # The next nightly batch has newer data than the refreshes (its cutoff is after them): it supersedes them.
    tomorrow = (datetime.now(timezone.utc) + timedelta(days=1)).date().isoformat()
    _republish(platform, tomorrow)
    current = _current(platform)
    for cid in customers:
        assert current[cid][4:6] == (tomorrow, "batch")
        record = _redis(platform, cid)
        assert record["run_id"] == tomorrow and "source" not in record
        assert abs(record["churn_probability"] - current[cid][0]) < 1e-6
    assert _pg(platform, "SELECT count(*) FROM churn.score_refreshes") == [(0,)]  # superseded rows are gone
    # and an event re-scored now is newer than that batch again only if its data is: here it is not
    _complain(platform, customers[:1])
    result = _drain(platform, "run-after-nightly")
    assert result["superseded"] == 1 and _current(platform)[customers[0]][5] == "batch"
    logged = _pg(platform, "SELECT count(*) FROM churn.scores_history WHERE customer_id = %s AND run_id LIKE "
                           "'event-%%'", (customers[0],))
    assert logged[0][0] >= 1  # the earlier event score stays in the history
