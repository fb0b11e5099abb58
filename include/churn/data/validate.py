"""Great Expectations 1.x validation with row-level quarantine.

The suite is a JSON file kept in the repo (``include/churn/expectations``).
Each expectation's ``meta.level`` says what a failure means:

* ``batch``: the snapshot as a whole is unusable (schema broken, too few rows);
  the run stops before training and publishing, so yesterday's scores stay served.
* ``row``: the offending rows go to ``churn.quarantine`` with the reason and the run
  key; the run continues with the good rows while their share stays under
  ``max_bad_row_fraction``.

Two batch checks need figures only known at run time; the suite file declares them
and this module fills in the bounds: ``meta.row_count_vs_previous`` (row count
within ``max_row_count_change`` of the previous successful run of the same suite
and dataset) and ``meta.freshness`` (the newest value of the timestamp column at
most ``max_data_age_days`` old at the run date). Rows a file source could not
parse (``_parse_errors``) and label values outside the configured mapping are
quarantined here too. Every run renders GX Data Docs HTML into ``docs_dir``.

Memory does not grow with the population: the snapshot is validated ``chunk_rows`` rows at a
time with the same GX suite (row-level expectations per chunk, their results added up into one
validation result), the id's uniqueness is checked across chunks (:func:`duplicated_ids`), and
the table-level checks that need the whole batch (row count, a column's min / max) are judged on
figures streamed over all chunks. Clean rows and quarantine rows are written chunk by chunk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import json
import logging
import os
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path

import pandas as pd

from churn.data.gx_chunks import (ChunkValidator, ValidationFailed, jsonable,  # noqa: F401 - validate's API
                                   merge_chunk_result, merged_result, within_bounds)
from churn.data.ids import id_violations
from churn.data.partitions import PartitionedWriter
from churn.data.spec import PARSE_ERRORS_COLUMN, DatasetSpec, synthetic_spec
from churn.data.stream import DEFAULT_CHUNK_ROWS, duplicated_ids, iter_frames
from churn.db import ensure_schema, to_jsonb
from churn.fileio import write_text_atomic

if TYPE_CHECKING:
    from churn.db import PgConnection, PgCursor

log = logging.getLogger(__name__)


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
    data_docs_path: str | None = None
    previous_rows: int | None = None
    suite_version: str | None = None
    """Which suite validated: ``file`` (hand-written), a stored version number, or ``baseline``."""
    proposed_suite: str | None = None
    """Path of the suite proposed from this run's clean rows (first run of a dataset without a suite)."""

    def as_dict(self) -> dict:
        """Plain dict for XCom / the run summary."""
        return dict(self.__dict__)


def load_suite_definition(name: str = "churn_features") -> dict:
    """A hand-written suite file as a dict; ``name`` may also be a .json path. Missing: ValidationFailed."""
    from churn.data.suites import hand_written

    suite = hand_written(name)
    if suite is None:
        raise ValidationFailed(f"expectation suite file for {name!r} is missing: add it (see the existing suites) "
                               "or set CHURN_SUITE")
    return suite


def _previous_rows(conn: PgConnection, run_key: str, dataset: str, suite_name: str) -> int | None:
    """Rows checked by the latest earlier successful run of the same suite and dataset."""
    ensure_schema(conn)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT rows_checked FROM churn.validation_results WHERE dataset = %s AND run_key < %s AND success"
            " AND result->>'suite_name' = %s ORDER BY run_key DESC LIMIT 1",
            (dataset, run_key, suite_name),
        )
        row = cur.fetchone()
    conn.commit()
    return None if row is None else int(row[0])


def resolve_runtime_expectations(suite_def: dict, *, previous_rows: int | None, max_row_count_change: float,
                                 timestamp_column: str | None, as_of: date | None,
                                 max_data_age_days: float) -> dict:
    """Fill the bounds of the suite's run-time checks; drop those that cannot apply (no previous run, no timestamp)."""
    resolved = []
    for exp in suite_def["expectations"]:
        meta = exp.get("meta", {})
        if meta.get("row_count_vs_previous"):
            if previous_rows is None:
                log.info("row-count change check skipped: no earlier successful run of suite %s", suite_def["name"])
                continue
            keep = 1.0 - max_row_count_change
            exp = {**exp, "kwargs": {**exp.get("kwargs", {}), "min_value": int(previous_rows * keep),
                                     "max_value": int(previous_rows / keep) if keep > 0 else None}}
        elif meta.get("freshness"):
            column = exp.get("kwargs", {}).get("column") or timestamp_column
            if not column or as_of is None:
                log.info("freshness check skipped: the dataset has no timestamp column")
                continue
            oldest = datetime.combine(as_of, time.min, tzinfo=timezone.utc) - timedelta(days=max_data_age_days)
            exp = {**exp, "kwargs": {**exp.get("kwargs", {}), "column": column, "min_value": pd.Timestamp(oldest)}}
        resolved.append(exp)
    return {**suite_def, "expectations": resolved}


def render_data_docs(result, docs_dir: str | Path, dataset: str) -> Path:
    """Render one GX validation result as Data Docs HTML (``<docs_dir>/<dataset>.html``) and refresh the index."""
    from great_expectations.render.renderer import ValidationResultsPageRenderer
    from great_expectations.render.view import DefaultJinjaPageView

    docs_dir = Path(docs_dir)
    docs_dir.mkdir(parents=True, exist_ok=True)
    page = DefaultJinjaPageView().render(ValidationResultsPageRenderer().render(result))
    path = write_text_atomic(docs_dir / f"{dataset}.html", page)
    links = "".join(f'<li><a href="{p.name}">{p.stem}</a></li>' for p in sorted(docs_dir.glob("*.html"))
                    if p.name != "index.html")
    (docs_dir / "index.html").write_text(
        f"<html><head><title>Data Docs</title></head><body><h1>Validation results</h1><ul>{links}</ul></body></html>"
    )
    return path


def validate_snapshot(
    conn,
    snapshot_path: str | Path,
    run_key: str,
    dataset: str,
    out_dir: str | Path,
    max_bad_row_fraction: float,
    training: bool,
    suite_name: str | None = None,
    *,
    spec: DatasetSpec | None = None,
    as_of: date | None = None,
    max_row_count_change: float = 0.5,
    max_data_age_days: float = 3.0,
    docs_dir: str | Path | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    population_checks: bool = True,
    render_docs: bool = True,
    partitions: int = 1,
) -> ValidationOutcome:
    """Validate a Parquet snapshot chunk by chunk, quarantine bad rows, write the clean rows (labels as 0/1).

    ``partitions > 1`` writes the clean file in hash partitions (:mod:`churn.data.partitions`): every row
    group holds one partition's rows, so each mapped scoring task reads only its share.

    ``population_checks=False`` (an event re-score's handful of customers) leaves out the suite's row-count
    expectations, which are about the whole population; every column and row check still applies.
    ``render_docs=False`` keeps the JSON result but renders no Data Docs page (the event path's latency).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from great_expectations.core import ExpectationSuiteValidationResult, ExpectationValidationResult

    spec = spec or synthetic_spec()
    suite_name = suite_name or spec.suite
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from churn.data import suites

    suite_version, suite_def = suites.resolve(conn, spec, suite_name, run_key)
    if not training:
        suite_def = {**suite_def, "expectations": [
            e for e in suite_def["expectations"] if not e.get("meta", {}).get("training_only")
        ]}
    if not population_checks:
        suite_def = {**suite_def, "expectations": [
            e for e in suite_def["expectations"] if not e["type"].startswith("expect_table_row_count")]}
    previous = _previous_rows(conn, run_key, dataset, suite_def["name"])
    suite_def = resolve_runtime_expectations(
        suite_def, previous_rows=previous, max_row_count_change=max_row_count_change,
        timestamp_column=spec.timestamp_column, as_of=as_of, max_data_age_days=max_data_age_days,
    )
    validator = ChunkValidator(suite_def, dataset)
    # Uniqueness across chunks: GX sees one chunk at a time, so ids repeated in two chunks are found here.
    unique_checks = [e for e in suite_def["expectations"] if e["type"] == "expect_column_values_to_be_unique"]
    repeated = {e["kwargs"]["column"]: duplicated_ids(snapshot_path, e["kwargs"]["column"], chunk_rows)
                for e in unique_checks}

    batch_failures: list[str] = []
    row_failures: dict[str, int] = {}
    totals: dict[str, dict] = {}
    rows = quarantined = 0
    extremes: dict[str, list] = {}  # column -> [min, max] over every chunk, for the streamed checks
    clean_path = out_dir / f"{dataset}_clean.parquet"
    tmp = clean_path.with_suffix(".tmp")
    writer = None
    ensure_schema(conn)
    try:
        with conn.cursor() as cur:
            cur.execute("DELETE FROM churn.quarantine WHERE run_key = %s AND dataset = %s", (run_key, dataset))
            for frame in iter_frames(snapshot_path, chunk_rows):
                bad_rows: dict[int, list[str]] = {}
                # Cells a file source could not parse: the row is quarantined with the cell's text as the reason.
                if PARSE_ERRORS_COLUMN in frame.columns:
                    parse_errors = frame.pop(PARSE_ERRORS_COLUMN)
                    for index, note in parse_errors.dropna().items():
                        bad_rows.setdefault(int(index), []).append(f"unparseable: {note}")
                    _count(row_failures, "unparseable value", int(parse_errors.notna().sum()))
                # An id no store or export can hold verbatim is quarantined here, never met by a publish.
                if spec.id_column in frame.columns:
                    violations = id_violations(frame[spec.id_column]).dropna()
                    for index, why in violations.items():
                        bad_rows.setdefault(int(index), []).append(f"id contract: {why}")
                    _count(row_failures, "id contract", len(violations))
                # A label that is not 0/1 cannot be trained on: quarantined, never truncated or crashed on.
                if training and not spec.label_values and spec.label_column in frame.columns:
                    numbers = pd.to_numeric(frame[spec.label_column], errors="coerce")
                    unknown = ~numbers.isin([0, 1])
                    for index in frame.index[unknown]:
                        bad_rows.setdefault(int(index), []).append(
                            f"label {spec.label_column}={frame[spec.label_column][index]!r} is not 0 or 1")
                    _count(row_failures, "label not 0/1", int(unknown.sum()))
                # A label the mapping does not know cannot become 0/1: quarantine it even if the suite forgot it.
                if training and spec.label_values and spec.label_column in frame.columns:
                    labels = frame[spec.label_column]
                    unknown = labels.isna() | ~labels.astype("str").isin(list(spec.label_values))
                    for index in frame.index[unknown]:
                        bad_rows.setdefault(int(index), []).append(
                            f"label {spec.label_column}={labels[index]!r} not in CHURN_LABEL_VALUES "
                            f"{list(spec.label_values)}")
                    _count(row_failures, f"label outside {list(spec.label_values)}", int(unknown.sum()))
                for item in validator.validate(frame, first=rows == 0):
                    config = item.expectation_config
                    label = f"{config.type}({config.kwargs.get('column', '')})"
                    merge_chunk_result(totals, item, len(frame))
                    if item.success:
                        continue
                    level = (config.meta or {}).get("level", "batch")
                    if level == "batch" or item.result.get("unexpected_index_list") is None:
                        batch_failures.append(f"{label}: {_describe(item.result)}")
                        continue
                    indices = item.result["unexpected_index_list"]
                    _count(row_failures, label, len(indices))
                    for index in indices:
                        bad_rows.setdefault(int(index), []).append(label)
                for column, dups in repeated.items():
                    if dups and column in frame.columns:
                        hit = frame.index[frame[column].astype("str").isin(dups) & frame[column].notna()]
                        within = {i for i in hit if f"expect_column_values_to_be_unique({column})" in
                                  bad_rows.get(int(i), [])}
                        for index in hit:
                            if int(index) not in within:
                                bad_rows.setdefault(int(index), []).append(
                                    f"expect_column_values_to_be_unique({column})")
                        _count(row_failures, f"expect_column_values_to_be_unique({column})", len(hit) - len(within))
                for exp in validator.streamed:
                    column = exp.configuration.kwargs.get("column")
                    if column and column in frame.columns and frame[column].notna().any():
                        low, high = frame[column].min(), frame[column].max()
                        seen = extremes.setdefault(column, [low, high])
                        seen[0], seen[1] = min(seen[0], low), max(seen[1], high)
                # A null id has no partition and no key: quarantined even by a suite without the not-null check.
                if spec.id_column in frame.columns:
                    unflagged = [int(i) for i in frame.index[frame[spec.id_column].isna()] if int(i) not in bad_rows]
                    for index in unflagged:
                        bad_rows[index] = ["id contract: id is missing"]
                    if unflagged:
                        _count(row_failures, "id contract", len(unflagged))
                rows += len(frame)
                quarantined += len(bad_rows)
                _quarantine(cur, run_key, dataset, frame, bad_rows, spec.id_column)
                clean = _normalize(frame.drop(index=list(bad_rows)) if bad_rows else frame, spec, training)
                table = pa.Table.from_pandas(clean, preserve_index=False,
                                             schema=writer.schema if writer is not None else None)
                if writer is None:
                    writer = PartitionedWriter(pq.ParquetWriter(tmp, table.schema), spec.id_column, partitions)
                writer.write(table)
            if writer is None:  # an empty snapshot still gets an (empty) clean file with its columns
                empty = _normalize(pq.ParquetFile(snapshot_path).schema_arrow.empty_table().to_pandas()
                                   .drop(columns=[PARSE_ERRORS_COLUMN], errors="ignore"), spec, training)
                writer = PartitionedWriter(pq.ParquetWriter(tmp, pa.Table.from_pandas(
                    empty, preserve_index=False).schema), spec.id_column, partitions)
            writer.close()
            writer = None
            # Table-level checks on the whole batch, judged on the streamed figures.
            streamed = []
            for exp in validator.streamed:
                kwargs = exp.configuration.kwargs
                if exp.expectation_type.startswith("expect_table_row_count"):
                    observed = rows
                else:
                    pair = extremes.get(kwargs.get("column"))
                    observed = None if pair is None else pair[1 if "max" in exp.expectation_type else 0]
                success = within_bounds(observed, kwargs)
                streamed.append(validator.streamed_result(exp, jsonable(observed), success))
                if not success:
                    batch_failures.append(f"{exp.expectation_type}({kwargs.get('column', '')}): observed_value="
                                          f"{jsonable(observed)}")
            results = streamed + [merged_result(ExpectationValidationResult, entry, repeated)
                                  for entry in totals.values()]
            evaluated = len(results)
            succeeded = sum(1 for r in results if r.success)
            result = ExpectationSuiteValidationResult(
                success=not batch_failures and not row_failures, results=results, suite_name=suite_def["name"],
                statistics={"evaluated_expectations": evaluated, "successful_expectations": succeeded,
                            "unsuccessful_expectations": evaluated - succeeded,
                            "success_percent": 100.0 * succeeded / max(evaluated, 1)},
                meta={**(validator.template.meta if validator.template is not None else {}),
                      "rows": rows, "chunk_rows": chunk_rows},
            )
            result_path = out_dir / f"validation_{dataset}.json"
            result_path.write_text(json.dumps(result.to_json_dict(), default=str))
            docs_path = render_data_docs(result, docs_dir or out_dir / "data_docs", dataset) if render_docs else None
            bad_fraction = quarantined / max(rows, 1)
            success = not batch_failures and bad_fraction <= max_bad_row_fraction
            cur.execute("DELETE FROM churn.validation_results WHERE run_key = %s AND dataset = %s",
                        (run_key, dataset))
            cur.execute(
                "INSERT INTO churn.validation_results (run_key, dataset, success, rows_checked, rows_quarantined, "
                "result, suite_version) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (run_key, dataset, success, rows, quarantined, to_jsonb(json.loads(result_path.read_text())),
                 suite_version),
            )
        conn.commit()  # the run's quarantine and result appear together
        os.replace(tmp, clean_path)
    except BaseException:
        conn.rollback()
        raise
    finally:
        if writer is not None:
            writer.writer.close()
        tmp.unlink(missing_ok=True)
    proposed = None
    if success and training and suite_version == "baseline":
        # A dataset without a suite: its first good training snapshot proposes one, active from the next run.
        proposal = suites.propose_suite(clean_path, spec, seed=0)
        proposal["name"] = suite_def["name"]
        proposal["meta"]["auto_from_run"] = run_key
        proposed = write_text_atomic(out_dir / suites.PROPOSAL_FILE.format(name=suite_def["name"]),
                                     json.dumps(proposal, indent=2, default=str))
        version = suites.auto_proposal(conn, suite_def["name"], run_key) or suites.store(conn, proposal, run_key)
        log.warning("no suite %s existed: proposed version %s from this run's %s clean rows (%s); later runs "
                    "enforce it; review it with 'python -m churn.data.suites show %s'", suite_def["name"], version,
                    rows - quarantined, proposed, suite_def["name"])
    outcome = ValidationOutcome(
        dataset, success, rows, quarantined, str(clean_path), str(result_path), batch_failures, row_failures,
        str(docs_path) if docs_path else None, previous, suite_version, str(proposed) if proposed else None,
    )
    log.info(
        "validated %s: %s rows in chunks of %s, %s quarantined (%.2f%%), batch failures: %s, data docs: %s",
        dataset, rows, chunk_rows, quarantined, 100 * bad_fraction, batch_failures or "none", docs_path,
    )
    if batch_failures:
        raise ValidationFailed(
            f"{dataset} snapshot failed batch checks {batch_failures}; the run stops before training and "
            f"publishing, so the served scores stay as they were. Details: {result_path}, Data Docs: {docs_path}"
        )
    if bad_fraction > max_bad_row_fraction:
        raise ValidationFailed(
            f"{dataset}: {quarantined} of {rows} rows ({bad_fraction:.1%}) failed row checks {row_failures}, "
            f"above CHURN_MAX_BAD_ROW_FRACTION={max_bad_row_fraction}. Inspect churn.quarantine where run_key='{run_key}'."
        )
    return outcome


def _count(counts: dict[str, int], label: str, n: int) -> None:
    if n:
        counts[label] = counts.get(label, 0) + n


def _normalize(clean: pd.DataFrame, spec: DatasetSpec, training: bool) -> pd.DataFrame:
    """Clean rows in model-ready types: label as 0/1, yes/no columns with gaps as floats (the imputer fills them)."""
    clean = clean.copy()
    if training and spec.label_column in clean.columns and not pd.api.types.is_integer_dtype(clean[spec.label_column]):
        if spec.label_values:
            clean[spec.label_column] = clean[spec.label_column].astype("str").map(spec.label_values).astype("int8")
        else:
            clean[spec.label_column] = pd.to_numeric(clean[spec.label_column]).astype("int8")
    for column in spec.boolean:
        if column in clean.columns and not pd.api.types.is_bool_dtype(clean[column]):
            clean[column] = clean[column].astype("float64")
    return clean


def _describe(result: dict) -> str:
    keys = ("observed_value", "unexpected_count", "partial_unexpected_list")
    return ", ".join(f"{k}={result[k]}" for k in keys if result.get(k) is not None)[:300] or "failed"


def _quarantine(cur: PgCursor, run_key: str, dataset: str, frame: pd.DataFrame, bad_rows: dict[int, list[str]],
                id_column: str = "customer_id") -> None:
    """Insert one chunk's bad rows (row number, id, reasons, the whole record) into churn.quarantine."""
    if not bad_rows:
        return
    from psycopg2.extras import execute_values

    order = sorted(bad_rows)
    bad = frame.loc[order]
    records = bad.astype(object).where(bad.notna(), None).to_dict(orient="records")
    execute_values(
        cur,
        "INSERT INTO churn.quarantine (run_key, dataset, row_number, customer_id, reasons, record) VALUES %s",
        [(run_key, dataset, int(idx), None if rec.get(id_column) is None else str(rec[id_column]), bad_rows[idx],
          to_jsonb(rec)) for idx, rec in zip(order, records)],
    )
