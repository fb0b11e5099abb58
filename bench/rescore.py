"""Event re-score latency and burst throughput under the real scheduler (LocalExecutor), embedded services.

``python -m bench.rescore`` (``make bench-rescore``): loads a synthetic population, runs ``churn_nightly``
once (logistic baseline, no TPOT: this measures the event path, not training), installs the outbox
triggers, unpauses ``churn_rescore`` and then commits complaints the way a support application would:

* a warm-up event (the first after unpausing also waits for the triggerer to start the watcher);
* single events: one complaint for one customer, ``--singles`` times, one after the other;
* bursts: complaints for 100 and 10,000 distinct customers, each burst in one transaction.

For every customer it measures *event committed -> new score readable in Redis* (polling Redis every
0.2 s with one MGET/HMGET round trip per 2,000 customers) and reports p50/p95/max, the burst's drain
rate, the re-score task's own rate (customers per second of task work), and how the lag splits:
trigger wake-up (commit -> asset event), scheduling (asset event -> run queued -> task started),
and the task's own phases (claim, features, validate, score, write Postgres, write Redis, complete).
Results go to ``bench/results/rescore.json`` with the machine's load.
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
from datetime import date, datetime, timezone
from pathlib import Path

import psycopg2
import redis
from psycopg2.extras import execute_values

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "rescore.json"
STREAM = "churn:events"
AS_OF = date(2026, 11, 20)
log = logging.getLogger("bench.rescore")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))], 3)


def _summary(lags: list[float]) -> dict:
    return {"n": len(lags), "p50_s": _percentile(lags, 0.5), "p95_s": _percentile(lags, 0.95),
            "max_s": round(max(lags), 3)}


def _when(text: str | None) -> float | None:
    return None if not text else datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def complain(pg_url: str, customers: list[str], silent: bool = False) -> float:
    """One transaction of one unresolved complaint per customer; returns the commit's wall-clock time.

    ``silent``: the outbox triggers record nothing (the stream announces the events instead)."""
    conn = psycopg2.connect(pg_url)
    if silent:
        with conn.cursor() as cur:
            cur.execute("SET LOCAL churn.suppress_outbox = 'on'")
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    with conn.cursor() as cur:
        execute_values(cur, "INSERT INTO src.support_contacts (customer_id, contact_ts, kind, resolved) VALUES %s",
                       [(c, now, "complaint", False) for c in customers], page_size=10_000)
    conn.commit()
    committed = time.time()
    conn.close()
    return committed


def _event_at(raw, layout: str) -> float | None:
    """The event time of an event re-score record in the served layout (None: a batch record)."""
    if raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else raw
    if layout == "json":
        record = json.loads(text)
        return _when(record.get("event_at")) if record.get("source") == "event" else None
    fields = text.split("|")
    return _when(fields[6]) if len(fields) == 7 else None  # compact / hash: a 7-field value is an event's


def wait_visible(client, customers: list[str], after: float, timeout: float) -> dict[str, float]:
    """Poll Redis until each customer's record is an event score newer than ``after``; seen time per customer.

    One pipelined round trip per 2,000 customers in the served layout (``churn:meta``): GET for ``json``,
    HGET of the customer's bucket for ``compact`` / ``hash``.
    """
    from churn.publish.redis_keys import record_key, served_meta

    meta = served_meta(client)
    layout = meta.get("layout", "json")
    seen: dict[str, float] = {}
    deadline = time.time() + timeout
    waiting = list(customers)
    while waiting and time.time() < deadline:
        still = []
        for start in range(0, len(waiting), 2000):
            chunk = waiting[start:start + 2000]
            pipe = client.pipeline(transaction=False)
            for cid in chunk:
                command, key = record_key(cid, meta)
                if command == "GET":
                    pipe.get(key)
                else:
                    pipe.hget(key, cid)
            values = pipe.execute()
            now = time.time()
            for cid, raw in zip(chunk, values):
                if (_event_at(raw, layout) or 0) >= after - 1:
                    seen[cid] = now
                else:
                    still.append(cid)
        waiting = still
        if waiting:
            time.sleep(0.2)
    if waiting:
        raise TimeoutError(f"{len(waiting)} of {len(customers)} customers had no event score after {timeout:.0f} s")
    return seen


def runs_since(stack, after: float) -> list[dict]:
    """churn_rescore runs queued after ``after`` with their rescore task's timings and result."""
    from churn.dev.airflow_api import StackError

    runs = []
    for run in stack.dag_runs("churn_rescore"):
        if (_when(run.get("queued_at")) or 0) < after - 1:
            continue
        tis = {t["task_id"]: t for t in stack.task_instances(run["dag_run_id"], dag_id="churn_rescore")}
        ti = tis.get("rescore", {})
        try:
            xcom = stack.xcom(run["dag_run_id"], "rescore", dag_id="churn_rescore") or {}
        except StackError:  # a run without a result (failed): reported without it
            xcom = {}
        runs.append({"run_id": run["dag_run_id"], "state": run["state"], "queued_at": _when(run.get("queued_at")),
                     "task_start": _when(ti.get("start_date")), "task_end": _when(ti.get("end_date")),
                     "result": xcom})
    return sorted(runs, key=lambda r: r["queued_at"] or 0)


def asset_events_since(stack, after: float) -> list[float]:
    """Times of the outbox asset's events (the trigger firing) after ``after``."""
    from churn.dev.airflow_api import http_json

    status, body = http_json(f"{stack.base_url}/api/v2/assets/events?limit=100&order_by=-timestamp", stack.token())
    return sorted(t for t in (_when(e.get("timestamp")) for e in body.get("asset_events", []))
                  if t and t >= after - 1)


def measure(stack, pg_url: str, client, customers: list[str], feed: str = "outbox") -> dict:
    """Commit complaints for ``customers`` in one transaction and follow them to Redis.

    ``feed="stream"``: the complaints are written with the outbox triggers silenced, and one ``XADD`` per
    customer to the re-score stream announces them (what a producer on a queue does); the lag counts from
    the last ``XADD``.
    """
    if feed == "stream":
        complain(pg_url, customers, silent=True)
        pipe = client.pipeline(transaction=False)
        for cid in customers:
            pipe.xadd(STREAM, {"customer_id": cid, "kind": "complaint"})
        pipe.execute()
        committed = time.time()
    else:
        committed = complain(pg_url, customers)
    seen = wait_visible(client, customers, committed, timeout=600)
    lags = [seen[c] - committed for c in customers]
    time.sleep(3)  # let the run finish its bookkeeping before reading its timings
    deadline = time.time() + 120
    runs = runs_since(stack, committed)
    while time.time() < deadline and (not runs or any(r["state"] not in ("success", "failed") for r in runs)):
        time.sleep(1)
        runs = runs_since(stack, committed)
    fired = asset_events_since(stack, committed)
    first = runs[0] if runs else {}
    phases: dict[str, float] = {}
    task_customers = 0
    task_work = 0.0
    for run in runs:
        for key, value in (run["result"].get("seconds") or {}).items():
            phases[key] = round(phases.get(key, 0.0) + value, 3)
        task_customers += run["result"].get("rescored", 0) or 0
        task_work += run["result"].get("stage_seconds", 0.0) or 0.0
    split = {
        "trigger_wakeup_s": round(fired[0] - committed, 3) if fired else None,
        "scheduling_s": round(first["queued_at"] - fired[0], 3) if fired and first.get("queued_at") else None,
        "task_start_s": round(first["task_start"] - first["queued_at"], 3) if first.get("task_start") else None,
        # inside the task but outside the stage: the task process's imports and Airflow's bookkeeping
        "task_overhead_s": round((first["task_end"] - first["task_start"]) - first["result"].get("stage_seconds", 0), 3)
        if first.get("task_end") and first.get("task_start") and first.get("result") else None,
        "task_phases_s": phases,
    }
    return {"customers": len(customers), "lag": _summary(lags),
            "drain_customers_per_s": round(len(customers) / max(max(lags), 1e-9), 1),
            "task_customers_per_s": round(task_customers / max(task_work, 1e-9), 1) if task_work else None,
            "rescore_runs": len(runs), "runs_states": sorted({r["state"] for r in runs}), "lag_split": split}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write its JSON."""
    from churn.data.outbox import DEMO_TABLES, install_triggers
    from churn.dev.services import EmbeddedServices, ensure_database
    from churn.dev.stack import AirflowStack, free_port

    parser = argparse.ArgumentParser(prog="python -m bench.rescore")
    parser.add_argument("--customers", type=int, default=30_000)
    parser.add_argument("--singles", type=int, default=10)
    parser.add_argument("--bursts", default="100,10000")
    parser.add_argument("--feeds", default="outbox,stream", help="outbox (triggers) and/or stream (XADD)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    feeds = [f for f in args.feeds.split(",") if f]
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tmp = Path(tempfile.mkdtemp(prefix="churn-rescore-"))
    services = EmbeddedServices(tmp / "services", free_port(), free_port())
    services.start()
    results: dict = {"machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                                 "load_before": os.getloadavg()},
                     "started": datetime.now(timezone.utc).isoformat(), "population": args.customers,
                     "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                              cwd=Path(__file__).parent).stdout.strip()}
    try:
        from churn.data.generate import generate, load_source_tables

        ensure_database(services.pg_url("postgres"), "rescore")
        ensure_database(services.pg_url("postgres"), "rescore_airflow")
        pg_url = services.pg_url("rescore")
        conn = psycopg2.connect(pg_url)
        load_source_tables(conn, generate(args.customers, AS_OF, seed=5))
        conn.close()
        stack = AirflowStack(
            state_dir=tmp / "state", churn_pg_url=pg_url, redis_url=services.redis_url,
            metadata_url=services.pg_url("rescore_airflow", driver="postgresql+psycopg2"), api_port=free_port(),
            executor="local", dask_scheduler_port=free_port(),
            churn_env={"train_tpot": "false", "schedule_cron": "0 2 29 2 *", "pg_reader_role": "",
                       "rescore_stream": STREAM})
        try:
            stack.start(timeout=300)
            run_id = stack.trigger(f"{AS_OF.isoformat()}T02:00:00Z", {})
            state = stack.wait_run(run_id, timeout=1800)
            if state != "success":
                raise RuntimeError(f"the nightly run ended {state}; see {stack.run_dir}")
            conn = psycopg2.connect(pg_url)
            install_triggers(conn, DEMO_TABLES, "customer_id")
            with conn.cursor() as cur:
                cur.execute("SELECT customer_id FROM churn.scores_current ORDER BY md5(customer_id)")
                population = [r[0] for r in cur.fetchall()]
            conn.close()
            stack.unpause("churn_rescore")
            client = redis.Redis.from_url(services.redis_url)
            used = 0
            # The first event after unpausing also waits for the triggerer to start the watcher: reported apart.
            results["warmup_event"] = measure(stack, pg_url, client, population[used:used + 1], feeds[0])
            used += 1
            log.info("warm-up event: %s", json.dumps(results["warmup_event"]))
            for feed in feeds:
                target = results if feed == "outbox" else results.setdefault(feed, {})
                singles = []
                for _ in range(args.singles):
                    singles.append(measure(stack, pg_url, client, population[used:used + 1], feed))
                    used += 1
                    log.info("%s single event: %s", feed, json.dumps(singles[-1]))
                target["single_events"] = {"lag": _summary([s["lag"]["max_s"] for s in singles]), "each": singles}
                target["bursts"] = []
                for size in (int(s) for s in args.bursts.split(",")):
                    burst = measure(stack, pg_url, client, population[used:used + size], feed)
                    used += size
                    log.info("%s burst of %s: %s", feed, size, json.dumps(burst))
                    target["bursts"].append(burst)
                    args.out.write_text(json.dumps(results, indent=2))
        finally:
            stack.stop()
    finally:
        services.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    results["machine"]["load_after"] = os.getloadavg()
    results["finished"] = datetime.now(timezone.utc).isoformat()
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
