"""``make bench`` = ``python -m bench.run``: the publish benchmarks, results in bench/results/publish.json.

Starts its own PostgreSQL and Redis (``churn.dev.services.EmbeddedServices`` on free loopback ports in a
temporary folder: never the demo's), then measures, side by side in one run:

1. publish throughput of 1,000,000 precomputed scores: project path vs naive vs raw floor, per store;
2. Redis memory per customer for each layout;
3. lookup latency through the key contract with 50 concurrent clients (both layouts);
4. end-to-end precompute (source -> features -> inference -> publish both stores) at 1M and 4M.

Results are written after every section, so an interrupted run still leaves its figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import socket
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from bench import publish_e2e, publish_throughput as pt
from churn.dev.services import EmbeddedServices

RESULTS = Path(__file__).resolve().parent / "results" / "publish.json"
log = logging.getLogger("bench")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def machine() -> dict:
    """What the figures were taken on (and how busy it was)."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                          if line.startswith("MemTotal")))
    except (OSError, StopIteration, ValueError):
        mem_kb = 0
    return {"cpu": model, "cores": os.cpu_count(), "memory_gb": round(mem_kb / 1024 / 1024, 1),
            "python": platform.python_version(), "kernel": platform.release(),
            "load_average_at_start": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    """Run every publish benchmark and write the JSON results."""
    parser = argparse.ArgumentParser(prog="python -m bench.run")
    parser.add_argument("--customers", type=int, default=1_000_000, help="precomputed scores for throughput")
    parser.add_argument("--naive-rows", type=int, default=30_000, help="rows for the naive paths (extrapolated)")
    parser.add_argument("--e2e-sizes", default="1000000,4000000", help="end-to-end populations ('' = skip)")
    parser.add_argument("--buckets", type=int, default=65_536, help="CHURN_REDIS_HASH_BUCKETS for the hash layout")
    parser.add_argument("--clients", type=int, default=50, help="concurrent lookup clients")
    parser.add_argument("--sections", default="throughput,latency,e2e",
                        help="comma-separated subset of throughput,latency,e2e")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")

    tmp = Path(tempfile.mkdtemp(prefix="churn-bench-"))
    services = EmbeddedServices(tmp / "services", _free_port(), _free_port())
    services.start()
    admin_url = services.pg_url("postgres")
    bench_redis = services.redis_admin_url()  # it flushes and reads INFO / MEMORY: the platform's user may not

    def pg_url_for(db: str) -> str:
        return services.pg_url(db)

    command = "python -m bench.run " + " ".join(sys.argv[1:] if argv is None else argv)
    results: dict = {"benchmark": "publish", "started_at": datetime.now(timezone.utc).isoformat(),
                     "machine": machine(), "command": command.strip(),
                     "caveat": "shared 2-core machine: other engineers ran tests and builds during the run"}
    try:
        scores = pt.write_precomputed_scores(tmp / "scores.parquet", args.customers)
        sections = {s.strip() for s in args.sections.split(",")}
        if args.out.exists() and sections != {"throughput", "latency", "e2e"}:
            # a partial re-run keeps the other sections' latest figures
            previous = json.loads(args.out.read_text())
            rerun = "rerun_" + "_".join(sorted(sections))
            results = {**previous, **{k: v for k, v in results.items() if k != "machine"},
                       "machine": {**previous.get("machine", {}), rerun: results["machine"]}}
        if "throughput" in sections:
            publish_e2e.create_database(admin_url, "bench")
            log.info("postgres throughput (%s rows)", args.customers)
            results["postgres_publish"] = pt.postgres_throughput(pg_url_for("bench"), scores, args.naive_rows)
            pt.dump(results, args.out)
            log.info("redis throughput and memory")
            redis_out = pt.redis_throughput(bench_redis, scores, args.naive_rows, args.buckets)
            results["redis_publish"] = redis_out["throughput"]
            results["redis_memory_per_customer"] = redis_out["memory"]
            pt.dump(results, args.out)
        if "latency" in sections:
            log.info("lookup latency with %s clients", args.clients)
            results["lookup_latency"] = {layout: pt.lookup_latency(bench_redis, scores, layout, args.buckets,
                                                                   clients=args.clients)
                                         for layout in ("json", "hash")}
            pt.dump(results, args.out)
        sizes = [int(s) for s in args.e2e_sizes.split(",") if s.strip()] if "e2e" in sections else []
        if sizes:
            publish_e2e.create_database(admin_url, "model_src")
            model_url = pg_url_for("model_src")
            publish_e2e._in_process(["load", "--pg-url", model_url, "--customers", "50000"])
            model_path = publish_e2e.train_model(model_url, tmp)
            results["end_to_end"] = {"model": "logistic baseline trained on a separate 50,000-customer population",
                                     "targets": {"non_inference_seconds_per_million": "<= 15 on 2 cores",
                                                 "peak_rss": "4M within 10% of 1M"}}
            for size in sizes:
                log.info("end to end: %s customers", size)
                results["end_to_end"][str(size)] = publish_e2e.run_size(
                    admin_url, pg_url_for, bench_redis, size, model_path, tmp / "e2e", "json", args.buckets)
                pt.dump(results, args.out)
            runs = [results["end_to_end"][str(s)] for s in sizes]
            if len(runs) >= 2:
                results["end_to_end"]["peak_rss_ratio_largest_vs_smallest"] = round(
                    runs[-1]["peak_rss_mb"] / runs[0]["peak_rss_mb"], 3)
    finally:
        results["finished_at"] = datetime.now(timezone.utc).isoformat()
        results["machine"]["load_average_at_end"] = os.getloadavg()
        pt.dump(results, args.out)
        services.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
