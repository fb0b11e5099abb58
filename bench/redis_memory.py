"""Redis memory per served customer and lookup round trips, per layout, at 1M and 10M customers (issue 24 item 1).

For each population: the score file the score stage writes (``C00000001``-style ids, beta-distributed
probabilities), published with the project's ``publish_scores`` into a flushed embedded Valkey, then:

- ``used_memory`` after minus before, per customer (what the server really holds, allocator included);
- the bucket count the publish chose (``CHURN_REDIS_HASH_BUCKETS=0``), the largest bucket and how many
  buckets are in the compact encoding (listpack) against the server's ``hash-max-listpack-entries``;
- server commands per lookup: ``INFO commandstats`` before and after 10,000 lookups with the reference client (which read
  ``churn:meta`` once);
- the floor of the write: ``redis-cli --pipe`` replaying the same ``HSET`` commands (written to a file
  beforehand) into the flushed server, beside the project's publish time.

Layouts: ``compact`` (the default) at every size; ``hash`` with its former fixed 65,536 buckets and ``json``
at the sizes in ``--compare-sizes`` (``json`` costs ~300 bytes a customer: 3 GB at 10M).
Writes ``bench/results/redis_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import shutil
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import redis

from bench.publish_throughput import RUN_ID, MODEL, write_precomputed_scores
from churn.publish import redis_store as rs
from churn.publish.redis_encoding import hash_partitions

RESULTS = Path(__file__).parent / "results" / "redis_memory.json"
TARGET_BYTES_PER_CUSTOMER = 24


def _server(client) -> dict:
    import redis as redis_py

    info = client.info("server")
    try:
        limit = int(client.config_get("hash-max-listpack-entries")["hash-max-listpack-entries"])
        source = "CONFIG GET"
    except redis_py.exceptions.ResponseError:
        limit, source = 128, "the server's default (CONFIG GET is refused to the admin user; redis.conf does not set it)"
    return {"name": "valkey" if "valkey_version" in info else "redis",
            "version": info.get("valkey_version") or info.get("redis_version"),
            "hash_max_listpack_entries": limit, "hash_max_listpack_entries_from": source}


def _bucket_stats(client, pattern: str) -> dict:
    keys = list(client.scan_iter(match=pattern, count=10_000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hlen(key)
        pipe.object("encoding", key)
    replies = pipe.execute()
    sizes, encodings = replies[0::2], replies[1::2]
    compact = sum(1 for e in encodings if e in (b"listpack", b"ziplist"))
    return {"keys": len(keys), "largest_bucket": max(sizes, default=0),
            "mean_bucket": round(sum(sizes) / max(len(sizes), 1), 1), "compact_encoded_keys": compact}


def _calls(client) -> dict[str, int]:
    """Calls per command so far (CONFIG RESETSTAT is not the admin user's to run: differences are taken)."""
    return {name.split("_", 1)[1]: v["calls"] for name, v in client.info("commandstats").items()}


def _round_trips(client, customers: int, lookups: int = 10_000) -> dict:
    """Server commands per lookup of the reference client after it has read the marker once."""
    reader = redis.Redis(**{k: v for k, v in client.connection_pool.connection_kwargs.items()
                            if k in ("host", "port", "db", "username", "password")})
    rng = random.Random(11)
    rs.lookup_score(reader, "C00000001")  # reads churn:meta once
    before = _calls(client)
    misses = 0
    t0 = time.perf_counter()
    for _ in range(lookups):
        if rs.lookup_score(reader, f"C{rng.randint(1, customers):08d}") is None:
            misses += 1
    seconds = time.perf_counter() - t0
    after = _calls(client)
    calls = {name: after.get(name, 0) - before.get(name, 0) for name in ("get", "hget", "hgetall")}
    reader.close()
    return {"lookups": lookups, "misses": misses, "server_calls": calls,
            "commands_per_lookup": round(sum(calls.values()) / lookups, 4),
            "mean_lookup_us_one_python_client": round(seconds / lookups * 1e6, 1)}


def _pipe_floor(client, url: str, scores: Path, buckets: int, work: Path) -> dict:
    """redis-cli --pipe replaying the compact layout's HSET commands (the RESP written to a file first)."""
    redis_cli = shutil.which("redis-cli")
    if redis_cli is None:
        raise SystemExit("redis-cli is missing: apt-get install redis-tools (the floor of this benchmark)")
    resp = work / "compact.resp"
    with resp.open("wb") as fh:
        for encoded in hash_partitions(scores, RUN_ID, "floor", buckets, 200_000, 10_000, slot=0):
            for part in encoded.data:
                fh.write(part)
    client.flushall()
    t0 = time.perf_counter()
    with resp.open("rb") as fh:
        subprocess.run([redis_cli, "-u", url, "--pipe"], stdin=fh, check=True, capture_output=True, timeout=3600)
    seconds = time.perf_counter() - t0
    resp.unlink()
    return {"seconds": round(seconds, 2), "what": "redis-cli --pipe of the same multi-field HSET commands"}


def measure(client, url: str, scores: Path, customers: int, layout: str, buckets: int, work: Path) -> dict:
    """Publish one layout into a flushed server and measure memory, buckets and lookups."""
    client.flushall()
    time.sleep(0.5)
    before = client.info("memory")["used_memory"]
    t0 = time.perf_counter()
    published = rs.publish_scores(client, scores, RUN_ID, MODEL, layout=layout, buckets=buckets)
    seconds = time.perf_counter() - t0
    after = client.info("memory")["used_memory"]
    out = {"layout": layout, "customers": customers, "publish_seconds": round(seconds, 2),
           "buckets": published.buckets, "used_memory_delta_bytes": after - before,
           "bytes_per_customer": round((after - before) / customers, 2)}
    if layout != "json":
        out["bucket_stats"] = _bucket_stats(client, "churn:c:*" if layout == "compact" else "churn:h:*")
    out["round_trips"] = _round_trips(client, customers)
    if layout == "compact":
        out["floor_redis_cli_pipe"] = _pipe_floor(client, url, scores, published.buckets, work)
        out["publish_speed_over_redis_cli_pipe"] = round(out["floor_redis_cli_pipe"]["seconds"] / seconds, 3)
    return out


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    """Measure every size and layout and write the JSON record."""
    from churn.dev.services import EmbeddedServices
    from churn.dev.stack import free_port

    parser = argparse.ArgumentParser(prog="python -m bench.redis_memory", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--compare-sizes", default="1000000", help="sizes that also measure json and hash:65536")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sizes = [int(s) for s in args.sizes.split(",")]
    compare = {int(s) for s in args.compare_sizes.split(",") if s}
    load_before = os.getloadavg()[0]
    runs = []
    with tempfile.TemporaryDirectory(prefix="churn-redis-mem-", dir=os.environ.get("CHURN_BENCH_TMP")) as tmp:
        work = Path(tmp)
        services = EmbeddedServices(work / "services", free_port(), free_port())
        services.start()
        try:
            url = services.redis_admin_url()
            client = redis.Redis.from_url(url, socket_timeout=3600)
            server = _server(client)
            for customers in sizes:
                scores = write_precomputed_scores(work / f"scores_{customers}.parquet", customers)
                layouts = [("compact", 0)] + ([("hash", 65_536), ("json", 0)] if customers in compare else [])
                for layout, buckets in layouts:
                    result = measure(client, url, scores, customers, layout, buckets, work)
                    logging.info("%s", json.dumps(result))
                    runs.append(result)
                scores.unlink()
            client.flushall()
            client.close()
        finally:
            services.stop()
    record = {
        "benchmark": "redis_memory", "measured_at": datetime.now(timezone.utc).isoformat(), "commit": _git_commit(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_1m_before": load_before,
                    "load_avg_1m_after": os.getloadavg()[0]},
        "server": server, "runs": runs,
        "targets": {"compact_bytes_per_customer_at_10M": TARGET_BYTES_PER_CUSTOMER, "commands_per_lookup": 1},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
