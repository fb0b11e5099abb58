"""Integration: the front-end lookup clients (issue 24 item 4) return the reference client's record.

The JavaScript client (clients/js, ioredis, under Node) and the Java client (clients/java, compiled with
javac) run as the read-only ``churn-reader`` user against the session's Valkey, for 10,000 customers of every
layout, an event re-score and unknown ids, and must print exactly the Python reference client's records.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import redis

from churn.publish import redis_store as rs
from tests.support.clients import CLIENTS, client_lookups, js_lookup_command, node_binary
from tests.support.scores import RUN_A, write_scores

CUSTOMERS = 10_000
EVENT_ID = "C00000077"
EVENT_VALUE = "0.901234|10|high|2026-11-20|2026-11-20-logreg|2026-11-21T09:15:00Z|2026-11-21T09:14:58Z"


@pytest.fixture(scope="module")
def node() -> str:
    """The Node.js binary with the client's dependencies installed (``make clients``); missing = a failure."""
    return node_binary()


@pytest.fixture(scope="module")
def java(tmp_path_factory) -> list[str]:
    """The Java client compiled with javac (a JDK >= 11; missing = a failure): the command that runs it."""
    javac, java_bin = shutil.which("javac"), shutil.which("java")
    assert javac and java_bin, "a JDK is missing: apt-get install openjdk-17-jdk-headless"
    classes = tmp_path_factory.mktemp("java-classes")
    subprocess.run([javac, "-Xlint:all", "-Werror", "-d", str(classes), str(CLIENTS / "java" / "ChurnLookup.java"),
                    str(CLIENTS / "java" / "LookupIds.java")], check=True, capture_output=True, timeout=300)
    return [java_bin, "-cp", str(classes), "LookupIds"]


@pytest.mark.parametrize("layout", rs.LAYOUTS)
def test_the_javascript_and_java_clients_return_the_reference_record_for_10000_customers(
        node, java, services, redis_client, tmp_path, layout):
    path = write_scores(tmp_path / "scores.parquet", RUN_A, 0, CUSTOMERS, seed=7)
    rs.publish_scores(redis_client, path, RUN_A, f"{RUN_A}-logreg", layout=layout, buckets=0)
    meta = rs.served_meta(redis_client)
    if layout == "json":  # an event re-score, as churn.publish.refresh writes it
        proba, decile, band, run, version, scored_at, event_at = EVENT_VALUE.split("|")
        redis_client.set(rs.score_key(EVENT_ID), json.dumps({
            "customer_id": EVENT_ID, "churn_probability": float(proba), "risk_band": band,
            "risk_decile": int(decile), "model_version": version, "run_id": run, "scored_at": scored_at,
            "source": "event", "event_at": event_at}))
    else:
        key = (rs.compact_key(EVENT_ID, buckets=int(meta["buckets"])) if layout == "compact"
               else rs.bucket_key(EVENT_ID, buckets=int(meta["buckets"])))
        redis_client.hset(key, EVENT_ID, EVENT_VALUE)
    ids = [f"C{i:08d}" for i in range(1, CUSTOMERS + 1)] + ["C99999999", "unknown-id", "Ä-ü-€"]
    reader_url = services.redis_reader_url()
    reader = redis.Redis.from_url(reader_url)
    expected = [rs.lookup_score(reader, cid) for cid in ids]
    reader.close()
    assert sum(r is not None for r in expected) == CUSTOMERS
    assert expected[76]["source"] == "event"
    for client in (js_lookup_command(node), java):
        got = client_lookups(client, reader_url, ids)
        assert len(got) == len(ids), client
        mismatches = [(cid, e, g) for cid, e, g in zip(ids, expected, got) if e != g]
        assert mismatches == [], (client, mismatches[:3])


@pytest.mark.parametrize("builtin", [True, False], ids=["zlib.crc32", "table fallback (Node < 20.15)"])
def test_the_javascript_crc32_is_the_bucket_hash(node, builtin):
    import zlib

    ids = ["C00000001", "7590-VHVEG", "15634602", "Ä-ü-€", "", "x" * 300]
    script = ("" if builtin else "require('zlib').crc32 = undefined;") + (
        "const { crc32 } = require(process.argv[1]);"
        "process.stdout.write(JSON.stringify(JSON.parse(process.argv[2]).map(crc32)))")
    done = subprocess.run([node, "-e", script, str(CLIENTS / "js" / "churn_lookup.js"), json.dumps(ids)],
                          capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(done.stdout) == [zlib.crc32(i.encode()) for i in ids]


def _experiment_scores(path, customers: int):
    """A score file as an experiment night writes it: three arms, the challenger served another model."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_scores(path, RUN_A, 0, customers, seed=9)
    table = pq.read_table(path)
    n = table.num_rows
    arm = pa.array([["control", "challenger", "holdout", None][i % 4] for i in range(n)], pa.string())
    version = pa.array([f"{RUN_A}-hgb" if i % 4 == 1 else f"{RUN_A}-logreg" for i in range(n)], pa.string())
    table = table.set_column(table.schema.get_field_index("model_version"), "model_version", version)
    table = table.set_column(table.schema.get_field_index("experiment"), "experiment",
                             pa.array([None if i % 4 == 3 else "exp-1" for i in range(n)], pa.string()))
    table = table.set_column(table.schema.get_field_index("arm"), "arm", arm)
    pq.write_table(table, path)
    return path


@pytest.mark.parametrize("layout", ["compact", "json"])
def test_the_clients_return_each_customers_experiment_arm_and_model(node, java, services, redis_client, tmp_path,
                                                                     layout):
    path = _experiment_scores(tmp_path / "scores.parquet", 4000)
    rs.publish_scores(redis_client, path, RUN_A, f"{RUN_A}-logreg", layout=layout, buckets=0)
    meta = rs.served_meta(redis_client)
    if layout == "compact":  # the champion outside experiments, then each (model, arm): four slots
        assert len(meta["slots"].split(",")) == 4
        redis_client.hset(rs.compact_key(EVENT_ID, buckets=int(meta["buckets"])), EVENT_ID,
                          EVENT_VALUE + "|exp-1|challenger")  # a re-scored challenger customer: 9 fields
    ids = [f"C{i:08d}" for i in range(1, 4001)]
    reader_url = services.redis_reader_url()
    reader = redis.Redis.from_url(reader_url)
    expected = [rs.lookup_score(reader, cid) for cid in ids]
    reader.close()
    assert [(r.get("experiment"), r.get("arm"), r["model_version"]) for r in expected[:4]] == [
        ("exp-1", "control", f"{RUN_A}-logreg"), ("exp-1", "challenger", f"{RUN_A}-hgb"),
        ("exp-1", "holdout", f"{RUN_A}-logreg"), (None, None, f"{RUN_A}-logreg")]
    if layout == "compact":
        assert expected[76]["source"] == "event" and expected[76]["arm"] == "challenger"
    for client in (js_lookup_command(node), java):
        got = client_lookups(client, reader_url, ids)
        mismatches = [(cid, e, g) for cid, e, g in zip(ids, expected, got) if e != g]
        assert mismatches == [], (client, mismatches[:3])
