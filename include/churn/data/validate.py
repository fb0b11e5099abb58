"""Great Expectations 1.x validation with row-level quarantine.

The suite is a JSON file kept in the repo (``include/churn/expectations``).
Each expectation's ``meta.level`` says what a failure means:

* ``batch``: the snapshot as a whole is unusable (schema broken, too few rows);
  the run stops before training and publishing, so yesterday's scores stay served.
* ``row``: the offending rows go to ``churn.quarantine`` with the reason and the run
  key; the run continues with the good rows while their share stays under
  ``max_bad_row_fraction``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from churn.db import ensure_schema, to_jsonb

log = logging.getLogger(__name__)

EXPECTATIONS_DIR = Path(__file__).resolve().parents[1] / "expectations"


class ValidationFailed(RuntimeError):
    """The batch failed validation; nothing downstream may train on it or publish from it."""


@dataclass
class ValidationOutcome:
    """What validation decided for one snapshot."""

    dataset: str
    success: bool
    rows_checked: int
    rows_quarantined: int
    clean_path: str
    result_path: str
    batch_failures: list[str] = field(default_factory=list)
    row_failures: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """Plain dict for XCom / the run summary."""
        return dict(self.__dict__)


def load_suite_definition(name: str = "churn_features") -> dict:
    """The suite JSON as a dict (the file is the source of truth, not code)."""
    path = EXPECTATIONS_DIR / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ValidationFailed(f"expectation suite file {path} is missing") from exc


def _gx_validate(frame: pd.DataFrame, suite_def: dict, dataset: str):
    """Run the suite with an ephemeral GX context; returns the GX validation result."""
    import great_expectations as gx  # heavy import: only inside the task

    context = gx.get_context(mode="ephemeral")
    suite = context.suites.add(gx.ExpectationSuite(name=suite_def["name"], expectations=suite_def["expectations"]))
    source = context.data_sources.add_pandas(f"{dataset}_source")
    asset = source.add_dataframe_asset(dataset)
    batch = asset.add_batch_definition_whole_dataframe("whole").get_batch(batch_parameters={"dataframe": frame})
    return batch.validate(suite, result_format={"result_format": "COMPLETE"})


def validate_snapshot(
    conn,
    snapshot_path: str | Path,
    run_key: str,
    dataset: str,
    out_dir: str | Path,
    max_bad_row_fraction: float,
    training: bool,
    suite_name: str = "churn_features",
) -> ValidationOutcome:
    """Validate a Parquet snapshot, quarantine bad rows, write the clean rows next to it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = pd.read_parquet(snapshot_path).reset_index(drop=True)
    suite_def = load_suite_definition(suite_name)
    if not training:
        suite_def = {**suite_def, "expectations": [
            e for e in suite_def["expectations"] if not e.get("meta", {}).get("training_only")
        ]}
    result = _gx_validate(frame, suite_def, dataset)

    batch_failures: list[str] = []
    row_failures: dict[str, int] = {}
    bad_rows: dict[int, list[str]] = {}
    for item in result.results:
        config = item.expectation_config
        level = (config.meta or {}).get("level", "batch")
        label = f"{config.type}({config.kwargs.get('column', '')})"
        if item.success:
            continue
        if level == "batch" or item.result.get("unexpected_index_list") is None:
            batch_failures.append(f"{label}: {_describe(item.result)}")
            continue
        indices = item.result["unexpected_index_list"]
        row_failures[label] = len(indices)
        for index in indices:
            bad_rows.setdefault(int(index), []).append(label)

    result_path = out_dir / f"validation_{dataset}.json"
    result_path.write_text(json.dumps(result.to_json_dict(), default=str))
    bad_fraction = len(bad_rows) / max(len(frame), 1)
    success = not batch_failures and bad_fraction <= max_bad_row_fraction
    _store(conn, run_key, dataset, frame, bad_rows, success, result_path)

    clean_path = out_dir / f"{dataset}_clean.parquet"
    clean = frame.drop(index=list(bad_rows)) if bad_rows else frame
    tmp = clean_path.with_suffix(".tmp")
    clean.to_parquet(tmp, index=False)
    os.replace(tmp, clean_path)
    outcome = ValidationOutcome(
        dataset, success, len(frame), len(bad_rows), str(clean_path), str(result_path), batch_failures, row_failures
    )
    log.info(
        "validated %s: %s rows, %s quarantined (%.2f%%), batch failures: %s",
        dataset, len(frame), len(bad_rows), 100 * bad_fraction, batch_failures or "none",
    )
    if batch_failures:
        raise ValidationFailed(
            f"{dataset} snapshot failed batch checks {batch_failures}; the run stops before training and "
            f"publishing, so the served scores stay as they were. Details: {result_path}"
        )
    if bad_fraction > max_bad_row_fraction:
        raise ValidationFailed(
            f"{dataset}: {len(bad_rows)} of {len(frame)} rows ({bad_fraction:.1%}) failed row checks {row_failures}, "
            f"above CHURN_MAX_BAD_ROW_FRACTION={max_bad_row_fraction}. Inspect churn.quarantine where run_key='{run_key}'."
        )
    return outcome


def _describe(result: dict) -> str:
    keys = ("observed_value", "unexpected_count", "partial_unexpected_list")
    return ", ".join(f"{k}={result[k]}" for k in keys if result.get(k) is not None)[:300] or "failed"


def _store(conn, run_key: str, dataset: str, frame: pd.DataFrame, bad_rows: dict[int, list[str]], success: bool,
           result_path: Path) -> None:
    """Replace this run's stored result and quarantine rows for the dataset (idempotent)."""
    ensure_schema(conn)
    summary = json.loads(result_path.read_text())
    with conn.cursor() as cur:
        cur.execute("DELETE FROM churn.quarantine WHERE run_key = %s AND dataset = %s", (run_key, dataset))
        cur.execute("DELETE FROM churn.validation_results WHERE run_key = %s AND dataset = %s", (run_key, dataset))
        cur.execute(
            "INSERT INTO churn.validation_results (run_key, dataset, success, rows_checked, rows_quarantined, result)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (run_key, dataset, success, len(frame), len(bad_rows), to_jsonb(summary)),
        )
        if bad_rows:
            from psycopg2.extras import execute_values

            bad = frame.loc[sorted(bad_rows)]
            records = bad.astype(object).where(bad.notna(), None).to_dict(orient="records")
            execute_values(
                cur,
                "INSERT INTO churn.quarantine (run_key, dataset, row_number, customer_id, reasons, record) VALUES %s",
                [
                    (run_key, dataset, int(idx), None if rec.get("customer_id") is None else str(rec["customer_id"]),
                     bad_rows[idx], to_jsonb(rec))
                    for idx, rec in zip(sorted(bad_rows), records)
                ],
            )
    conn.commit()
