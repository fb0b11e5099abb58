"""CSV exports for email-journey tools: configured segments, safe cells, atomic files, a manifest beside each.

An export definition (``ExportSpec``, parsed from ``CHURN_EXPORTS``) says which customers
(risk bands, minimum decile, probability above a cut), which columns (score columns and customer
attributes: ``src.customers`` for the Postgres source, the scored file's own columns for a file source), the file name pattern (with ``{run_date}``) and whether to gzip.
Files are streamed from Postgres in chunks to a temporary name, fsynced, then renamed; the
manifest (row count, byte size, sha256 of the file bytes, model version, run id) is written
the same way after the data file. Re-running a date replaces that date's files.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Iterable, Sequence, TYPE_CHECKING

from churn.config import ConfigError
from churn.fileio import file_sha256
from churn.publish.export_specs import (  # re-exported: this module is the export API
    DEFAULT_COLUMNS, DEFAULT_FILE_PATTERN, FILE_ATTRIBUTES_TABLE, RISK_BANDS, SCORE_COLUMNS,
    SOURCE_ATTRIBUTES_TABLE, ExportRefused, ExportSpec, default_exports, parse_exports,
)

if TYPE_CHECKING:
    from churn.db import PgConnection

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_COLUMNS", "default_exports", "DEFAULT_FILE_PATTERN", "ExportRefused", "ExportSpec",
    "FILE_ATTRIBUTES_TABLE", "parse_exports", "RISK_BANDS", "SCORE_COLUMNS", "SOURCE_ATTRIBUTES_TABLE",
    "ExportFile", "check_published", "export_spec", "export_segment", "write_rows", "write_export",
    "neutralize_cell", "neutralize_frame", "format_cell", "attribute_columns", "load_file_attributes",
    "segment_query",
]

# OWASP "CSV injection": a cell starting with one of these is run as a formula by spreadsheets.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

# Score columns an export may select (name -> SQL over the run's table ``s``).
@dataclass
class ExportFile:
    """A written export and its manifest."""

    path: str
    manifest_path: str
    rows: int
    sha256: str
    name: str = ""
    bytes: int = 0
    columns: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- config


def neutralize_cell(value: object) -> object:
    """Prefix text that a spreadsheet would run as a formula with a single quote."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def format_cell(value: object) -> object:
    """One value as written to the CSV: text neutralized, dates ISO 8601, booleans lower case, NULL empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, str):
        return neutralize_cell(value)
    return value  # numbers stay numbers (a negative number is not a formula)


def neutralize_frame(frame):
    """Apply ``neutralize_cell`` to every text column of a pandas frame (numbers are left as numbers)."""
    import pandas as pd

    out = frame.copy()
    for column in out.columns:
        if pd.api.types.is_string_dtype(out[column]) or out[column].dtype == object:
            out[column] = out[column].map(neutralize_cell)
    return out


# --------------------------------------------------------------------------- atomic files


def _fsync_replace(tmp: Path, final: Path) -> None:
    os.replace(tmp, final)
    # fsync the folder so the rename itself survives a crash
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_rows(chunks: Iterable[Sequence[Sequence[object]]], columns: Sequence[str], out_dir: str | Path,
               file_name: str, *, manifest: dict[str, Any], gzip_output: bool = False) -> ExportFile:
    """Stream row chunks as UTF-8 CSV to a temporary name, fsync, rename; then write the manifest the same way."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / file_name
    tmp = out_dir / f".{file_name}.partial"  # dot-prefixed: never matched by a consumer's *.csv pattern
    rows = 0
    try:
        with open(tmp, "wb") as raw:
            # mtime=0 and no embedded name: same rows give the same gzip bytes and the same checksum
            binary = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if gzip_output else raw
            text = io.TextIOWrapper(binary, encoding="utf-8", newline="", write_through=False)
            writer = csv.writer(text, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")  # RFC 4180
            writer.writerow(columns)
            for chunk in chunks:
                writer.writerows([format_cell(v) for v in row] for row in chunk)
                rows += len(chunk)
            text.flush()
            text.detach()
            if gzip_output:
                binary.close()
            raw.flush()
            os.fsync(raw.fileno())
        # A re-run replaces the data file: its old manifest goes first, so whenever a manifest exists it
        # describes the data file beside it (a consumer waits for the manifest, never reads a mismatch).
        (out_dir / f"{file_name}.manifest.json").unlink(missing_ok=True)
        _fsync_replace(tmp, final)
    finally:
        if tmp.exists():  # a failed write leaves nothing half-written behind, and never under the final name
            tmp.unlink()
    size = final.stat().st_size
    digest = file_sha256(final)  # hashed from disk: the manifest describes exactly the bytes delivered
    manifest_path = final.with_name(final.name + ".manifest.json")
    manifest_tmp = out_dir / f".{manifest_path.name}.partial"
    body = {"file": final.name, "rows": rows, "bytes": size, "sha256": digest, "columns": list(columns),
            "encoding": "utf-8", "gzip": gzip_output, **manifest}
    manifest_tmp.write_text(json.dumps(body, indent=2, default=str) + "\n", encoding="utf-8")
    _fsync_replace(manifest_tmp, manifest_path)
    log.info("export %s: %s rows, %s bytes, sha256 %s", final, rows, size, digest[:12])
    return ExportFile(str(final), str(manifest_path), rows, digest, name=str(manifest.get("export", "")),
                      bytes=size, columns=list(columns))


def write_export(frame, out_dir: str | Path, file_name: str, *, run_id: str, model_version: str,
                 gzip_output: bool = False) -> ExportFile:
    """Write a pandas frame as an export (``.gz`` appended when gzipped); see :func:`write_rows`."""
    values = frame.astype(object).where(frame.notna(), None).itertuples(index=False, name=None)
    return write_rows([list(values)], [str(c) for c in frame.columns], out_dir,
                      file_name + (".gz" if gzip_output else ""),
                      manifest={"model_version": model_version, "run_id": run_id}, gzip_output=gzip_output)


# --------------------------------------------------------------------------- from Postgres


def check_published(conn: PgConnection, run_key: str, table: str, rows: int) -> None:
    """Raise ExportRefused unless validation passed and ``table`` is the complete published batch of the run."""
    with conn.cursor() as cur:
        cur.execute("SELECT dataset FROM churn.validation_results WHERE run_key = %s AND NOT success", (run_key,))
        failed = [r[0] for r in cur.fetchall()]
        if failed:
            raise ExportRefused(f"run {run_key}: validation failed for {failed}; nothing is exported. "
                                "Fix the data (see churn.quarantine) and re-run the date")
        cur.execute("SELECT table_name, rows FROM churn.score_runs WHERE run_key = %s", (run_key,))
        published = cur.fetchone()
    conn.commit()
    if published is None or published[0] != table or int(published[1]) != int(rows):
        raise ExportRefused(
            f"run {run_key}: publish_postgres did not complete (churn.score_runs has {published}, the task "
            f"reported table {table} with {rows} rows); re-run publish_postgres before exporting")


def _table_sql(table: str):
    """``schema.name`` or a bare (temp) table name as a quoted SQL identifier."""
    from psycopg2 import sql

    return sql.Identifier(*table.split(".", 1))


def attribute_columns(conn: PgConnection, table: str = SOURCE_ATTRIBUTES_TABLE) -> list[str]:
    """Columns of the attributes table an export may select; ConfigError when the table does not exist."""
    import psycopg2
    from psycopg2 import sql

    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT * FROM {} LIMIT 0").format(_table_sql(table)))
            names = [d.name for d in cur.description]
    except psycopg2.errors.UndefinedTable as exc:
        conn.rollback()
        raise ConfigError(
            f"CHURN_EXPORTS selects customer attributes, but {table} does not exist in this database; select "
            f"score columns only ({sorted(SCORE_COLUMNS)}) or load the customer table") from exc
    conn.commit()
    return names


def load_file_attributes(conn: PgConnection, snapshot_path: str | Path, id_column: str, columns: Sequence[str],
                         *, batch_rows: int = 50_000) -> str:
    """Load a file source's attribute columns into a session TEMP table keyed by customer id; returns its name.

    The table lives only in this connection's session (invisible to readers, gone when it closes), so a
    re-run starts from nothing. Read in Parquet batches: memory does not grow with the population.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from psycopg2 import sql

    parquet = pq.ParquetFile(snapshot_path)
    available = [name for name in parquet.schema_arrow.names if name != id_column]
    missing = [c for c in columns if c not in available]
    if missing:
        raise ConfigError(f"CHURN_EXPORTS selects {missing}, which are neither score columns {sorted(SCORE_COLUMNS)} "
                          f"nor columns of the scored file {sorted(available)}")
    schema = parquet.schema_arrow
    types = ["boolean" if pa.types.is_boolean(schema.field(c).type)
             else "double precision" if pa.types.is_integer(schema.field(c).type)
             or pa.types.is_floating(schema.field(c).type) else "text" for c in columns]
    with conn.cursor() as cur:
        cur.execute(sql.SQL("DROP TABLE IF EXISTS pg_temp.{}").format(sql.Identifier(FILE_ATTRIBUTES_TABLE)))
        cur.execute(sql.SQL("CREATE TEMP TABLE {} (customer_id text PRIMARY KEY, {})").format(
            sql.Identifier(FILE_ATTRIBUTES_TABLE),
            sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)) for c, t in zip(columns, types))))
        copy = sql.SQL("COPY {} FROM STDIN WITH (FORMAT csv, NULL '\\N')").format(
            sql.Identifier(FILE_ATTRIBUTES_TABLE)).as_string(conn)
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=[id_column, *columns]):
            frame = batch.to_pandas()
            buffer = io.StringIO()
            frame.to_csv(buffer, index=False, header=False, na_rep="\\N")
            buffer.seek(0)
            cur.copy_expert(copy, buffer)
    conn.commit()  # a temp table survives commits; it is dropped when the session ends
    return FILE_ATTRIBUTES_TABLE


def segment_query(spec: ExportSpec, table: str, attributes_table: str = SOURCE_ATTRIBUTES_TABLE,
                  holdouts: Sequence[tuple[str, str]] = (), count_holdouts: bool = False):
    """SQL (psycopg2.sql.Composed) and parameters selecting one export's rows from ``churn.<table>``.

    The attributes table is joined only when the export selects attribute columns. Customers assigned to a
    holdout arm (``holdouts``: ``(experiment id, arm)`` pairs) are left out; ``count_holdouts`` instead
    counts the segment's customers that were left out.
    """
    from psycopg2 import sql

    select = [sql.SQL("{} AS {}").format(sql.SQL(SCORE_COLUMNS[c]), sql.Identifier(c)) if c in SCORE_COLUMNS
              else sql.SQL("c.{}").format(sql.Identifier(c)) for c in spec.columns]
    where: list[sql.Composable] = []
    params: list[Any] = []
    if spec.bands:
        where.append(sql.SQL("s.risk_band = ANY(%s)"))
        params.append(list(spec.bands))
    if spec.min_decile is not None:
        where.append(sql.SQL("s.risk_decile >= %s"))
        params.append(spec.min_decile)
    if spec.probability_above is not None:
        where.append(sql.SQL("s.churn_probability > %s::real"))  # compared at the stored (real) precision
        params.append(spec.probability_above)
    if holdouts:
        held = sql.SQL("EXISTS (SELECT 1 FROM churn.experiment_assignments a WHERE a.customer_id = s.customer_id "
                       "AND (a.experiment_id, a.arm) IN (SELECT * FROM unnest(%s::text[], %s::text[])))")
        where.append(held if count_holdouts else sql.SQL("NOT ") + held)
        params += [[e for e, _ in holdouts], [a for _, a in holdouts]]
    if count_holdouts:
        return sql.SQL("SELECT count(*) FROM churn.{table} s WHERE {where}").format(
            table=sql.Identifier(table), where=sql.SQL(" AND ").join(where) if where else sql.SQL("true")), params
    join = sql.SQL(" JOIN {} c USING (customer_id)").format(_table_sql(attributes_table)) if spec.attributes \
        else sql.SQL("")
    query = sql.SQL(
        "SELECT {cols} FROM churn.{table} s{join} WHERE {where} ORDER BY s.churn_probability DESC, s.customer_id"
    ).format(cols=sql.SQL(", ").join(select), table=sql.Identifier(table), join=join,
             where=sql.SQL(" AND ").join(where))
    return query, params


def export_spec(conn: PgConnection, spec: ExportSpec, table: str, out_dir: str | Path, run_key: str, model_version: str,
                *, airflow_run_id: str = "", chunk_rows: int = 50_000,
                attributes_table: str = SOURCE_ATTRIBUTES_TABLE,
                holdouts: Sequence[tuple[str, str]] = ()) -> ExportFile:
    """Stream one export from the run's table (server-side cursor, ``chunk_rows`` at a time) to its file.

    Customers of experiments' holdout arms (``holdouts``) are never in the file; the manifest counts them
    (``holdout_excluded``).
    """
    if spec.attributes:
        available = set(attribute_columns(conn, attributes_table))
        missing = [c for c in spec.attributes if c not in available]
        if missing:
            raise ConfigError(f"CHURN_EXPORTS ({spec.name}): columns {missing} are neither score columns "
                              f"{sorted(SCORE_COLUMNS)} nor columns of {attributes_table} {sorted(available)}")
    query, params = segment_query(spec, table, attributes_table, holdouts)
    excluded = 0
    if holdouts:
        with conn.cursor() as cur:
            cur.execute(*segment_query(spec, table, attributes_table, holdouts, count_holdouts=True))
            excluded = int(cur.fetchone()[0])

    def chunks():
        with conn.cursor(name=f"export_{spec.name}".replace("-", "_").replace(".", "_")) as cur:
            cur.itersize = chunk_rows
            cur.execute(query, params)
            while True:
                chunk = cur.fetchmany(chunk_rows)
                if not chunk:
                    break
                yield chunk

    try:
        written = write_rows(
            chunks(), spec.columns, out_dir, spec.file_name(run_key), gzip_output=spec.gzip,
            manifest={"export": spec.name, "model_version": model_version, "run_id": run_key, "run_date": run_key,
                      "airflow_run_id": airflow_run_id,
                      "segment": {"band": list(spec.bands) or None, "min_decile": spec.min_decile,
                                  "probability_above": spec.probability_above},
                      "holdout_excluded": excluded,
                      "holdout_arms": [f"{e}/{a}" for e, a in holdouts]},
        )
    finally:
        conn.commit()  # closes the read transaction the named cursor needed
    return written


def export_segment(conn: PgConnection, table: str, band: str, out_dir: str | Path, run_id: str, model_version: str,
                   gzip_output: bool = False) -> ExportFile:
    """Export one risk band of a published run with the default columns (kept for callers of the first version)."""
    spec = ExportSpec(name=f"{band}_risk", bands=(band,), gzip=gzip_output)
    return export_spec(conn, spec, table, out_dir, run_id, model_version)
