"""Memory of the whole nightly DAG at two population sizes: is every task's peak flat in the population?

For each size (default 1M and 4M customers) the synthetic population is generated into a fresh
database of embedded Postgres, then every task of ``churn_nightly`` runs the way LocalExecutor runs
it: one fresh process per task (``churn.stages.<part>.<stage>`` with the previous tasks' XCom-like outputs as
JSON), each reporting its peak RSS (``ru_maxrss``, itself and its children). Side by side, the naive
alternative of the heaviest stage, validating the whole snapshot in one GX batch after one
``pandas.read_parquet`` (what the validate stage did before it streamed), runs in its own process
on the same snapshot. The JSON records every task's peak at each size, the largest task peak per
size and the 4M/1M ratio (target: at most 1.2), plus the naive figures.

    .venv/bin/python -m bench.dag_memory                         # 1M and 4M, ~25 min on 2 cores
    .venv/bin/python -m bench.dag_memory --sizes 100000,400000   # quick look
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AS_OF = date(2026, 11, 20)

_CHILD = r"""
import json, resource, sys, time
from datetime import date
from churn.stages import common as common_stages
from churn.config import ChurnConfig
from churn.connections import Resources
stage, args_path, out_path, pg_url, redis_url = sys.argv[1:6]
args = json.loads(open(args_path).read())
cfg = ChurnConfig.from_env()
res = Resources.from_urls(pg_url, redis_url)
started = time.perf_counter()
if stage == "start_run":
    out = common_stages.start_run(cfg, res, date.fromisoformat(args[0]), "bench_dag_memory", {"retrain": True})
elif stage == "naive_validate":
    import pandas as pd
    from churn.data.validate import load_suite_definition
    import great_expectations as gx
    frame = pd.read_parquet(args[0]).reset_index(drop=True)
    suite_def = load_suite_definition("churn_features")
    suite_def["expectations"] = [e for e in suite_def["expectations"]
                                 if not e.get("meta", {}).get("row_count_vs_previous")]
    context = gx.get_context(mode="ephemeral")
    suite = context.suites.add(gx.ExpectationSuite(name=suite_def["name"], expectations=suite_def["expectations"]))
    batch = (context.data_sources.add_pandas("s").add_dataframe_asset("d")
             .add_batch_definition_whole_dataframe("w").get_batch(batch_parameters={"dataframe": frame}))
    result = batch.validate(suite, result_format={"result_format": "COMPLETE"})
    out = {"rows": len(frame), "success": bool(result.success)}
else:
    import importlib
    module = next(m for m in ("data", "model", "scoring", "publish", "reporting")
                  if hasattr(importlib.import_module(f"churn.stages.{m}"), stage))
    out = getattr(importlib.import_module(f"churn.stages.{module}"), stage)(common_stages.cfg_for(cfg, args[0]), res, *args)
self_usage, child_usage = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = self_usage.ru_utime + self_usage.ru_stime + child_usage.ru_utime + child_usage.ru_stime
open(out_path, "w").write(json.dumps({"out": out, "peak_rss_mb": self_usage.ru_maxrss / 1024,
                                      "children_peak_rss_mb": child_usage.ru_maxrss / 1024,
                                      "seconds": time.perf_counter() - started, "cpu_seconds": cpu}, default=str))
"""


def _task(stage: str, args: list, work: Path, env: dict, pg_url: str, redis_url: str) -> dict:
    """Run one stage in a fresh interpreter (as an executor would); its output, peak RSS and time."""
    args_path, out_path = work / f"{stage}.args.json", work / f"{stage}.out.json"
    args_path.write_text(json.dumps(args, default=str))
    subprocess.run([sys.executable, "-c", _CHILD, stage, str(args_path), str(out_path), pg_url, redis_url],
                   env=env, cwd=ROOT, check=True, timeout=3600)
    return json.loads(out_path.read_text())


def run_dag(size: int, services, tmp: Path, redis_db: int) -> dict:
    """Generate ``size`` customers and run every task of churn_nightly, each in its own process."""
    import psycopg2
    import redis

    from churn.dev.services import ensure_database

    name = f"dagmem_{size}"
    ensure_database(services.pg_url("postgres"), name)
    pg_url = services.pg_url(name)
    redis_url = services.redis_url_db(redis_db)
    redis.Redis.from_url(services.redis_admin_url(redis_db)).flushdb()  # the platform's user may not flush
    state = tmp / f"state_{size}"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'include'}", "CHURN_STATE_DIR": str(state),
           "CHURN_TRAIN_TPOT": "false", "CHURN_PG_READER_ROLE": "", "CHURN_MAX_ROW_COUNT_CHANGE": "0.9"}
    started = time.monotonic()
    load = ("import sys, psycopg2; from datetime import date; from churn.data.generate import generate, "
            "load_source_tables; conn = psycopg2.connect(sys.argv[1]); "
            f"load_source_tables(conn, generate({size}, date({AS_OF.year}, {AS_OF.month}, {AS_OF.day}), seed=7))")
    subprocess.run([sys.executable, "-c", load, pg_url], env=env, cwd=ROOT, check=True, timeout=3600)
    generated_s = time.monotonic() - started
    work = tmp / f"work_{size}"
    work.mkdir(parents=True, exist_ok=True)
    tasks: dict[str, dict] = {}

    def task(key: str, stage: str, *args):
        result = _task(stage, list(args), work, env, pg_url, redis_url)
        tasks[key] = {k: round(v, 1) for k, v in result.items() if k != "out"}
        logging.info("%s customers: %-22s peak %7.1f MB  %6.1f s", size, key, result["peak_rss_mb"],
                     result["seconds"])
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
    summary = task("summarize", "summarize", run, stages)
    task("report", "report", run, stages, summary)
    naive = _task("naive_validate", [ingested["score"]["path"]], work, env, pg_url, redis_url)
    conn = psycopg2.connect(pg_url)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM churn.scores_current")
        published = cur.fetchone()[0]
    conn.close()
    peak_task = max(tasks, key=lambda k: tasks[k]["peak_rss_mb"])
    return {"customers": size, "generate_seconds": round(generated_s, 1),
            "rows_scored": scored["rows"], "rows_published_postgres": published,
            "rows_published_redis": redis_published["rows"], "train_rows_used": splits.get("rows_used"),
            "tasks": tasks, "max_task_peak_rss_mb": tasks[peak_task]["peak_rss_mb"], "max_task": peak_task,
            "naive_validate": {k: round(v, 1) if isinstance(v, float) else v for k, v in naive.items()},
            "dag_seconds": round(sum(t["seconds"] for t in tasks.values()), 1)}


def main(argv: list[str] | None = None) -> int:
    """Run the DAG at each size and write the JSON record."""
    from churn.dev.services import EmbeddedServices
    from churn.dev.stack import free_port

    parser = argparse.ArgumentParser(prog="python -m bench.dag_memory", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,4000000")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "dag_memory.json")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="churn-dagmem-") as tmp:
        services = EmbeddedServices(Path(tmp) / "services", free_port(), free_port())
        services.start()
        try:
            runs = [run_dag(size, services, Path(tmp), db) for db, size in enumerate(sizes)]
        finally:
            services.stop()
    small, large = runs[0], runs[-1]
    record = {
        "benchmark": "dag_memory", "measured_at": datetime.now(timezone.utc).isoformat(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_1m": os.getloadavg()[0]},
        "runs": runs,
        "max_task_peak_ratio_large_over_small": round(large["max_task_peak_rss_mb"] / small["max_task_peak_rss_mb"], 3),
        "per_task_ratio_large_over_small": {k: round(large["tasks"][k]["peak_rss_mb"] / v["peak_rss_mb"], 3)
                                            for k, v in small["tasks"].items() if k in large["tasks"]},
        "naive_validate_ratio_large_over_small": round(large["naive_validate"]["peak_rss_mb"]
                                                       / small["naive_validate"]["peak_rss_mb"], 3),
        "target": "max task peak RSS at the large size within 1.2x of the small size",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    print(json.dumps({k: v for k, v in record.items() if k != "runs"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
