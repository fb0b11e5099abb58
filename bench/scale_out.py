"""Scale-out benchmark: one scoring snapshot of a 4M-customer population, 1 / 2 / 4 partitions, two executors.

``python -m bench.scale_out [--customers 4000000]`` (or ``make bench-scale``) starts its own
PostgreSQL and Redis (temporary folder, free ports), loads the synthetic population into ``src.*``,
extracts the scoring snapshot with the pipeline's own point-in-time query, registers a logistic
champion, and then, under real Airflow (``churn.dev.stack``: LocalExecutor, then CeleryExecutor with
two Celery workers), triggers ``bench/dags/churn_scale_bench.py`` (the nightly DAG's
``plan_scoring -> score_partition[...] -> score`` on that snapshot) with 1, 2 and 4 partitions.
Per run it records the wall time of each stage (task start to end, from the REST API, and the
stage's own time), rows/s per partition and per worker. Results: ``bench/results/scale_out.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import psycopg2

from bench.publish_e2e import AS_OF, create_database, load_source, train_model

RESULTS = Path(__file__).resolve().parent / "results" / "scale_out.json"
BENCH_DAGS = Path(__file__).resolve().parent / "dags"
log = logging.getLogger("bench.scale_out")


def _seconds(ti: dict) -> float | None:
    if not ti.get("start_date") or not ti.get("end_date"):
        return None
    start = datetime.fromisoformat(ti["start_date"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(ti["end_date"].replace("Z", "+00:00"))
    return round((end - start).total_seconds(), 2)


def register_champion(pg_url: str, model_path: str, models_dir: Path) -> str:
    """Put the benchmark's model in the registry as champion (what plan_scoring reads)."""
    import joblib
    import pandas as pd

    from churn.model import registry
    from churn.model.features import ModelSignature

    payload = joblib.load(model_path)
    signature = ModelSignature.from_dict(payload["signature"])
    sample = pd.read_parquet(Path(model_path).with_name("train.parquet")).head(5000)
    pkg = registry.package(payload["model"], signature, models_dir, "bench-logreg", train_rows=sample,
                           test_rows=sample, reference_rows=1000)
    conn = psycopg2.connect(pg_url)
    registry.register(conn, version="bench-logreg", run_key=AS_OF.isoformat(), model_name="logistic_baseline",
                      status="challenger", reason="benchmark", metrics={}, params={}, signature=signature,
                      artifact_path=pkg.artifact_path, artifact_sha256=pkg.artifact_sha256,
                      data_fingerprint="bench", formats=pkg.formats)
    registry.promote(conn, "bench-logreg", "benchmark")
    conn.commit()
    conn.close()
    return "bench-logreg"


def measure(stack, features_path: str, partitions: int, logical_day: date) -> dict:
    """One triggered run of the bench DAG; per-stage wall times and per-partition/worker throughput."""
    started = time.perf_counter()
    run_id = stack.trigger(f"{logical_day.isoformat()}T00:00:00Z",
                           {"features_path": features_path, "score_partitions": partitions})
    state = stack.wait_run(run_id, timeout=3600)
    wall = time.perf_counter() - started
    if state != "success":
        raise RuntimeError(f"bench run {run_id} ended {state}: see {stack.run_dir}")
    tis = stack.task_instances(run_id)
    parts = []
    for ti in sorted((t for t in tis if t["task_id"] == "score_partition"), key=lambda t: t["map_index"]):
        x = stack.xcom(run_id, "score_partition", ti["map_index"])
        parts.append({"partition": ti["map_index"], "rows": x["rows"], "task_seconds": _seconds(ti),
                      "stage_seconds": x["stage_seconds"], "inference_seconds": round(x["inference_seconds"], 2),
                      "model_load_seconds": x["load_seconds"],
                      "rows_per_second": round(x["rows"] / x["stage_seconds"], 1), "worker": x["worker"]})
    merged = stack.xcom(run_id, "score")
    by_task = {t["task_id"]: t for t in tis if t.get("map_index", -1) < 0}
    starts = [datetime.fromisoformat(t["start_date"].replace("Z", "+00:00")) for t in tis
              if t["task_id"] == "score_partition"]
    ends = [datetime.fromisoformat(t["end_date"].replace("Z", "+00:00")) for t in tis
            if t["task_id"] == "score_partition"]
    workers: dict[str, dict] = {}
    for part in parts:
        entry = workers.setdefault(part["worker"].split(":")[-1], {"rows": 0, "seconds": 0.0})
        entry["rows"] += part["rows"]
        entry["seconds"] += part["stage_seconds"]
    for entry in workers.values():
        entry["rows_per_second"] = round(entry["rows"] / entry["seconds"], 1)
        entry["seconds"] = round(entry["seconds"], 2)
    return {
        "executor": stack.executor, "partitions": partitions, "rows": merged["rows"],
        "run_wall_seconds": round(wall, 2),
        "stages_seconds": {"plan_scoring": _seconds(by_task["plan_scoring"]),
                           "score_partitions_span": round((max(ends) - min(starts)).total_seconds(), 2),
                           "score_merge": _seconds(by_task["score"]),
                           "score_merge_stage": merged["stage_seconds"]},
        "scoring_wall_seconds": round((datetime.fromisoformat(by_task["score"]["end_date"].replace("Z", "+00:00"))
                                       - datetime.fromisoformat(by_task["plan_scoring"]["start_date"]
                                                                .replace("Z", "+00:00"))).total_seconds(), 2),
        "partitions_detail": parts, "per_worker": workers,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the scale-out benchmark and write its JSON."""
    from churn.data.ingest import extract_snapshot
    from churn.dev.services import EmbeddedServices, ensure_database
    from churn.dev.stack import AirflowStack, free_port

    parser = argparse.ArgumentParser(prog="python -m bench.scale_out")
    parser.add_argument("--customers", type=int, default=4_000_000)
    parser.add_argument("--partitions", default="1,2,4")
    parser.add_argument("--executors", default="local,celery")
    args = parser.parse_args(argv)
    # A SIGTERM (timeout, Ctrl-C from make) leaves through `finally`, which stops every component it started.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tmp = Path(tempfile.mkdtemp(prefix="churn-scale-"))
    services = EmbeddedServices(tmp / "services", free_port(), free_port())
    services.start()
    results: dict = {"machine": {"cores": os.cpu_count(), "python": platform.python_version()},
                     "started": datetime.now(timezone.utc).isoformat(), "customers": args.customers, "runs": []}
    try:
        admin = services.pg_url("postgres")
        url = services.pg_url("scale")
        create_database(admin, "scale")
        create_database(admin, "scale_train")
        train_url = services.pg_url("scale_train")
        load_source(train_url, 50_000, seed=3)
        work = tmp / "work"
        work.mkdir()
        model_path = train_model(train_url, work)
        results["source_load"] = load_source(url, args.customers, seed=11)
        conn = psycopg2.connect(url)
        snap = extract_snapshot(conn, AS_OF, work / "score_snapshot.parquet")
        conn.close()
        results["scored_customers"] = snap.rows
        log.info("snapshot: %s customers to score of %s", snap.rows, args.customers)
        state = tmp / "state"
        register_champion(url, model_path, state / "models")
        day = AS_OF
        for executor in args.executors.split(","):
            ensure_database(services.pg_url("postgres"), f"airflow_{executor}")
            stack = AirflowStack(
                state_dir=state, churn_pg_url=url, redis_url=services.redis_url,
                metadata_url=services.pg_url(f"airflow_{executor}", driver="postgresql+psycopg2"),
                api_port=free_port(), executor=executor,
                celery_broker_url=services.redis_url_db(1), celery_workers=2,
                dask_scheduler_port=free_port(), dask_workers=1, dag_id="churn_scale_bench",
                dags_folder=BENCH_DAGS, extra_env={"AIRFLOW__CORE__PARALLELISM": "8"},
            )
            try:
                stack.start(timeout=300)
                for partitions in (int(p) for p in args.partitions.split(",")):
                    day -= timedelta(days=1)  # logical dates in the past: the scheduler never runs a future one
                    result = measure(stack, snap.path, partitions, day)
                    log.info("%s, %s partitions: %s", executor, partitions, json.dumps(result))
                    results["runs"].append(result)
                    RESULTS.write_text(json.dumps(results, indent=2))
            finally:
                stack.stop()
                shutil.rmtree(stack.run_dir, ignore_errors=True)
    finally:
        services.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    results["finished"] = datetime.now(timezone.utc).isoformat()
    RESULTS.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
