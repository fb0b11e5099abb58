"""Demo helpers: load the synthetic source tables, print a finished run's summary.

    python -m churn.demo load --as-of 2026-11-20 [--customers 20000]
    python -m churn.demo report --run-key 2026-11-20
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from datetime import date

from churn.config import ChurnConfig


def load(cfg: ChurnConfig, as_of: date, customers: int) -> dict[str, int]:
    """Generate ``customers`` synthetic customers as of ``as_of`` and replace the src.* tables."""
    from churn.connections import Resources, pg_connect
    from churn.data.generate import generate, load_source_tables

    started = time.monotonic()
    tables = generate(customers, as_of, seed=cfg.demo_seed, usage_months=cfg.usage_months)
    generated = time.monotonic() - started
    from churn.data.outbox import install_triggers

    # The source tables are the user's data: the demo loads them as that database's DBA would (the embedded
    # superuser, CHURN_DEMO_SOURCE_URL), then lets the pipeline's role read them; the pipeline never writes them.
    source_url = os.environ.get("CHURN_DEMO_SOURCE_URL")
    conn = pg_connect(source_url) if source_url else Resources.from_airflow(cfg).pg()
    try:
        counts = load_source_tables(conn, tables)
        install_triggers(conn, cfg.rescore_table_names, cfg.rescore_id_column)
    finally:
        conn.close()
    if source_url:
        from churn.dev.services import grant_source_read

        grant_source_read(source_url)
    print(f"generated {customers} customers in {generated:.1f} s and loaded {counts} "
          f"in {time.monotonic() - started - generated:.1f} s")
    return counts


def report(cfg: ChurnConfig, run_key: str) -> dict:
    """Print the summary a finished run stored in its run folder."""
    from churn.report import stage_timings

    path = cfg.runs_dir / run_key / "summary.json"
    if not path.exists():
        raise SystemExit(f"no summary at {path}: did the churn_nightly run for {run_key} finish? "
                         f"See the Airflow log above.")
    summary = json.loads(path.read_text())
    lookup = summary.get("sample_lookup") or {}
    lines = [
        f"run {summary['run_key']} (airflow run {summary['airflow_run_id']})",
        f"  rows ingested:     {summary['rows_ingested']}",
        f"  rows validated:    {summary['rows_validated']} (quarantined {summary['rows_quarantined']})",
        f"  retrained:         {summary['retrained']} ({summary['retrain_reason']})",
        f"  candidates:        {summary['candidates']}",
        f"  gate:              {summary['gate']}",
        f"  champion model:    {summary['champion']} (holdout ROC AUC {summary['champion_test_roc_auc']})",
        f"  published:         {summary['published_postgres']} rows to Postgres (churn.scores_current), "
        f"{summary['published_redis']} to Redis",
        f"  sample from Redis: {lookup.get('command') or lookup.get('customer_id')} -> "
        f"{json.dumps(lookup.get('record'))} in {lookup.get('lookup_ms')} ms",
        f"  export:            {summary['export_path']} ({summary['export_rows']} rows)",
        f"  stage seconds:     {stage_timings(summary)}",
    ]
    print("\n".join(lines))
    return summary


def build_parser() -> argparse.ArgumentParser:
    """The CLI's parser (also read by the docs' CLI reference)."""
    parser = argparse.ArgumentParser(prog="python -m churn.demo")
    sub = parser.add_subparsers(dest="action", required=True)
    load_cmd = sub.add_parser("load")
    load_cmd.add_argument("--as-of", type=date.fromisoformat, required=True)
    load_cmd.add_argument("--customers", type=int, default=None)
    report_cmd = sub.add_parser("report")
    report_cmd.add_argument("--run-key", required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = ChurnConfig.from_env()
    if args.action == "load":
        load(cfg, args.as_of, args.customers or cfg.demo_customers)
    else:
        report(cfg, args.run_key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
