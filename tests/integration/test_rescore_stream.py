"""Events from a Redis Stream (issue 24 item 6): XADD -> consumer group -> both stores -> XACK -> trim.

Real Postgres and Valkey; the nightly stages run in-process once for a champion and a served batch. The
producers are plain ``XADD`` calls; the re-score stage reads with the ``churn-rescore`` group. Killing the
consumer mid-batch loses nothing and applies nothing twice; malformed entries go to the dead letters with
the reason; what was acknowledged is trimmed. The trigger (``StreamTrigger``) fires on new entries only.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import psycopg2
import pytest
import redis

from churn.config import ChurnConfig
from churn.connections import Resources
from churn.data import event_stream
from churn.data.outbox_trigger import StreamTrigger
from churn.publish.redis_store import lookup_score
from churn.stages.rescore import rescore, start_rescore
from tests.support import REPO_ROOT
from tests.support.nightly import RUN_DATE, run_nightly
from tests.support.servers import fresh_stores, pg_rows

STREAM = "churn:events"
ENV = {"CHURN_TRAIN_TPOT": "false", "CHURN_MIN_ROC_AUC": "0.5", "CHURN_PG_READER_ROLE": "",
       "CHURN_RESCORE_STREAM": STREAM}


@pytest.fixture(scope="module")
def platform(services, pg_admin_url, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rescore-stream")
    pg_url, redis_url = fresh_stores(services, pg_admin_url, "rescore_stream", 8, customers=6000, as_of=RUN_DATE,
                                     seed=45)
    cfg = ChurnConfig.from_env({"CHURN_STATE_DIR": str(tmp / "state"), **ENV})
    res = Resources.from_urls(pg_url, redis_url)
    run_nightly(cfg, res, RUN_DATE)
    return {"cfg": cfg, "res": res, "pg_url": pg_url, "redis_url": redis_url, "tmp": tmp,
            "admin": redis.Redis.from_url(services.redis_admin_url(8), decode_responses=True)}


def _pg(platform, sql: str, params=()) -> list[tuple]:
    return pg_rows(platform["pg_url"], sql, params)


def _customers(platform, n: int, offset: int) -> list[str]:
    rows = _pg(platform, "SELECT customer_id FROM churn.scores_current WHERE source = 'batch' ORDER BY customer_id "
                         "OFFSET %s LIMIT %s", (offset, n))
    return [r[0] for r in rows]


def _produce(platform, customers: list[str], **extra) -> list[str]:
    """What a producer does: one complaint row in the source, one XADD per event."""
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    if customers:
        conn = psycopg2.connect(platform["pg_url"])
        with conn.cursor() as cur:
            for cid in customers:
                cur.execute("INSERT INTO src.support_contacts (customer_id, contact_ts, kind, resolved) VALUES "
                            "(%s, %s, 'complaint', false)", (cid, now - timedelta(minutes=1)))
        conn.commit()
        conn.close()
    client = redis.Redis.from_url(platform["redis_url"])  # the platform's user, as a producer would log in
    ids = [client.xadd(STREAM, {"customer_id": cid, "kind": "complaint", **extra}).decode() for cid in customers]
    client.close()
    return ids


def _drain(platform, claimer: str, **cfg) -> dict:
    config = platform["cfg"] if not cfg else ChurnConfig.from_env(
        {"CHURN_STATE_DIR": str(platform["tmp"] / "state"), **ENV, **cfg})
    return rescore(config, platform["res"], start_rescore(claimer))


def _refreshed(platform, customers: list[str]) -> None:
    current = dict(_pg(platform, "SELECT customer_id, source FROM churn.scores_current WHERE customer_id = ANY(%s)",
                       (customers,)))
    assert current == {c: "event" for c in customers}
    client = redis.Redis.from_url(platform["redis_url"])
    for cid in customers:
        assert lookup_score(client, cid)["source"] == "event", cid


def test_streamed_events_are_rescored_in_both_stores_acknowledged_and_trimmed(platform):
    admin = platform["admin"]
    customers = _customers(platform, 25, 0)
    _produce(platform, customers)
    assert admin.xlen(STREAM) >= 25
    result = _drain(platform, "run-stream")
    assert result["stream"] == {"read": 25, "acknowledged": 25, "dead_lettered": 0}
    assert result["rescored"] == 25
    _refreshed(platform, customers)
    assert admin.xpending(STREAM, event_stream.GROUP)["pending"] == 0
    assert admin.xlen(STREAM) == 0  # every acknowledged entry trimmed
    assert _drain(platform, "run-stream-again")["stream"]["read"] == 0


def test_malformed_events_go_to_the_dead_letters_with_the_reason_and_the_rest_goes_on(platform):
    admin = platform["admin"]
    good = _customers(platform, 3, 100)
    _produce(platform, good)
    admin.xadd(STREAM, {"kind": "complaint"})  # no customer
    admin.xadd(STREAM, {"customer_id": "C0001\x07", "kind": "complaint"})  # a control character
    admin.xadd(STREAM, {"customer_id": good[0], "at": "yesterday"})  # not an ISO time
    admin.xadd(STREAM, {"customer_id": "C99999999"})  # well-formed, unknown: quarantined like an outbox event
    result = _drain(platform, "run-dead")
    assert result["stream"] == {"read": 7, "acknowledged": 4, "dead_lettered": 3}
    _refreshed(platform, good)
    dead = admin.xrange(event_stream.dead_stream(STREAM))[-3:]
    reasons = [fields["reason"] for _, fields in dead]
    assert "no customer_id" in reasons[0] and "control characters" in reasons[1] and "ISO 8601" in reasons[2]
    assert dead[1][1]["field:customer_id"] == "C0001\x07" and dead[0][1]["entry_id"]
    assert _pg(platform, "SELECT customer_id FROM churn.quarantine WHERE dataset = 'event_outbox' AND run_key LIKE "
                         "'event-run-dead%%'") == [("C99999999",)]
    assert admin.xpending(STREAM, event_stream.GROUP)["pending"] == 0 and admin.xlen(STREAM) == 0


_KILLED_CHILD = r"""
import os, signal, sys
from churn.config import ChurnConfig
from churn.connections import Resources
from churn.stages.rescore import rescore, start_rescore
cfg = ChurnConfig.from_env({"CHURN_STATE_DIR": sys.argv[3], "CHURN_PG_READER_ROLE": "", "CHURN_RESCORE_BATCH_ROWS": "20",
                            "CHURN_RESCORE_STREAM": sys.argv[5]})
def hook(point):
    if point == sys.argv[4]:
        os.kill(os.getpid(), signal.SIGKILL)
rescore(cfg, Resources.from_urls(sys.argv[1], sys.argv[2]), start_rescore("run-killed"), hook=hook)
"""


@pytest.mark.parametrize("kill_at, resumer", [("stream_read", "run-killed"), ("written_postgres", "run-killed"),
                                              ("written_redis", "run-later")])
def test_a_consumer_killed_mid_batch_loses_nothing_and_applies_nothing_twice(platform, kill_at, resumer):
    """The task's retry (same consumer) reads its own entries back; another run re-claims them once idle."""
    admin = platform["admin"]
    offset = {"stream_read": 200, "written_postgres": 300, "written_redis": 400}[kill_at]
    customers = _customers(platform, 30, offset)
    _produce(platform, customers)
    env = {**os.environ, "PYTHONPATH": os.path.join(str(REPO_ROOT), "include")}
    child = subprocess.run([sys.executable, "-c", _KILLED_CHILD, platform["pg_url"], platform["redis_url"],
                            str(platform["tmp"] / "state"), kill_at, STREAM], env=env, capture_output=True,
                           timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    pending = admin.xpending(STREAM, event_stream.GROUP)
    assert pending["pending"] == 20 and pending["consumers"] == [{"name": "run-killed", "pending": 20}]
    time.sleep(1.2)
    result = _drain(platform, resumer, CHURN_RESCORE_CLAIM_LEASE_SECONDS="1")
    assert result["stream"]["acknowledged"] == 30 and result["rescored"] == 30
    assert admin.xpending(STREAM, event_stream.GROUP)["pending"] == 0 and admin.xlen(STREAM) == 0
    _refreshed(platform, customers)
    logged = _pg(platform, "SELECT customer_id, count(*) FROM churn.score_refresh_log WHERE customer_id = ANY(%s) "
                           "GROUP BY 1", (customers,))
    # one refresh per customer: the killed attempt's Postgres rows were replaced by its retry, not added to
    assert sorted(c for c, _ in logged) == sorted(customers)
    if resumer == "run-killed":
        assert {n for _, n in logged} == {1}


def test_an_entry_delivered_too_often_goes_to_the_dead_letters(platform):
    admin = platform["admin"]
    (cid,) = _customers(platform, 1, 500)
    (entry,) = _produce(platform, [cid])
    client = redis.Redis.from_url(platform["redis_url"])
    event_stream.ensure_group(client, STREAM)
    for _ in range(3):  # three consumers took it and died
        client.xreadgroup(event_stream.GROUP, "dead-consumer", {STREAM: "0" if _ else ">"}, count=1)
    client.close()
    result = _drain(platform, "run-often", CHURN_RESCORE_MAX_ATTEMPTS="2", CHURN_RESCORE_CLAIM_LEASE_SECONDS="0.001")
    assert result["stream"]["dead_lettered"] == 1
    last = admin.xrange(event_stream.dead_stream(STREAM))[-1][1]
    assert last["entry_id"] == entry and "delivered 4 times" in last["reason"]


def test_the_stream_trigger_fires_on_new_entries_and_refires_while_they_wait(platform):
    admin = platform["admin"]
    assert admin.xpending(STREAM, event_stream.GROUP)["pending"] == 0
    trigger = StreamTrigger(STREAM, poll_seconds=0.1, refire_seconds=0.6)
    os.environ["CHURN_REDIS_URL_STREAM_TEST"] = platform["redis_url"]
    trigger.url_env = "CHURN_REDIS_URL_STREAM_TEST"
    assert trigger.serialize()[0] == "churn.data.outbox_trigger.StreamTrigger"

    async def watch() -> list[dict]:
        events = []
        gen = trigger.run()

        async def collect():
            async for event in gen:
                events.append(event.payload)

        task = asyncio.create_task(collect())
        await asyncio.sleep(0.5)
        quiet = list(events)
        admin.xadd(STREAM, {"customer_id": "C00000001"})
        await asyncio.sleep(1.5)
        task.cancel()
        return quiet, events

    quiet, events = asyncio.run(watch())
    assert quiet == []  # nothing waiting: no run
    assert events and events[0]["waiting"] == 1 and events[0]["stream"] == STREAM
    assert len(events) >= 2  # still waiting after refire_seconds: fired again
    _drain(platform, "run-trigger")  # leave the stream drained
