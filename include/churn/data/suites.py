"""Expectation suites for datasets nobody wrote one for: proposed from data, versioned, enforced, reviewed.

Which suite validates a dataset (``DatasetSpec.suite``, e.g. ``CHURN_SUITE``):

1. a hand-written file ``include/churn/expectations/<name>.json`` always wins (version ``file``);
2. else the latest *active* version in ``churn.suites`` (a proposal accepted automatically on the first
   run, or by ``accept``);
3. else the **baseline** (version ``baseline``): the spec's columns, the id present and unique, the
   label's values. The first run that passes it proposes a suite from its clean training rows and
   stores it as version 1, active: later runs enforce it.

A proposal (:func:`propose_suite`) holds, per column: the type checks of its kind; not-null when no
value was missing; the set of values for booleans and categoricals (at most ``max_values`` distinct);
for numerics the observed range widened by ``RANGE_MARGIN`` of its width on each side (and never
below 0 when no value was negative); the id not null and unique; the label's values. Every
expectation is row-level, so a new value is quarantined, not fatal. Each validation result records
the suite version it used.

CLI (``python -m churn.data.suites``): ``list``, ``show NAME [--version N]``, ``diff NAME RUN_KEY`` (the
run's clean training data against the active version: new columns, new values, ranges exceeded) and
``accept NAME RUN_KEY`` (a proposal from that run becomes the next active version).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TYPE_CHECKING

import pandas as pd

from churn.data.spec import DatasetSpec
from churn.data.stream import sample_frame
from churn.db import ensure_schema, to_jsonb

if TYPE_CHECKING:
    from churn.db import PgConnection

EXPECTATIONS_DIR = Path(__file__).resolve().parents[1] / "expectations"
RANGE_MARGIN = 0.1  # numeric ranges widen by 10 % of the observed width on each side
PROPOSAL_FILE = "proposed_suite_{name}.json"


def _row(kind: str, column: str, **kwargs: Any) -> dict:
    return {"type": kind, "kwargs": {"column": column, **kwargs}, "meta": {"level": "row"}}


def _id_checks(spec: DatasetSpec) -> list[dict]:
    """At least one row; the id present and unique."""
    return [
        {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1}, "meta": {"level": "batch"}},
        _row("expect_column_values_to_not_be_null", spec.id_column),
        _row("expect_column_values_to_be_unique", spec.id_column),
    ]


def _label_check(spec: DatasetSpec, values: list) -> dict:
    """The label's values, checked on training snapshots only."""
    return {**_row("expect_column_values_to_be_in_set", spec.label_column, value_set=values),
            "meta": {"level": "row", "training_only": True}}


def baseline_suite(spec: DatasetSpec) -> dict:
    """What holds for any dataset: at least one row, the id present and unique, the label's values (training)."""
    expectations = _id_checks(spec)
    if spec.label_values:
        expectations.append(_label_check(spec, sorted(spec.label_values)))
    return {"name": spec.suite, "expectations": expectations, "meta": {"version": "baseline"}}


def propose_suite(clean_path: str | Path, spec: DatasetSpec, *, sample_rows: int = 200_000, max_values: int = 50,
                  seed: int = 0) -> dict:
    """A suite for ``spec.suite`` from a clean training snapshot (an id-hash sample of ``sample_rows``)."""
    frame, total = sample_frame(clean_path, sample_rows, spec.id_column, seed)
    expectations = _id_checks(spec)
    for column in spec.numeric:
        values = pd.to_numeric(frame[column], errors="coerce")
        if values.notna().all():
            expectations.append(_row("expect_column_values_to_not_be_null", column))
        if values.notna().any():
            low, high = float(values.min()), float(values.max())
            pad = RANGE_MARGIN * (high - low)
            floor = low - pad if low < 0 else max(low - pad, 0.0)
            expectations.append(_row("expect_column_values_to_be_between", column, min_value=round(floor, 6),
                                     max_value=round(high + pad, 6)))
    for column in [*spec.boolean, *spec.categorical]:
        values = frame[column]
        if values.notna().all():
            expectations.append(_row("expect_column_values_to_not_be_null", column))
        present = values.dropna()
        distinct = sorted({(bool(v) if column in spec.boolean else str(v)) for v in present}, key=str)
        if 0 < len(distinct) <= max_values:
            expectations.append(_row("expect_column_values_to_be_in_set", column, value_set=distinct))
    # Validation sees the raw snapshot: a mapped label is checked against its raw values, a 0/1 label as is.
    label = frame[spec.label_column].dropna() if spec.label_column in frame.columns else pd.Series(dtype=object)
    labels = sorted(spec.label_values) if spec.label_values else sorted({int(v) for v in label})
    if labels:
        expectations.append(_label_check(spec, labels))
    return {"name": spec.suite, "expectations": expectations,
            "meta": {"proposed_from": str(clean_path), "rows": int(total), "sample_rows": int(len(frame)),
                     "range_margin": RANGE_MARGIN}}


def hand_written(name: str) -> dict | None:
    """The suite file ``expectations/<name>.json`` (or a .json path), if there is one."""
    path = Path(name) if name.endswith(".json") else EXPECTATIONS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def active_suite(conn: PgConnection, name: str, run_key: str | None = None) -> tuple[int, dict] | None:
    """(version, suite) of the latest active version of ``name`` in churn.suites.

    With ``run_key``, a version that run proposed itself is skipped: a proposal applies from the *next* run
    (the run that proposed it is validated against the baseline, also when it is re-run).
    """
    ensure_schema(conn)
    with conn.cursor() as cur:
        cur.execute("SELECT version, suite FROM churn.suites WHERE name = %s AND status = 'active' "
                    "AND (%s::text IS NULL OR coalesce(suite->'meta'->>'auto_from_run', '') <> %s) "
                    "ORDER BY version DESC LIMIT 1", (name, run_key, run_key or ""))
        row = cur.fetchone()
    conn.commit()
    return (row[0], row[1]) if row else None


def auto_proposal(conn: PgConnection, name: str, run_key: str) -> int | None:
    """The version a run already proposed for ``name`` (a re-run stores no second copy), or None."""
    ensure_schema(conn)
    with conn.cursor() as cur:
        cur.execute("SELECT max(version) FROM churn.suites WHERE name = %s AND suite->'meta'->>'auto_from_run' = %s",
                    (name, run_key))
        row = cur.fetchone()
    conn.commit()
    return row[0]


def store(conn: PgConnection, suite: dict, run_key: str) -> int:
    """Store ``suite`` as the next version of its name, active; returns the version."""
    ensure_schema(conn)
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(7413)")
        cur.execute("SELECT coalesce(max(version), 0) + 1 FROM churn.suites WHERE name = %s", (suite["name"],))
        version = cur.fetchone()[0]
        cur.execute("INSERT INTO churn.suites (name, version, status, suite, run_key) VALUES (%s, %s, 'active', %s, %s)",
                    (suite["name"], version, to_jsonb(suite), run_key))
    conn.commit()
    return version


def resolve(conn: PgConnection, spec: DatasetSpec, suite_name: str | None = None, run_key: str | None = None) -> tuple[str, dict]:
    """(version, suite) that validates ``spec``: the file, else the active stored version, else the baseline."""
    name = suite_name or spec.suite
    written = hand_written(name)
    if written is not None:
        return "file", written
    stored = active_suite(conn, name, run_key)
    if stored is not None:
        return str(stored[0]), stored[1]
    return "baseline", {**baseline_suite(spec), "name": name}


def diff(active: dict, proposal: dict) -> list[str]:
    """What a proposal from new data changes against the active suite (one line per change)."""
    def index(suite: dict) -> dict:
        return {(e["type"], e["kwargs"].get("column")): e["kwargs"] for e in suite["expectations"]}

    old, new = index(active), index(proposal)
    lines = []
    for key in sorted(set(old) | set(new), key=str):
        kind, column = key
        if key not in old:
            lines.append(f"+ {kind}({column}) {json.dumps(new[key], default=str)}")
        elif key not in new:
            lines.append(f"- {kind}({column})")
        elif old[key] != new[key]:
            if kind == "expect_column_values_to_be_in_set":
                added = sorted(set(map(str, new[key]["value_set"])) - set(map(str, old[key]["value_set"])))
                lines.append(f"~ {kind}({column}): new values {added}")
            else:
                lines.append(f"~ {kind}({column}): {json.dumps(old[key], default=str)} -> "
                             f"{json.dumps(new[key], default=str)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """CLI: list / show / diff / accept suites in churn.suites."""
    from churn.config import ChurnConfig
    from churn.connections import Resources
    from churn.data.spec import load_run_spec

    parser = argparse.ArgumentParser(prog="python -m churn.data.suites", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="every stored suite version")
    show = sub.add_parser("show", help="a suite as JSON (the active version unless --version)")
    show.add_argument("name")
    show.add_argument("--version", type=int)
    for action in ("diff", "accept"):
        cmd = sub.add_parser(action, help=f"{action} a proposal from a run's clean training data")
        cmd.add_argument("name")
        cmd.add_argument("run_key")
    args = parser.parse_args(argv)
    cfg = ChurnConfig.from_env()
    conn = Resources.from_airflow(cfg).pg()
    try:
        if args.action == "list":
            ensure_schema(conn)
            with conn.cursor() as cur:
                cur.execute("SELECT name, version, status, run_key, created_at, jsonb_array_length(suite->'expectations')"
                            " FROM churn.suites ORDER BY name, version")
                print("name\tversion\tstatus\trun\tcreated_at\texpectations")
                for row in cur.fetchall():
                    print("\t".join(map(str, row)))
            return 0
        if args.action == "show":
            found = active_suite(conn, args.name) if args.version is None else None
            if args.version is not None:
                with conn.cursor() as cur:
                    cur.execute("SELECT version, suite FROM churn.suites WHERE name = %s AND version = %s",
                                (args.name, args.version))
                    found = cur.fetchone()
            if not found:
                print(f"error: no stored suite {args.name!r}" + (f" version {args.version}" if args.version else ""),
                      file=sys.stderr)
                return 2
            print(json.dumps({"version": found[0], **found[1]}, indent=2, default=str))
            return 0
        run_dir = cfg.runs_dir / args.run_key
        clean = run_dir / "train_clean.parquet"
        if not clean.exists():
            print(f"error: {clean} is missing: the run has not passed validation", file=sys.stderr)
            return 2
        proposal = propose_suite(clean, load_run_spec(run_dir), seed=cfg.random_state)
        proposal["name"] = args.name
        if args.action == "diff":
            current = active_suite(conn, args.name)
            for line in diff(current[1] if current else {"expectations": []}, proposal) or ["no change"]:
                print(line)
            return 0
        version = store(conn, proposal, args.run_key)
        print(f"suite {args.name} version {version} is active (from run {args.run_key})")
        return 0
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
