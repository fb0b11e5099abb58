"""Lookup latency measured like the floor (issue 24 item 5): open loop, fixed rates, during a nightly publish.

On the embedded Valkey, with 1M customers published in the default (``compact``) layout:

- **project**: the JavaScript client (``clients/js``: read ``churn:meta`` once, one ``HGET`` per lookup) driven
  open-loop at a fixed rate by ``bench/latency/openloop.js`` (lookup i starts at i / rate whatever the
  others do; latency from the scheduled time, so a stall counts for every lookup it delays);
- **floor**: ``bench/latency/openloop.c``, a C client sending the same ``HGET`` commands (same keys, same
  reader login) open-loop at the same rate on one connection and parsing the replies.

Each rate runs ``--seconds`` for the floor, then for the project, **while publishes of 1M customers run back
to back** in another process (a new run id each, as nights do), and once more idle. Records p50/p99/p99.9,
the ratio of the project's p99 to the floor's, the server version, machine and load:
``bench/results/lookup_latency.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import random
import shutil
import subprocess
import tempfile
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import redis

from bench.publish_throughput import MODEL, RUN_ID, write_precomputed_scores
from churn.publish import redis_store as rs

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "lookup_latency.json"
TARGETS = {"p99_over_floor_p99": 1.5, "p99_ms_at_20k": 1.0}


def _publisher(url: str, base: str, work: str, stop, published, batch_rows: int) -> None:
    """Publish the base scores as night after night (a new run id each) until told to stop."""
    client = redis.Redis.from_url(url, socket_timeout=600)
    day = 1
    while not stop.is_set():
        path = _run_file(Path(base), day, Path(work))
        run = (date.fromisoformat(RUN_ID) + timedelta(days=day)).isoformat()
        rs.publish_scores(client, path, run, f"{run}-bench", layout="compact", buckets=0, max_entries=128,
                          batch_rows=batch_rows)
        Path(path).unlink()
        published.value += 1
        day += 1
    client.close()


def _run_file(base: Path, day: int, work: Path) -> str:
    """The base scores as run ``RUN_ID + day`` (a later night)."""
    table = pq.read_table(base)
    run = (date.fromisoformat(RUN_ID) + timedelta(days=day)).isoformat()
    table = table.set_column(table.schema.get_field_index("run_id"), "run_id",
                             pa.array([run] * table.num_rows, table.schema.field("run_id").type))
    path = work / f"scores_{run}.parquet"
    pq.write_table(table, path, row_group_size=200_000)
    return str(path)


def _floor(binary: str, host: str, port: int, rate: int, seconds: float, commands: Path, user: str,
           password: str) -> dict:
    out = subprocess.run([binary, host, str(port), str(rate), str(seconds), str(commands), user, password, "0"],
                         capture_output=True, text=True, timeout=seconds * 10 + 60)
    if out.returncode != 0:
        raise RuntimeError(f"openloop.c failed: {out.stderr.strip()}")
    return json.loads(out.stdout)


def _project(url: str, rate: int, seconds: float, ids: Path) -> dict:
    node = shutil.which("node")
    if node is None:
        raise SystemExit("node is missing: install Node.js >= 18 and run `make clients`")
    out = subprocess.run([node, str(ROOT / "bench" / "latency" / "openloop.js"), str(rate), str(seconds), str(ids)],
                         capture_output=True, text=True, timeout=seconds * 10 + 60,
                         env={"CHURN_REDIS_URL": url, "PATH": os.environ.get("PATH", "")})
    if out.returncode != 0:
        raise RuntimeError(f"openloop.js failed: {out.stderr.strip()}")
    return json.loads(out.stdout)


def _commands(client, ids: list[str], path: Path) -> None:
    """The HGET of each id in the served layout (compact), as RESP, one command after another."""
    meta = rs.served_meta(client)
    with path.open("wb") as fh:
        for cid in ids:
            command, key = rs.record_key(cid, meta)
            parts = [command.encode(), key.encode(), cid.encode()]
            fh.write(b"*3\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))


def main(argv: list[str] | None = None) -> int:
    """Measure the floor and the project at each rate, during publishes and idle; write the JSON record."""
    from urllib.parse import urlparse

    from churn.dev.services import EmbeddedServices
    from churn.dev.stack import free_port

    parser = argparse.ArgumentParser(prog="python -m bench.lookup_latency", description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--rates", default="5000,20000,50000")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--publish-batch-rows", type=int, default=10_000,
                        help="fields per publish transaction (CHURN's batch_rows; the server runs each whole)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    rates = [int(r) for r in args.rates.split(",")]
    load_before = os.getloadavg()[0]
    record: dict = {"benchmark": "lookup_latency", "customers": args.customers, "seconds_per_case": args.seconds,
                    "publish_batch_rows": args.publish_batch_rows, "cases": []}
    with tempfile.TemporaryDirectory(prefix="churn-latency-", dir=os.environ.get("CHURN_BENCH_TMP")) as tmp:
        work = Path(tmp)
        binary = str(work / "openloop")
        subprocess.run(["cc", "-O2", "-pthread", "-o", binary, str(ROOT / "bench" / "latency" / "openloop.c")],
                       check=True)
        services = EmbeddedServices(work / "services", free_port(), free_port())
        services.start()
        try:
            admin = redis.Redis.from_url(services.redis_admin_url(), socket_timeout=600)
            info = admin.info("server")
            record["server"] = {"name": "valkey" if "valkey_version" in info else "redis",
                                "version": info.get("valkey_version") or info.get("redis_version")}
            base = write_precomputed_scores(work / "scores.parquet", args.customers)
            rs.publish_scores(admin, base, RUN_ID, MODEL, layout="compact", buckets=0, max_entries=128)
            rng = random.Random(5)
            ids = [f"C{rng.randint(1, args.customers):08d}" for _ in range(200_000)]
            ids_file, commands = work / "ids.txt", work / "commands.resp"
            ids_file.write_text("\n".join(ids) + "\n")
            _commands(admin, ids, commands)
            reader_url = services.redis_reader_url()
            parsed = urlparse(reader_url)
            for during_publish in (True, False):
                stop = multiprocessing.Event()
                published = multiprocessing.Value("i", 0)
                publisher = None
                if during_publish:
                    publisher = multiprocessing.Process(target=_publisher, daemon=True, args=(
                        services.redis_url, str(base), str(work), stop, published, args.publish_batch_rows))
                    publisher.start()
                    time.sleep(1.0)
                try:
                    for rate in rates:
                        case = {"rate": rate, "during_publish": during_publish}
                        case["floor"] = _floor(binary, parsed.hostname, parsed.port, rate, args.seconds, commands,
                                               parsed.username, parsed.password)
                        case["project"] = _project(reader_url, rate, args.seconds, ids_file)
                        case["project_p99_over_floor_p99"] = round(case["project"]["p99_us"]
                                                                   / max(case["floor"]["p99_us"], 1e-9), 2)
                        case["publishing_at_end"] = bool(publisher and publisher.is_alive())
                        case["publishes_so_far"] = published.value
                        logging.info("%s", json.dumps(case))
                        record["cases"].append(case)
                finally:
                    stop.set()
                    if publisher is not None:
                        publisher.join(timeout=600)
            admin.close()
        finally:
            services.stop()
    record.update({
        "measured_at": datetime.now(timezone.utc).isoformat(),
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_1m_before": load_before,
                    "load_avg_1m_after": os.getloadavg()[0]},
        "targets": TARGETS,
    })
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
