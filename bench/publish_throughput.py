"""Publish benchmarks: throughput (project vs naive vs raw floor), Redis memory per layout, lookup latency.

Everything runs against the benchmark's own embedded Postgres/Redis (see bench/run.py).
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
import os
import random
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import psycopg2
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import redis

from churn.data.generate import customer_ids
from churn.model.score import SCORE_SCHEMA, deciles, risk_bands
from churn.publish import postgres as pgpub
from churn.publish import redis_store as rs

log = logging.getLogger(__name__)
RUN_ID = "2026-11-20"
MODEL = "2026-11-20-logistic_baseline"


def write_precomputed_scores(path: Path, customers: int, seed: int = 5) -> Path:
    """1M (or n) score rows exactly as the score stage writes them."""
    rng = np.random.default_rng(seed)
    proba = rng.beta(1.2, 6.0, customers).astype(np.float32)
    table = pa.table(
        {
            "customer_id": customer_ids(customers),
            "churn_probability": pa.array(proba, pa.float32()),
            "risk_band": pa.array(risk_bands(proba, (0.3, 0.6)), pa.string()),
            "risk_decile": pa.array(deciles(proba), pa.int16()),
            "model_version": pa.array(np.full(customers, MODEL, dtype=object), pa.string()),
            "run_id": pa.array(np.full(customers, RUN_ID, dtype=object), pa.string()),
            "scored_at": pa.array(np.full(customers, datetime(2026, 11, 20, 2, 14, 3, tzinfo=timezone.utc)),
                                  pa.timestamp("us", tz="UTC")),
            "experiment": pa.nulls(customers, pa.string()),
            "arm": pa.nulls(customers, pa.string()),
            "features_hash": pa.nulls(customers, pa.int64()),
        },
        schema=SCORE_SCHEMA,
    )
    pq.write_table(table, path, row_group_size=200_000)
    return path


def _rate(rows: int, seconds: float) -> dict:
    return {"rows": rows, "seconds": round(seconds, 3), "rows_per_second": round(rows / seconds, 1)}


# --- Postgres ---------------------------------------------------------------------------------------


def postgres_throughput(pg_url: str, scores: Path, naive_rows: int) -> dict:
    """Project path (COPY into a private table + PK + ANALYZE + switch) vs one INSERT per row vs plain COPY."""
    conn = psycopg2.connect(pg_url)
    rows = pq.ParquetFile(scores).metadata.num_rows
    t0 = time.perf_counter()
    published = pgpub.publish_scores(conn, scores, RUN_ID, MODEL)
    project = _rate(published.rows, time.perf_counter() - t0)

    # raw floor: the same rows already as CSV in memory, one plain COPY into a bare table
    buf = io.BytesIO()
    pacsv.write_csv(pq.read_table(scores), buf, write_options=pacsv.WriteOptions(include_header=False))
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS bench_floor")
        cur.execute("CREATE TABLE bench_floor (LIKE churn.scores_2026_11_20)")
        conn.commit()
        buf.seek(0)
        t0 = time.perf_counter()
        cur.copy_expert(f"COPY bench_floor ({pgpub.SCORES_COLUMNS}) FROM STDIN WITH (FORMAT csv)", buf)
        conn.commit()
        floor = _rate(rows, time.perf_counter() - t0)
        cur.execute("DROP TABLE bench_floor")
    conn.commit()
    del buf

    # naive: what hand-written DAGs do, one INSERT per customer (one transaction: the kindest variant)
    subset = pq.read_table(scores).slice(0, naive_rows).to_pylist()
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS bench_naive")
        cur.execute("CREATE TABLE bench_naive (LIKE churn.scores_2026_11_20 INCLUDING ALL)")
        conn.commit()
        t0 = time.perf_counter()
        for r in subset:
            cur.execute(f"INSERT INTO bench_naive ({pgpub.SCORES_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                        (r["customer_id"], r["churn_probability"], r["risk_band"], r["risk_decile"],
                         r["model_version"], r["run_id"], r["scored_at"]))
        conn.commit()
        naive = _rate(len(subset), time.perf_counter() - t0)
        cur.execute("DROP TABLE bench_naive")
    conn.commit()
    conn.close()
    naive["extrapolated_seconds_for_all_rows"] = round(rows / naive["rows_per_second"], 1)
    naive["note"] = f"measured on the first {len(subset)} rows, rows/s extrapolated"
    return {"rows": rows, "project": project, "naive_insert_per_row": naive, "floor_plain_copy": floor,
            "project_vs_naive": round(project["rows_per_second"] / naive["rows_per_second"], 1),
            "project_vs_floor": round(project["rows_per_second"] / floor["rows_per_second"], 3),
            "targets": {"vs_naive": ">= 50", "vs_floor": ">= 0.5"}}


# --- Redis ------------------------------------------------------------------------------------------


def redis_throughput(redis_url: str, scores: Path, naive_rows: int, buckets: int) -> dict:
    """Project path per layout vs one SET per key vs batched MSET of the same keys/values (no project logic)."""
    client = redis.Redis.from_url(redis_url, socket_timeout=600)
    rows = pq.ParquetFile(scores).metadata.num_rows
    out: dict = {"rows": rows}
    memory: dict = {}
    for layout in rs.LAYOUTS:
        client.flushdb()
        before = client.info("memory")["used_memory"]
        t0 = time.perf_counter()
        result = rs.publish_scores(client, scores, RUN_ID, MODEL, layout=layout, buckets=buckets)
        out[f"project_{layout}"] = _rate(result.rows, time.perf_counter() - t0)
        after = client.info("memory")["used_memory"]
        memory[layout] = _memory(client, layout, rows, after - before, buckets)

    # the same keys and JSON values, precomputed in memory: only the MSET calls are timed
    mappings = []
    for batch in pq.ParquetFile(scores).iter_batches(batch_size=10_000):
        keys = pc.binary_join_element_wise("churn:score:", batch.column("customer_id"), "").to_pylist()
        mappings.append(dict(zip(keys, rs.encode_json_values(batch).to_pylist())))
    client.flushdb()
    t0 = time.perf_counter()
    for mapping in mappings:
        client.mset(mapping)
    out["floor_batched_mset"] = _rate(rows, time.perf_counter() - t0)

    client.flushdb()
    subset = [(k, v) for mapping in mappings for k, v in mapping.items()][:naive_rows]
    del mappings
    t0 = time.perf_counter()
    for key, value in subset:
        client.set(key, value)
    naive = _rate(len(subset), time.perf_counter() - t0)
    naive["extrapolated_seconds_for_all_rows"] = round(rows / naive["rows_per_second"], 1)
    naive["note"] = f"measured on the first {len(subset)} keys, rows/s extrapolated"
    out["naive_set_per_key"] = naive
    client.flushdb()
    client.close()
    for layout in rs.LAYOUTS:
        out[f"{layout}_vs_naive"] = round(out[f"project_{layout}"]["rows_per_second"] / naive["rows_per_second"], 1)
        out[f"{layout}_vs_floor"] = round(out[f"project_{layout}"]["rows_per_second"]
                                          / out["floor_batched_mset"]["rows_per_second"], 3)
    out["targets"] = {"vs_naive": ">= 50", "vs_floor": ">= 0.5", "floor": "redis-py MSET, 10,000 keys per call"}
    return {"throughput": out, "memory": memory}


def _memory(client, layout: str, rows: int, delta: int, buckets: int) -> dict:
    rng = random.Random(3)
    sample_ids = [f"C{rng.randint(1, rows):08d}" for _ in range(200)]
    if layout == "json":
        usage = [client.memory_usage(rs.score_key(c), samples=0) for c in sample_ids]
        per_key = float(np.mean(usage))
    else:
        key_of = rs.compact_key if layout == "compact" else rs.bucket_key
        keys = {key_of(c, buckets=buckets) for c in sample_ids}
        per_key = float(np.mean([client.memory_usage(k, samples=0) / max(client.hlen(k), 1) for k in keys]))
    return {"customers": rows, "used_memory_delta_bytes": delta, "bytes_per_customer": round(delta / rows, 1),
            "memory_usage_per_customer_sampled": round(per_key, 1),
            "encoding_sample": (client.object("encoding", key_of("C00000001", buckets=buckets)).decode()
                                if layout != "json" else "string"),
            "buckets": buckets if layout != "json" else None,
            "target": {"hash": "<= 64", "compact": "<= 24 at 10M (bench/redis_memory.py)"}.get(layout)}


# --- lookup latency ---------------------------------------------------------------------------------


def _lookup_client(redis_url: str, layout: str, buckets: int, customers: int, lookups: int, seed: int,
                   start_at: float, queue, think_ms: float) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=600)
    rng = random.Random(seed)
    rs.lookup_score(client, "C00000001", layout=layout, buckets=buckets)  # connect + warm the run-info cache
    latencies = np.empty(lookups, dtype=np.int64)
    while time.time() < start_at:
        time.sleep(0.001)
    for i in range(lookups):
        cid = f"C{rng.randint(1, customers):08d}"
        t0 = time.perf_counter_ns()
        record = rs.lookup_score(client, cid, layout=layout, buckets=buckets)
        latencies[i] = time.perf_counter_ns() - t0
        if record is None:
            latencies[i] = -1
        # Front-end traffic arrives at a rate, it is not a tight loop: ~100 lookups/s per client
        # (5,000/s for 50 clients) leaves the 2 cores to Redis instead of to 50 busy Python clients.
        time.sleep(rng.uniform(0.0, think_ms / 500.0))
    queue.put(latencies.tobytes())
    client.close()


def lookup_latency(redis_url: str, scores: Path, layout: str, buckets: int, clients: int = 50,
                   lookups_per_client: int = 1000, think_ms: float = 10.0) -> dict:
    """p50/p99 of the reference client's lookup with ``clients`` concurrent client processes on loopback."""
    client = redis.Redis.from_url(redis_url, socket_timeout=600)
    client.flushdb()
    rows = pq.ParquetFile(scores).metadata.num_rows
    rs.publish_scores(client, scores, RUN_ID, MODEL, layout=layout, buckets=buckets)
    client.close()
    admin = redis.Redis.from_url(redis_url, socket_timeout=600)
    admin.config_resetstat()  # server-side time per lookup command, to separate Redis from client CPU
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    start_at = time.time() + 2.0
    procs = [ctx.Process(target=_lookup_client, args=(redis_url, layout, buckets, rows, lookups_per_client, i,
                                                      start_at, queue, think_ms)) for i in range(clients)]
    for p in procs:
        p.start()
    t0 = time.perf_counter()
    results = [np.frombuffer(queue.get(timeout=600), dtype=np.int64) for _ in procs]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    stats = admin.info("commandstats")
    admin.close()
    command = "cmdstat_get" if layout == "json" else "cmdstat_hget"
    lat = np.concatenate(results)
    missing = int((lat < 0).sum())
    lat_ms = lat[lat >= 0] / 1e6
    return {"layout": layout, "clients": clients, "lookups": int(lat.size), "missing": missing,
            "p50_ms": round(float(np.percentile(lat_ms, 50)), 3), "p90_ms": round(float(np.percentile(lat_ms, 90)), 3),
            "p99_ms": round(float(np.percentile(lat_ms, 99)), 3), "max_ms": round(float(lat_ms.max()), 3),
            "lookups_per_second": round(lat.size / wall, 1), "mean_think_time_ms_per_client": think_ms,
            "redis_server_usec_per_lookup": stats.get(command, {}).get("usec_per_call"),
            "client": "churn.publish.redis_store.lookup_score (redis-py, one GET/HGET per lookup)",
            "target": "p99 <= 1 ms"}


def dump(results: dict, path: Path) -> None:
    """Write results as JSON (atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str))
    os.replace(tmp, path)
