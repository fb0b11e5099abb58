"""The nightly batch against its floors: every task of churn_nightly, and in the same run what the machine can do.

For each size (default 1M and 10M customers) the synthetic population is generated into a fresh
database, then every task runs the way LocalExecutor runs it (one fresh interpreter per task, see
``bench.dag_memory``) with ``CHURN_SCORE_PARTITIONS=4``; each task reports wall seconds, CPU seconds
(user + system, itself and its children) and peak RSS. Then, on the same data and servers:

- **ingest floor**: ``psql`` running ``COPY (feature query) TO STDOUT`` of both snapshots (training as of
  ``as_of - window``, scoring as of ``as_of``) into /dev/null;
- **partitions**: the scoring task once more with one partition (the whole file), against the four
  partitions' CPU: summed (the work does not grow) and the largest (the work divides);
- **runtimes**: one partition scored with ``CHURN_SCORE_RUNTIME=sklearn``, and raw ONNX Runtime
  (``session.run`` on feeds built beforehand, one thread) on the same rows;
- **Postgres floor**: ``psql \\copy`` (the C client, CSV) of the run's score rows into a fresh table;
- **Redis floor**: ``redis-cli --pipe`` replaying the same ``MSET`` commands the publish sends.

Ratios are project / floor (lower is better for times). Results: ``bench/results/nightly_floor.json``.

    .venv/bin/python -m bench.nightly_floor                          # 1M and 10M, ~25 min on 2 cores
    .venv/bin/python -m bench.nightly_floor --sizes 200000           # a quick look
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from bench.dag_memory import AS_OF, ROOT, _task

RESULTS = ROOT / "bench" / "results" / "nightly_floor.json"
PARTITIONS = 4

_FLOOR = r"""
import json, resource, sys, time
job, args = sys.argv[1], json.loads(sys.argv[2])
started = time.perf_counter()
out = {}
if job == "copy_sql":
    import psycopg2
    from datetime import date, timedelta
    from churn.data import sql_source
    from churn.data.spec import synthetic_spec
    conn = psycopg2.connect(args["pg_url"])
    spec = synthetic_spec()
    as_of = date.fromisoformat(args["as_of"])
    query = sql_source.load_query(sql_source.DEMO_QUERY)
    statements = []
    for day, labelled in ((as_of - timedelta(days=args["window"]), True), (as_of, False)):
        names = sql_source.arrow_schema(spec, labelled).names
        sql = sql_source.bind(conn, query, day, args["window"])
        statements.append("COPY (" + sql_source.wrapped(sql, ", ".join(sql_source.quote_ident(c) for c in names))
                          + ") TO STDOUT WITH (FORMAT csv, HEADER true)")
    out = {"statements": statements}
elif job == "onnx_raw":
    import numpy as np, onnxruntime as ort, pyarrow.parquet as pq
    from churn.model.export import onnx_inputs
    from churn.model.registry import load_verified
    model, signature = load_verified(args["artifact_path"], args["artifact_sha256"])
    options = ort.SessionOptions(); options.intra_op_num_threads = 1; options.inter_op_num_threads = 1
    session = ort.InferenceSession(args["onnx_path"], options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    feeds = []
    for batch in pq.ParquetFile(args["features_path"]).iter_batches(
            batch_size=200_000, columns=[signature.id_column, *signature.feature_columns]):
        feeds.append(onnx_inputs(signature.enforce(batch.to_pandas()), signature, names))
    rows = sum(len(next(iter(f.values()))) for f in feeds)
    t0 = time.perf_counter(); c0 = time.process_time()
    for f in feeds:
        session.run(None, f)
    out = {"rows": rows, "run_seconds": time.perf_counter() - t0, "run_cpu_seconds": time.process_time() - c0}
elif job == "resp_file":
    import pyarrow.parquet as pq
    from churn.publish.redis_encoding import encode_json
    rows = 0
    with open(args["out"], "wb") as fh:
        for batch in pq.ParquetFile(args["scores_path"]).iter_batches(batch_size=10_000):
            for part in encode_json(batch, "floor").data:
                fh.write(part)
            rows += batch.num_rows
    out = {"rows": rows}
elif job == "csv_file":
    import pyarrow.csv as pacsv, pyarrow.parquet as pq
    from churn.publish.postgres import SCORES_COLUMNS
    names = [c.strip() for c in SCORES_COLUMNS.split(",")]
    with pacsv.CSVWriter(args["out"], pq.ParquetFile(args["scores_path"]).schema_arrow.empty_table().select(names).schema,
                         write_options=pacsv.WriteOptions(include_header=False)) as writer:
        for batch in pq.ParquetFile(args["scores_path"]).iter_batches(batch_size=250_000, columns=names):
            writer.write_batch(batch)
usage = resource.getrusage(resource.RUSAGE_SELF)
json.dump({"out": out, "seconds": time.perf_counter() - started, "cpu_seconds": usage.ru_utime + usage.ru_stime},
          sys.stdout)
"""


def _floor(job: str, args: dict, env: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", _FLOOR, job, json.dumps(args)], env=env, cwd=ROOT, check=True,
                          timeout=3600, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _timed_command(command: list[str], stdin_path: Path | None = None) -> float:
    """Wall seconds of a C tool, its output thrown away by the kernel (/dev/null), not read by Python."""
    started = time.perf_counter()
    with open(stdin_path, "rb") if stdin_path else open(os.devnull, "rb") as stdin, \
            open(os.devnull, "wb") as sink:
        subprocess.run(command, stdin=stdin, stdout=sink, stderr=subprocess.PIPE, check=True, timeout=3600)
    return time.perf_counter() - started


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_size(size: int, services, tmp: Path, redis_db: int) -> dict:
    """Generate ``size`` customers, run every task in its own process, then the floors on the same data."""
    import psycopg2
    import redis

    from churn.dev.services import ensure_database

    name = f"floor_{size}"
    ensure_database(services.pg_url("postgres"), name)
    pg_url = services.pg_url(name)
    redis_url = services.redis_url_db(redis_db)
    redis.Redis.from_url(services.redis_admin_url(redis_db)).flushdb()
    state = tmp / f"state_{size}"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'include'}", "CHURN_STATE_DIR": str(state),
           "CHURN_TRAIN_TPOT": "false", "CHURN_PG_READER_ROLE": "", "CHURN_MAX_ROW_COUNT_CHANGE": "0.9",
           "CHURN_SCORE_PARTITIONS": str(PARTITIONS), "CHURN_EXPORT_PMML": "false"}
    started = time.monotonic()
    load = ("import sys, psycopg2; from datetime import date; from churn.data.generate import generate, "
            "load_source_tables; conn = psycopg2.connect(sys.argv[1]); "
            f"load_source_tables(conn, generate({size}, date({AS_OF.year}, {AS_OF.month}, {AS_OF.day}), seed=7))")
    subprocess.run([sys.executable, "-c", load, pg_url], env=env, cwd=ROOT, check=True, timeout=7200)
    generated_s = time.monotonic() - started
    work = tmp / f"work_{size}"
    work.mkdir(parents=True, exist_ok=True)
    tasks: dict[str, dict] = {}

    def task(key: str, stage: str, *args):
        result = _task(stage, list(args), work, env, pg_url, redis_url)
        tasks[key] = {k: round(v, 2) for k, v in result.items() if k != "out"}
        out = result["out"]
        if isinstance(out, dict) and out.get("stage_seconds") is not None:  # the stage's own time, no interpreter start
            tasks[key]["stage_seconds"] = out["stage_seconds"]
        logging.info("%s customers: %-22s %6.1f s  cpu %6.1f s  peak %7.1f MB", size, key, result["seconds"],
                     result.get("cpu_seconds", 0.0), result["peak_rss_mb"])
        return result["out"]

    run = task("start_run", "start_run", AS_OF.isoformat())
    ingested = task("ingest", "ingest", run)
    validated = task("profile_and_validate", "profile_and_validate", run, ingested)
    drifted = task("drift", "drift", run, validated)
    splits = task("split", "split", run, validated)
    trained = task("train", "train", run, splits, drifted)
    evaluation = task("evaluate_and_gate", "evaluate_and_gate", run, splits, trained)
    registered = task("register", "register", run, splits, evaluation)
    parts = task("plan_scoring", "plan_scoring", run, validated, registered)
    scored_parts = [task(f"score_partition[{i}]", "score_partition", run, part) for i, part in enumerate(parts)]
    scored = task("score", "merge_scores", run, scored_parts)
    pg_published = task("publish_postgres", "publish_postgres", run, scored)
    redis_published = task("publish_redis", "publish_redis", run, scored, pg_published)
    exported = task("export", "export", run, scored, pg_published, validated)
    stages = {"ingested": ingested, "validated": validated, "splits": splits, "trained": trained,
              "evaluation": evaluation, "registered": registered, "scored": scored, "pg_published": pg_published,
              "redis_published": redis_published, "exported": exported, "drift": drifted}
    task("summarize", "summarize", run, stages)

    # -- partitions: the same scoring task over the whole file, and with scikit-learn
    side_run = {**run, "run_dir": str(work / "side")}
    whole = task("score_partition[P=1]", "score_partition", side_run, {**parts[0], "partition": 0, "partitions": 1})
    sk = task("score_partition[P=1,sklearn]", "score_partition", side_run,
              {**parts[0], "partition": 0, "partitions": 1, "runtime": "sklearn"})
    part_cpu = [p["cpu_seconds"] for p in scored_parts]  # the partition's own work, model load excluded
    one_cpu = whole["cpu_seconds"]
    part_process_cpu = [tasks[f"score_partition[{i}]"]["cpu_seconds"] for i in range(len(parts))]
    one_process_cpu = tasks["score_partition[P=1]"]["cpu_seconds"]

    # -- floors, in this run, on the same data
    floors: dict[str, dict] = {}
    psql = shutil.which("psql") or "psql"
    statements = _floor("copy_sql", {"pg_url": pg_url, "as_of": AS_OF.isoformat(), "window": 30}, env)["out"]
    settings = ["SET work_mem = '64MB'", "SET jit = off", "SET TimeZone = 'UTC'", "SET DateStyle = 'ISO'"]
    command = [psql, pg_url, "-X", "-q", "-v", "ON_ERROR_STOP=1"]
    for statement in settings + statements["statements"]:
        command += ["-c", statement]
    floors["ingest_copy_to_stdout"] = {
        "seconds": round(_timed_command(command), 2),
        "what": "psql: COPY (feature query) TO STDOUT of both snapshots (the ingest's settings), into /dev/null",
        "psql": subprocess.run([psql, "--version"], capture_output=True, text=True).stdout.strip()}
    if parts[0].get("onnx_path"):
        raw = _floor("onnx_raw", {**parts[0], "features_path": parts[0]["features_path"]}, env)["out"]
        floors["onnx_runtime_raw"] = {"rows": raw["rows"], "cpu_seconds": round(raw["run_cpu_seconds"], 2),
                                      "rows_per_cpu_second": round(raw["rows"] / raw["run_cpu_seconds"], 1),
                                      "what": "session.run on prebuilt feeds, 1 thread"}
    csv_path = work / "scores.csv"
    _floor("csv_file", {"scores_path": scored["path"], "out": str(csv_path)}, env)
    conn = psycopg2.connect(pg_url)
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS churn.floor_scores")
        cur.execute(f"CREATE TABLE churn.floor_scores (LIKE {pg_published['table']} INCLUDING DEFAULTS)")
    conn.commit()
    conn.close()
    from churn.publish.postgres import SCORES_COLUMNS

    floors["postgres_psql_copy_csv"] = {
        "seconds": round(_timed_command([psql, pg_url, "-v", "ON_ERROR_STOP=1", "-c",
                                         f"\\copy churn.floor_scores ({SCORES_COLUMNS}) FROM '{csv_path}' CSV"]), 2),
        "what": "psql \\copy of the same rows (CSV file written beforehand) into a fresh table"}
    resp_path = work / "scores.resp"
    _floor("resp_file", {"scores_path": scored["path"], "out": str(resp_path)}, env)
    redis_cli = shutil.which("redis-cli") or str(Path(sys.executable).parent / "redis-cli")
    spare = services.redis_admin_url(redis_db + 8)
    redis.Redis.from_url(spare).flushdb()
    floors["redis_cli_pipe"] = {"seconds": round(_timed_command([redis_cli, "-u", spare, "--pipe"], resp_path), 2),
                                "what": "redis-cli --pipe replaying the same MSET commands (file written beforehand)",
                                "redis_cli": subprocess.run([redis_cli, "--version"], capture_output=True,
                                                            text=True).stdout.strip()}
    csv_path.unlink(missing_ok=True)
    resp_path.unlink(missing_ok=True)

    inference_rows_per_s = [p["rows"] / p["inference_seconds"] for p in scored_parts if p["inference_seconds"]]
    score_tasks = ("score_partition[0]", "score_partition[1]", "score_partition[2]", "score_partition[3]", "score")
    dag_tasks = {k: v for k, v in tasks.items() if not k.startswith("score_partition[P=")}
    ratios = {
        "ingest_over_copy_floor": round(tasks["ingest"]["stage_seconds"]
                                        / floors["ingest_copy_to_stdout"]["seconds"], 2),
        "postgres_publish_speed_over_psql_copy": round(floors["postgres_psql_copy_csv"]["seconds"]
                                                       / tasks["publish_postgres"]["stage_seconds"], 2),
        "redis_publish_speed_over_redis_cli_pipe": round(floors["redis_cli_pipe"]["seconds"]
                                                         / tasks["publish_redis"]["stage_seconds"], 2),
        "partitions_summed_cpu_over_one": round(sum(part_cpu) / one_cpu, 2),
        "largest_partition_cpu_over_one": round(max(part_cpu) / one_cpu, 2),
        "partitions_summed_process_cpu_over_one": round(sum(part_process_cpu) / one_process_cpu, 2),
        "largest_partition_process_cpu_over_one": round(max(part_process_cpu) / one_process_cpu, 2),
    }
    if whole["runtime"] != sk["runtime"]:  # only when the project scored with ONNX Runtime
        ratios["sklearn_over_project_inference_seconds"] = round(
            sk["inference_seconds"] / max(whole["inference_seconds"], 1e-9), 2)
    if "onnx_runtime_raw" in floors and whole["runtime"] == "onnxruntime":
        ratios["inference_speed_over_raw_onnx"] = round(
            (whole["rows"] / whole["inference_seconds"]) / floors["onnx_runtime_raw"]["rows_per_cpu_second"], 2)
    return {
        "customers": size, "generate_seconds": round(generated_s, 1), "rows_scored": scored["rows"],
        "champion": registered.get("champion"), "runtimes": scored.get("runtimes"),
        "rows_published_redis": redis_published.get("rows"),
        "tasks": tasks,
        "dag_seconds": round(sum(t["seconds"] for t in dag_tasks.values()), 1),
        "dag_stage_seconds": round(sum(t.get("stage_seconds", 0.0) for t in dag_tasks.values()), 1),
        "dag_seconds_without_training": round(sum(t["seconds"] for k, t in dag_tasks.items()
                                                  if k not in ("train", "evaluate_and_gate", "register")), 1),
        "scoring_seconds": round(sum(tasks[k]["seconds"] for k in score_tasks if k in tasks), 1),
        "partition_rows_read": [p.get("rows_read") for p in scored_parts],
        "inference_rows_per_second": [round(r, 1) for r in inference_rows_per_s],
        "whole_file_partition": {k: whole[k] for k in ("rows", "rows_read", "runtime", "inference_seconds",
                                                       "cpu_seconds", "load_seconds")},
        "sklearn_partition": {k: sk[k] for k in ("rows", "runtime", "inference_seconds", "cpu_seconds")},
        "partition_cpu_seconds": part_cpu, "partition_load_seconds": [p["load_seconds"] for p in scored_parts],
        "max_task_peak_rss_mb": max(v["peak_rss_mb"] for v in dag_tasks.values()),
        "max_task": max(dag_tasks, key=lambda k: dag_tasks[k]["peak_rss_mb"]),
        "floors": floors, "ratios": ratios,
    }


SINGLE_TASKS = ("ingest", "profile_and_validate", "drift", "split", "train", "evaluate_and_gate", "register",
                "plan_scoring", "score", "publish_postgres", "publish_redis", "export", "summarize")


def plan_100m(record: dict, customers: int = 100_000_000, window_seconds: float = 3600.0) -> dict:
    """A 100M-customer night from the largest run: per-task seconds per million, scaled linearly.

    Linear because the 1M -> 10M cost per scored customer says so (``cost_per_scored_customer_large_over_small``);
    a task whose ratio is above 1.15 is named in ``superlinear``. Scoring partitions divide over workers;
    every other task runs once, so those bound the night whatever the worker count.
    """
    import math

    large = record["runs"][-1]
    scale = customers / large["customers"]
    seconds = {k: v.get("stage_seconds", v["seconds"]) for k, v in large["tasks"].items()}
    single = {k: round(seconds[k] * scale, 1) for k in SINGLE_TASKS if k in seconds}
    partitions = [k for k in seconds if k.startswith("score_partition[") and not k.startswith("score_partition[P=")]
    partition_work = round(sum(seconds[k] for k in partitions) * scale, 1)  # worker-seconds of scoring
    single_total = round(sum(single.values()), 1)
    single_without_training = round(sum(v for k, v in single.items()
                                        if k not in ("train", "evaluate_and_gate", "register")), 1)
    left = window_seconds - single_total
    workers = math.ceil(partition_work / left) if left > 0 else None
    ratios = record.get("cost_per_scored_customer_large_over_small", {})
    return {
        "customers": customers, "from_run_customers": large["customers"], "window_seconds": window_seconds,
        "seconds_per_million_customers": {k: round(v / large["customers"] * 1e6, 2) for k, v in seconds.items()
                                          if not k.startswith("score_partition[P=")},
        "single_task_seconds": single, "single_tasks_total_seconds": single_total,
        "single_tasks_without_training_seconds": single_without_training,
        "scoring_worker_seconds": partition_work,
        "workers_for_scoring_in_window": workers,
        "bounding_tasks": sorted(single, key=single.get, reverse=True)[:3],
        "fits_window_on_one_machine": single_total + partition_work <= window_seconds,
        "superlinear": sorted(k for k, v in ratios.items() if v > 1.15),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the DAG and its floors at each size and write the JSON record."""
    from churn.dev.services import EmbeddedServices
    from churn.dev.stack import free_port

    parser = argparse.ArgumentParser(prog="python -m bench.nightly_floor", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--replan", action="store_true", help="recompute the 100M plan of --out without running")
    args = parser.parse_args(argv)
    if args.replan:
        record = json.loads(args.out.read_text())
        record["plan_100m"] = plan_100m(record)
        args.out.write_text(json.dumps(record, indent=2))
        print(json.dumps(record["plan_100m"], indent=2))
        return 0
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sizes = [int(s) for s in args.sizes.split(",")]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="churn-floor-") as tmp:
        services = EmbeddedServices(Path(tmp) / "services", free_port(), free_port())
        services.start()
        try:
            runs = [run_size(size, services, Path(tmp), db) for db, size in enumerate(sizes)]
        finally:
            services.stop()
    record = {
        "benchmark": "nightly_floor", "measured_at": datetime.now(timezone.utc).isoformat(), "commit": _git_commit(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_1m_before": load_before,
                    "load_avg_1m_after": os.getloadavg()[0]},
        "partitions": PARTITIONS, "runs": runs,
        "targets": {"dag_seconds_without_training_at_10M": 120, "ingest_over_copy_floor": 1.3,
                    "postgres_publish_speed_over_psql_copy": 0.9, "redis_publish_speed_over_redis_cli_pipe": 0.6,
                    "partitions_summed_cpu_over_one": 1.15, "largest_partition_cpu_over_one": 0.3,
                    "inference_speed_over_raw_onnx": 0.5, "largest_task_peak_rss_large_over_small": 1.2},
    }
    if len(runs) > 1:
        small, large = runs[0], runs[-1]
        record["largest_task_peak_rss_large_over_small"] = round(large["max_task_peak_rss_mb"]
                                                                 / small["max_task_peak_rss_mb"], 3)
        record["cost_per_scored_customer_large_over_small"] = {
            k: round((large["tasks"][k]["seconds"] / large["rows_scored"]) / (v["seconds"] / small["rows_scored"]), 2)
            for k, v in small["tasks"].items() if k in large["tasks"] and v["seconds"] >= 0.5}
    record["plan_100m"] = plan_100m(record)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    print(json.dumps({k: v for k, v in record.items() if k != "runs"}, indent=2))
    for run in runs:
        print(run["customers"], json.dumps(run["ratios"]), run["dag_seconds"], run["dag_seconds_without_training"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
