"""Column kinds inferred from the first rows of a delivered file, when only the id and the label are configured.

Rules, applied to each column other than the id, the label and the configured timestamp column, on
the first ``sample_rows`` rows (every cell as stripped text; blanks and the missing-value markers of
``CHURN_FILE_MISSING_VALUES`` -- ``? NA N/A - null NaN #N/A`` by default -- count as missing):

1. every value missing -> ignored (``empty``);
2. at least ``DIRTY_SHARE`` (99 %) of the present values are yes/no words or 0/1 (``yes no y n true false
   t f 1 0``, any case), the rest not numbers -> **boolean**;
3. at least 99 % of the present values are numbers (with the configured decimal mark and thousands
   separator) -> **numeric**, except integers that are all distinct: strictly increasing ones are a
   ``row number``, others ``id-like`` when the column is named like an id or the sample has at least
   1,000 rows (both ignored). The few cells that are not numbers are quarantined at ingest with the reason;
4. every value is a date or date-time (``2026-11-20``, ``20.11.2026``, ``11/20/2026 08:30`` ...) ->
   ignored (``timestamp``; name it in ``CHURN_TIMESTAMP_COLUMN`` to enable the freshness check);
5. text with at most ``max_categories`` distinct values -> **categorical**;
6. other text -> ignored: ``id-like`` when more than half of the values are distinct (names, e-mails,
   free text), else ``high cardinality``.

The label's mapping to 0/1 is inferred too when ``CHURN_LABEL_VALUES`` is empty
(:func:`infer_label_values`), and a CSV's delimiter and decimal mark are detected when they are not
set (:func:`detect_csv_format`). Configured lists always win: kind inference runs only when
``CHURN_NUMERIC_COLUMNS``, ``CHURN_BOOLEAN_COLUMNS`` and ``CHURN_CATEGORICAL_COLUMNS``
are all empty. The result is written into the run's dataset spec (``inference``) and logged with the
settings that pin it.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from churn.data.text import (FALSE_TEXT, TRUE_TEXT, FileSourceError, missing_mask, plain_numbers, read_head,
                             text_codec)

log = logging.getLogger(__name__)

_DATE = re.compile(r"^\d{4}-\d{1,2}-\d{1,2}([ T].*)?$|^\d{1,2}[./-]\d{1,2}[./-]\d{2,4}([ T].*)?$")
DIRTY_SHARE = 0.99  # a column is numeric (boolean) when this share of its present cells are numbers (yes/no)
ID_NAME = re.compile(r"(^|[^a-z])(id|key|number|num|no|code|uuid|guid)$|id$", re.IGNORECASE)
ID_MIN_ROWS = 1_000  # all-distinct integers in a sample this large are an id whatever the column's name
DELIMITERS = (",", ";", "\t", "|")


def read_sample(path: Path, sample_rows: int, *, delimiter: str = ",", encoding: str = "utf-8") -> pd.DataFrame:
    """The first ``sample_rows`` rows of a CSV (also .gz/.bz2) or Parquet file, every cell as text."""
    if path.suffix.lower() in {".parquet", ".pq"}:
        import pyarrow.parquet as pq

        batch = next(pq.ParquetFile(path).iter_batches(batch_size=sample_rows), None)
        frame = batch.to_pandas() if batch is not None else pd.DataFrame()
        return frame.astype("str").where(frame.notna(), "")
    try:
        return pd.read_csv(path, sep=delimiter, encoding=text_codec(encoding), dtype=str, nrows=sample_rows,
                           keep_default_na=False, compression="infer").rename(columns=str.strip)
    except (pd.errors.ParserError, csv.Error, UnicodeDecodeError) as exc:
        raise FileSourceError(f"{path}: the first {sample_rows} rows cannot be read as CSV with delimiter "
                              f"{delimiter!r} and encoding {encoding} ({str(exc)[:200]}); check "
                              "CHURN_FILE_DELIMITER / CHURN_FILE_ENCODING and the export's quoting") from exc


def _integers(numbers: pd.Series) -> bool:
    return bool(len(numbers)) and bool(((numbers % 1) == 0).all())


def _kind(values: pd.Series, rows: int, decimal: str, thousands: str, max_categories: int,
          missing: frozenset[str] = frozenset(), name: str = "") -> tuple[str, str]:
    """(kind, why) of one column's text values."""
    text = values.astype("str").str.strip()
    present = text[~missing_mask(text, missing)]
    if present.empty:
        return "ignored", "empty"
    lowered = present.str.lower()
    numbers = pd.to_numeric(plain_numbers(present, decimal, thousands), errors="coerce")
    is_bool = lowered.isin(TRUE_TEXT | FALSE_TEXT)
    dirty = len(present) - int(is_bool.sum())
    if is_bool.mean() >= DIRTY_SHARE and numbers[~is_bool].isna().all():  # the words ingest reads as booleans
        return "boolean", f"{lowered[is_bool].nunique()} yes/no values" + (f", {dirty} not yes/no" if dirty else "")
    if numbers.notna().mean() >= DIRTY_SHARE:
        found = numbers.dropna()
        bad = len(present) - len(found)
        if _integers(found) and found.is_unique and len(found) >= 20:
            if found.is_monotonic_increasing:
                return "ignored", "row number (strictly increasing integers)"
            if ID_NAME.search(name) or len(found) >= ID_MIN_ROWS:
                return "ignored", f"id-like ({len(found)} distinct integers of {len(found)})"
        return "numeric", f"numbers, {len(present)} of {rows} present" + (f", {bad} not numbers" if bad else "")
    if present.str.match(_DATE).all():
        return "ignored", "timestamp"
    distinct = present.nunique()
    if distinct <= max_categories:
        return "categorical", f"{distinct} distinct values"
    if distinct > 0.5 * len(present):
        return "ignored", f"id-like ({distinct} distinct of {len(present)})"
    return "ignored", f"high cardinality ({distinct} distinct > {max_categories})"


def infer_kinds(sample: pd.DataFrame, *, id_column: str, label_column: str, timestamp_column: str | None = None,
                decimal: str = ".", thousands: str = "", max_categories: int = 50,
                missing: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Kinds of the sample's columns by the module's rules: numeric, boolean, categorical lists and the ignored."""
    kinds: dict[str, list[str]] = {"numeric": [], "boolean": [], "categorical": []}
    ignored: dict[str, str] = {}
    reasons: dict[str, str] = {}
    for column in sample.columns:
        if column in (id_column, label_column, timestamp_column):
            continue
        kind, why = _kind(sample[column], len(sample), decimal, thousands, max_categories, missing, column)
        reasons[column] = why
        if kind == "ignored":
            ignored[column] = why
        else:
            kinds[kind].append(column)
    return {**kinds, "ignored": ignored, "reasons": reasons, "sample_rows": int(len(sample))}


def pin_settings(inferred: dict[str, Any]) -> str:
    """The CHURN_*_COLUMNS settings that fix the inferred kinds (printed so the user can pin them)."""
    return " ".join(f"CHURN_{kind.upper()}_COLUMNS='{','.join(inferred[kind])}'"
                    for kind in ("numeric", "boolean", "categorical") if inferred[kind])


class LabelValuesError(ValueError):
    """The label's values cannot be mapped to 0/1 without CHURN_LABEL_VALUES; the message gives the line."""


def infer_label_values(values: pd.Series, column: str, missing: frozenset[str] = frozenset()) -> dict[str, int]:
    """The raw label text -> 0/1 mapping when it is unambiguous: 0/1 numbers, or one yes-word and one no-word.

    Raises :class:`LabelValuesError` listing the values seen and the ``CHURN_LABEL_VALUES`` line to set
    otherwise (``0.7``, three values, two words that are not yes/no): a label is never guessed or truncated.
    """
    text = values.dropna().astype("str").str.strip()
    seen = sorted(set(text[~missing_mask(text, missing)]))
    numbers = pd.to_numeric(pd.Series(seen, dtype=object), errors="coerce")
    if seen and numbers.notna().all() and set(numbers) <= {0.0, 1.0}:
        mapping = {value: int(float(value)) for value in seen}
        mapping.setdefault("0", 0)
        mapping.setdefault("1", 1)
        return mapping
    yes = [v for v in seen if v.lower() in TRUE_TEXT]
    no = [v for v in seen if v.lower() in FALSE_TEXT]
    if seen and len(yes) == 1 and len(no) == 1 and len(seen) == 2:
        return {yes[0]: 1, no[0]: 0}
    shown = ", ".join(repr(v) for v in seen[:10]) + (f" and {len(seen) - 10} more" if len(seen) > 10 else "")
    example = ",".join(f"{v}:{'1' if i == 0 else '0'}" for i, v in enumerate(seen[:2])) or "Yes:1,No:0"
    raise LabelValuesError(
        f"the label column {column!r} holds {len(seen)} distinct value(s) ({shown or 'none'}) that are not "
        f"unambiguously 0/1: say which value means 'churned' (1) and which does not (0) with "
        f"CHURN_LABEL_VALUES='{example}' (adjust to your values); values outside the mapping are quarantined")


@dataclass(frozen=True)
class CsvFormat:
    """Delimiter and number convention of a CSV delivery, and what was detected rather than configured."""

    delimiter: str
    decimal: str
    thousands: str
    detected: dict[str, str] = field(default_factory=dict)


_COMMA_DECIMAL = re.compile(r"^[+-]?\d+,\d+$")
_POINT_DECIMAL = re.compile(r"^[+-]?\d+\.\d+$")
_POINT_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(\.\d{3})+(,\d+)?$")


def detect_csv_format(path: Path, *, delimiter: str, decimal: str, thousands: str, encoding: str = "utf-8",
                      pinned: frozenset[str] = frozenset(), sample_lines: int = 200) -> CsvFormat:
    """The delivery's delimiter and decimal mark: configured ones (``pinned``) win, else detected and logged.

    Only the first ``sample_lines`` lines (at most a few MiB, any line ending) are read. A header with no
    configured delimiter but ``;`` (tab, ``|``) is delimited by that; with a non-comma delimiter, numbers
    written ``12,5`` and never ``12.5`` use a decimal comma (``1.234,5``: thousands ``.``).
    """
    if path.suffix.lower() in {".parquet", ".pq"}:
        return CsvFormat(delimiter, decimal, thousands)
    lines = read_head(path, encoding, sample_lines)
    if not lines:
        return CsvFormat(delimiter, decimal, thousands)
    detected: dict[str, str] = {}
    header = lines[0]
    if "delimiter" not in pinned:
        counts = {d: header.count(d) for d in DELIMITERS}
        best = max(counts, key=lambda d: counts[d])
        if counts[best] and counts.get(delimiter, 0) < counts[best]:
            detected["delimiter"] = best
            delimiter = best
    if delimiter != "," and "decimal" not in pinned:
        cells = [c.strip() for row in csv.reader(io.StringIO("\n".join(lines[1:])), delimiter=delimiter) for c in row]
        comma = sum(bool(_COMMA_DECIMAL.match(c)) for c in cells)
        point = sum(bool(_POINT_DECIMAL.match(c)) for c in cells)
        if comma and not point:
            detected["decimal"] = decimal = ","
            if "thousands" not in pinned and any(_POINT_THOUSANDS.match(c) for c in cells):
                detected["thousands"] = thousands = "."
            elif thousands == ",":
                thousands = ""
    if detected:
        pins = " ".join(f"CHURN_FILE_{k.upper()}={v!r}" for k, v in detected.items())
        log.warning("%s: detected %s (not configured); pin them with: %s", path, detected, pins)
    return CsvFormat(delimiter, decimal, thousands, detected)
