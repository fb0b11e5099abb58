"""File sources: CSV or Parquet exports in a drop folder, read in bounded chunks into a typed snapshot.

Point-in-time for a file: a file has no time dimension of its own, so the file
delivered for a logical date *is* the snapshot of that date. ``CHURN_FILE_PATH``
may contain ``{ds}`` (the run's date, ``YYYY-MM-DD``) so each run reads only its
own delivery and a re-run of the same date reads the same file(s).

Every cell is read as text and converted here, per chunk, so that one bad value
does not sink the whole file: blanks become nulls (the Telco file's
``TotalCharges`` is ``" "`` for new customers), and a value that cannot be parsed
is recorded in the ``_parse_errors`` column; validation quarantines those rows
with that reason. File-level problems (empty file, missing columns, wrong
delimiter, wrong encoding) raise :class:`FileSourceError` saying what to fix.
"""

from __future__ import annotations

import csv
import glob
import io
import logging
import os
from datetime import date
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from churn.config import PROJECT_ROOT
from churn.data.snapshot import Snapshot
from churn.data.spec import PARSE_ERRORS_COLUMN, DatasetSpec
from churn.data.text import FALSE_TEXT, TRUE_TEXT, FileSourceError, missing_mask, plain_numbers, read_head
from churn.data.text import parse_missing  # noqa: F401 - part of the file source's API (callers parse the setting)

log = logging.getLogger(__name__)

def resolve_files(pattern: str, as_of: date) -> list[Path]:
    """Files matching ``pattern`` (``{ds}`` = the run date; relative paths from the project root), sorted."""
    expanded = pattern.replace("{ds}", as_of.isoformat())
    path = Path(expanded).expanduser()
    if not path.is_absolute():
        path = PROJECT_ROOT / path
    matches = sorted(Path(p) for p in glob.glob(str(path)))
    files = [p for p in matches if p.is_file()]
    if not files:
        raise FileSourceError(
            f"no file matches CHURN_FILE_PATH={pattern!r} (resolved to {path}) for {as_of}: has the export been "
            "delivered to the drop folder? Relative paths are taken from the project root."
        )
    return files


def snapshot_schema(spec: DatasetSpec, labelled: bool) -> pa.Schema:
    """Arrow schema of a file snapshot: typed features, the raw label text, and the parse-error column."""
    fields = spec.arrow_fields()
    if labelled:
        fields.append((spec.label_column, pa.string()))  # mapped to 0/1 after validation checked the raw values
    fields.append((PARSE_ERRORS_COLUMN, pa.string()))
    return pa.schema(fields)


def _text(series: pd.Series, missing: frozenset[str] = frozenset()) -> pd.Series:
    """Stripped text with blanks and missing-value markers as nulls."""
    text = series.astype("str").where(series.notna(), None).str.strip()
    return text.where(~missing_mask(text, missing), None)


def _add_error(errors: pd.Series, bad: pd.Series, column: str, raw: pd.Series, kind: str) -> pd.Series:
    if not bad.any():
        return errors
    note = (f"{column}: '" + raw[bad].astype("str").str.slice(0, 40) + f"' is not {kind}").astype(object)
    joined = errors.copy()
    has = joined.notna() & bad
    joined[has] = joined[has] + "; " + note[has]
    joined[bad & ~has] = note[bad & ~has]
    return joined


def coerce_chunk(frame: pd.DataFrame, spec: DatasetSpec, labelled: bool, *, decimal: str = ".",
                 thousands: str = "", dayfirst: bool = False, missing: frozenset[str] = frozenset()
                 ) -> pd.DataFrame:
    """Convert one chunk to the snapshot's types; unparseable cells become null and are noted per row.

    ``decimal`` / ``thousands`` / ``dayfirst`` read numbers and dates the way regional spreadsheet and CRM
    exports write them (``1.234,5`` and ``31.12.2026`` with ``decimal=","``, ``thousands="."``,
    ``dayfirst=True``); a value that does not follow them is still a parse error, never a guess. Cells
    holding one of the ``missing`` markers (``?``, ``NA`` ...) are nulls, not parse errors.
    """
    out = pd.DataFrame(index=frame.index)
    errors = pd.Series([None] * len(frame), index=frame.index, dtype=object)
    out[spec.id_column] = _text(frame[spec.id_column], missing)
    for column in spec.numeric:
        raw = frame[column]
        if pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
            out[column] = raw.astype("float64")
            continue
        text = _text(raw, missing)
        number = pd.to_numeric(plain_numbers(text, decimal, thousands), errors="coerce").astype("float64")
        errors = _add_error(errors, text.notna() & number.isna(), column, text, "a number")
        out[column] = number
    for column in spec.boolean:
        raw = frame[column]
        if pd.api.types.is_bool_dtype(raw):
            out[column] = raw.astype(object)
            continue
        text = _text(raw, missing).str.lower()
        if pd.api.types.is_numeric_dtype(raw):
            text = raw.map(lambda v: None if pd.isna(v) else ("1" if v == 1 else "0" if v == 0 else str(v)))
        value = pd.Series(np.where(text.isin(TRUE_TEXT), True, np.where(text.isin(FALSE_TEXT), False, None)),
                          index=frame.index, dtype=object)
        errors = _add_error(errors, text.notna() & value.isna(), column, raw, "a yes/no value")
        out[column] = value
    for column in spec.categorical:
        out[column] = _text(frame[column], missing)
    if spec.timestamp_column:
        text = _text(frame[spec.timestamp_column], missing)
        stamp = pd.to_datetime(text, errors="coerce", utc=True, format="mixed", dayfirst=dayfirst)
        errors = _add_error(errors, text.notna() & stamp.isna(), spec.timestamp_column, text, "a timestamp")
        out[spec.timestamp_column] = stamp
    if labelled:
        out[spec.label_column] = _text(frame[spec.label_column], missing)
    out[PARSE_ERRORS_COLUMN] = errors
    return out


def _header(path: Path, delimiter: str, encoding: str) -> list[str]:
    """Column names from the first line (a UTF-8 byte-order mark is dropped; any line ending; bounded read)."""
    lines = read_head(path, encoding, 1)
    if not lines:
        return []
    try:
        row = next(csv.reader(io.StringIO(lines[0]), delimiter=delimiter), [])
    except csv.Error as exc:
        raise FileSourceError(f"{path}: the header line cannot be read as CSV with delimiter {delimiter!r} ({exc}); "
                              "check CHURN_FILE_DELIMITER and the export's quoting") from exc
    # A spreadsheet's or pandas' unnamed index column gets a name, so that it can be reported and ignored.
    return [name.strip() or f"unnamed_{i + 1}" for i, name in enumerate(row)]


def _check_columns(path: Path, header: list[str], spec: DatasetSpec, labelled: bool, delimiter: str) -> list[str]:
    """Raise on missing required columns (hinting at the delimiter); return the extra columns to drop."""
    missing = [c for c in spec.required_columns(labelled) if c not in header]
    if missing:
        hint = ""
        if len(header) == 1:
            for candidate in (";", "\t", "|", ","):
                if candidate != delimiter and candidate in header[0]:
                    hint = f" The header looks delimited by {candidate!r}: set CHURN_FILE_DELIMITER={candidate!r}."
                    break
        raise FileSourceError(
            f"{path} lacks required column(s) {missing} (header: {header[:30]}).{hint} Fix the export or the "
            "CHURN_FILE_*_COLUMN(S) settings."
        )
    dupes = sorted({c for c in header if header.count(c) > 1})
    if dupes:
        raise FileSourceError(f"{path} has duplicate column name(s) {dupes}; column names must be unique")
    needed = set(spec.required_columns(labelled))
    return [c for c in header if c not in needed]


def _csv_chunks(path: Path, header: list[str], spec: DatasetSpec, labelled: bool, delimiter: str, encoding: str,
                chunk_rows: int) -> Iterator[pd.DataFrame]:
    """Text chunks of at most ``chunk_rows`` rows of the needed columns."""
    needed = spec.required_columns(labelled)
    # Column names come from our own header parse (skip_rows=1): this also sidesteps a BOM.
    block = max(1 << 16, min(64 << 20, chunk_rows * 256))
    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=header, skip_rows=1, block_size=block, encoding=encoding),
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in header},
                                                 include_columns=needed, strings_can_be_null=False),
        )
        for batch in reader:
            for start in range(0, batch.num_rows, chunk_rows):
                yield batch.slice(start, chunk_rows).to_pandas()
    except pa.ArrowInvalid as exc:
        message = str(exc)
        if "UTF8" in message or "UTF-8" in message:
            raise FileSourceError(f"{path} is not valid UTF-8 ({message}); set CHURN_FILE_ENCODING to the file's "
                                  "encoding, e.g. latin-1 or cp1252") from exc
        raise FileSourceError(f"{path} is not a well-formed CSV with delimiter {delimiter!r}: {message}. Check "
                              "CHURN_FILE_DELIMITER and the quoting of the export") from exc


def _parquet_chunks(path: Path, spec: DatasetSpec, labelled: bool, chunk_rows: int
                    ) -> tuple[list[str], Iterator[pd.DataFrame]]:
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise FileSourceError(f"{path} is not a readable Parquet file ({exc}); is the export complete?") from exc
    header = list(parquet.schema_arrow.names)
    _check_columns(path, header, spec, labelled, ",")
    needed = spec.required_columns(labelled)
    chunks = (b.to_pandas() for b in parquet.iter_batches(batch_size=chunk_rows, columns=needed))
    return header, chunks


def read_file_snapshot(spec: DatasetSpec, files: list[Path], out_path: str | Path, as_of: date, *, labelled: bool,
                       delimiter: str = ",", encoding: str = "utf-8", chunk_rows: int = 100_000, decimal: str = ".",
                       thousands: str = "", dayfirst: bool = False, missing: frozenset[str] = frozenset()
                       ) -> Snapshot:
    """Convert the delivered file(s) into one typed Parquet snapshot, never holding more than ``chunk_rows`` rows.

    CSV (also ``.csv.gz`` / ``.csv.bz2``, decompressed while streaming) or Parquet, by file name.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    schema = snapshot_schema(spec, labelled)
    tmp = out_path.with_suffix(".parquet.tmp")
    rows = 0
    max_chunk = 0
    ignored: set[str] = set()
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for path in files:
                if path.stat().st_size == 0:
                    raise FileSourceError(f"{path} is empty (0 bytes): the export was not written; re-deliver it")
                if path.suffix.lower() in {".parquet", ".pq"}:
                    header, chunks = _parquet_chunks(path, spec, labelled, chunk_rows)
                    extra = [c for c in header if c not in set(spec.required_columns(labelled))]
                else:
                    header = _header(path, delimiter, encoding)
                    extra = _check_columns(path, header, spec, labelled, delimiter)
                    chunks = _csv_chunks(path, header, spec, labelled, delimiter, encoding, chunk_rows)
                ignored.update(c for c in extra if c != spec.label_column)  # the label is expected in every file
                for chunk in chunks:
                    max_chunk = max(max_chunk, len(chunk))
                    typed = coerce_chunk(chunk, spec, labelled, decimal=decimal, thousands=thousands,
                                         dayfirst=dayfirst, missing=missing)
                    writer.write_table(pa.Table.from_pandas(typed, schema=schema, preserve_index=False))
                    rows += len(typed)
        os.replace(tmp, out_path)  # readers never see a half-written snapshot
    finally:
        tmp.unlink(missing_ok=True)
    if ignored:
        log.warning("ignored column(s) %s not in the dataset spec of %s", sorted(ignored), spec.name)
    log.info("file snapshot %s (%s file(s)): %s rows in chunks of <= %s -> %s", as_of, len(files), rows, max_chunk,
             out_path)
    return Snapshot(str(out_path), rows, as_of.isoformat(), labelled, [str(f) for f in files], sorted(ignored),
                    max_chunk)
