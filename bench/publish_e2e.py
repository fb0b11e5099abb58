"""End-to-end precompute benchmark: source tables -> features -> inference -> publish to Postgres and Redis.

Each step that is measured runs in its own process (``python -m bench.publish_e2e precompute ...``) so
its peak RSS is the precompute's alone, not the generator's or the benchmark driver's.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import psycopg2

AS_OF = date(2026, 11, 20)
log = logging.getLogger(__name__)


def create_database(admin_url: str, name: str) -> None:
    """(Re)create an empty database on the benchmark server."""
    admin = psycopg2.connect(admin_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        cur.execute(f"CREATE DATABASE {name}")
    admin.close()


def load_source(pg_url: str, customers: int, seed: int) -> dict:
    """Generate the synthetic population and COPY it into src.* (not timed as part of the precompute)."""
    from churn.data.generate import generate, load_source_tables

    t0 = time.perf_counter()
    tables = generate(customers, AS_OF, seed=seed)
    conn = psycopg2.connect(pg_url)
    counts = load_source_tables(conn, tables)
    conn.close()
    return {"customers": customers, "rows": counts, "seconds": round(time.perf_counter() - t0, 1)}


def train_model(pg_url: str, workdir: Path) -> str:
    """A logistic baseline trained on a small population: the model does not depend on the scored size."""
    import joblib
    import pandas as pd

    from churn.data.ingest import (BOOLEAN_FEATURES, CATEGORICAL_FEATURES, ID_COLUMN, LABEL_COLUMN,
                                   NUMERIC_FEATURES, extract_snapshot)
    from churn.model.features import ModelSignature
    from churn.model.train import fit_baseline

    conn = psycopg2.connect(pg_url)
    snap = extract_snapshot(conn, AS_OF - timedelta(days=30), workdir / "train.parquet", 30)
    conn.close()
    frame = pd.read_parquet(snap.path)
    signature = ModelSignature.infer(frame, ID_COLUMN, LABEL_COLUMN, NUMERIC_FEATURES, BOOLEAN_FEATURES,
                                     CATEGORICAL_FEATURES)
    valid = frame.sample(frac=0.2, random_state=1)
    cand = fit_baseline(frame.drop(valid.index), valid, signature, 42)
    path = workdir / "model.joblib"
    joblib.dump({"model": cand.pipeline, "signature": signature.as_dict()}, path)
    return str(path)


def precompute(pg_url: str, redis_url: str, model_path: str, workdir: Path, layout: str, buckets: int) -> dict:
    """The measured job: features from src.*, chunked scoring, publish to both stores (as the pipeline does).

    Module imports and the model load are timed apart (``startup_seconds``): a fresh process here
    compiles pandas/scikit-learn from source when PYTHONDONTWRITEBYTECODE is set, which a long-lived
    Airflow worker does not pay per run.
    """
    boot = time.perf_counter()
    import joblib
    import redis

    from churn.data.ingest import extract_snapshot
    from churn.model.features import ModelSignature
    from churn.model.score import score_snapshot
    from churn.publish import postgres as pgpub
    from churn.publish import redis_store as rs

    payload = joblib.load(model_path)
    model, signature = payload["model"], ModelSignature.from_dict(payload["signature"])
    startup = time.perf_counter() - boot
    started = time.perf_counter()
    conn = psycopg2.connect(pg_url)
    t0 = time.perf_counter()
    snap = extract_snapshot(conn, AS_OF, workdir / "score_raw.parquet")
    extract_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    scored = score_snapshot(model, signature, snap.path, workdir / "scores.parquet", model_version="bench-logreg",
                            run_id=AS_OF.isoformat(), scored_at=datetime.now(timezone.utc), band_cuts=(0.3, 0.6))
    score_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pg = pgpub.publish_scores(conn, scored.path, AS_OF.isoformat(), "bench-logreg")
    pg_s = time.perf_counter() - t0
    client = redis.Redis.from_url(redis_url, socket_timeout=600)
    t0 = time.perf_counter()
    red = rs.publish_scores(client, scored.path, AS_OF.isoformat(), "bench-logreg",
                            lambda sources: pgpub.stale_customers(conn, sources, pg.table), layout=layout,
                            buckets=buckets)
    redis_s = time.perf_counter() - t0
    conn.close()
    wall = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    millions = scored.rows / 1e6
    return {
        "customers_scored": scored.rows, "redis_layout": layout, "startup_seconds": round(startup, 2),
        "wall_seconds": round(wall, 2), "inference_seconds": round(scored.inference_seconds, 2),
        "non_inference_seconds": round(wall - scored.inference_seconds, 2),
        "non_inference_seconds_per_million_scored": round((wall - scored.inference_seconds) / millions, 2),
        "steps_seconds": {"features_extract": round(extract_s, 2),
                          "score_non_inference": round(score_s - scored.inference_seconds, 2),
                          "publish_postgres": round(pg_s, 2), "publish_redis": round(redis_s, 2),
                          "other": round(wall - extract_s - score_s - pg_s - redis_s, 2)},
        "rows": {"postgres": pg.rows, "redis": red.rows},
        "peak_rss_mb": round(peak_kb / 1024, 1),
    }


def run_size(admin_url: str, pg_url_for, redis_url: str, customers: int, model_path: str, workdir: Path,
             layout: str, buckets: int) -> dict:
    """Load the source for one population size, then run the measured precompute in a fresh process."""
    db = f"e2e_{customers}"
    create_database(admin_url, db)
    url = pg_url_for(db)
    source = _in_process(["load", "--pg-url", url, "--customers", str(customers)])
    import redis

    redis.Redis.from_url(redis_url, socket_timeout=600).flushdb()
    size_dir = workdir / db
    size_dir.mkdir(parents=True, exist_ok=True)
    result = _in_process(["precompute", "--pg-url", url, "--redis-url", redis_url, "--model", model_path,
                          "--workdir", str(size_dir), "--layout", layout, "--buckets", str(buckets)])
    result["source_load"] = source
    result["non_inference_seconds_per_million_source_customers"] = round(
        result["non_inference_seconds"] / (customers / 1e6), 2)
    create_database(admin_url, db)  # give the disk back
    return result


def _in_process(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bench.publish_e2e", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"bench.publish_e2e {args[0]} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """CLI for the child processes."""
    parser = argparse.ArgumentParser(prog="python -m bench.publish_e2e")
    parser.add_argument("action", choices=["load", "precompute"])
    parser.add_argument("--pg-url", required=True)
    parser.add_argument("--redis-url")
    parser.add_argument("--customers", type=int)
    parser.add_argument("--model")
    parser.add_argument("--workdir")
    parser.add_argument("--layout", default="json")
    parser.add_argument("--buckets", type=int, default=65_536)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    if args.action == "load":
        out = load_source(args.pg_url, args.customers, seed=7)
    else:
        out = precompute(args.pg_url, args.redis_url, args.model, Path(args.workdir), args.layout, args.buckets)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
