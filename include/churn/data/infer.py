"""Column kinds inferred from the first rows of a delivered file, when only the id and the label are configured.

Rules, applied to each column other than the id, the label and the configured timestamp column, on
the first ``sample_rows`` rows (every cell as stripped text, blanks as missing):

1. every value missing -> ignored (``empty``);
2. every value is a yes/no word or 0/1 (``yes no y n true false t f 1 0``, any case) -> **boolean**;
3. every value is a number (with the configured decimal mark and thousands separator) -> **numeric**;
4. every value is a date or date-time (``2026-11-20``, ``20.11.2026``, ``11/20/2026 08:30`` ...) ->
   ignored (``timestamp``; name it in ``CHURN_FILE_TIMESTAMP_COLUMN`` to enable the freshness check);
5. text with at most ``max_categories`` distinct values -> **categorical**;
6. other text -> ignored: ``id-like`` when more than half of the values are distinct (names, e-mails,
   free text), else ``high cardinality``.

Configured lists always win: inference runs only when ``CHURN_FILE_NUMERIC_COLUMNS``,
``CHURN_FILE_BOOLEAN_COLUMNS`` and ``CHURN_FILE_CATEGORICAL_COLUMNS`` are all empty. The result is
written into the run's dataset spec (``inference``) and logged with the settings that pin it.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pandas as pd

from churn.data.sources import FALSE_TEXT, TRUE_TEXT, plain_numbers, text_codec

log = logging.getLogger(__name__)

_DATE = re.compile(r"^\d{4}-\d{1,2}-\d{1,2}([ T].*)?$|^\d{1,2}[./-]\d{1,2}[./-]\d{2,4}([ T].*)?$")


def read_sample(path: Path, sample_rows: int, *, delimiter: str = ",", encoding: str = "utf-8") -> pd.DataFrame:
    """The first ``sample_rows`` rows of a CSV (also .gz/.bz2) or Parquet file, every cell as text."""
    if path.suffix.lower() in {".parquet", ".pq"}:
        import pyarrow.parquet as pq

        batch = next(pq.ParquetFile(path).iter_batches(batch_size=sample_rows), None)
        frame = batch.to_pandas() if batch is not None else pd.DataFrame()
        return frame.astype("str").where(frame.notna(), "")
    return pd.read_csv(path, sep=delimiter, encoding=text_codec(encoding), dtype=str, nrows=sample_rows, keep_default_na=False,
                       compression="infer").rename(columns=str.strip)


def _kind(values: pd.Series, rows: int, decimal: str, thousands: str, max_categories: int) -> tuple[str, str]:
    """(kind, why) of one column's text values."""
    text = values.astype("str").str.strip()
    present = text[text != ""]
    if present.empty:
        return "ignored", "empty"
    lowered = present.str.lower()
    if lowered.isin(TRUE_TEXT | FALSE_TEXT).all():  # the words ingest reads as booleans
        return "boolean", f"{lowered.nunique()} yes/no values"
    if pd.to_numeric(plain_numbers(present, decimal, thousands), errors="coerce").notna().all():
        return "numeric", f"numbers, {len(present)} of {rows} present"
    if present.str.match(_DATE).all():
        return "ignored", "timestamp"
    distinct = present.nunique()
    if distinct <= max_categories:
        return "categorical", f"{distinct} distinct values"
    if distinct > 0.5 * len(present):
        return "ignored", f"id-like ({distinct} distinct of {len(present)})"
    return "ignored", f"high cardinality ({distinct} distinct > {max_categories})"


def infer_kinds(sample: pd.DataFrame, *, id_column: str, label_column: str, timestamp_column: str | None = None,
                decimal: str = ".", thousands: str = "", max_categories: int = 50) -> dict[str, Any]:
    """Kinds of the sample's columns by the module's rules: numeric, boolean, categorical lists and the ignored."""
    kinds: dict[str, list[str]] = {"numeric": [], "boolean": [], "categorical": []}
    ignored: dict[str, str] = {}
    reasons: dict[str, str] = {}
    for column in sample.columns:
        if column in (id_column, label_column, timestamp_column):
            continue
        kind, why = _kind(sample[column], len(sample), decimal, thousands, max_categories)
        reasons[column] = why
        if kind == "ignored":
            ignored[column] = why
        else:
            kinds[kind].append(column)
    return {**kinds, "ignored": ignored, "reasons": reasons, "sample_rows": int(len(sample))}


def pin_settings(inferred: dict[str, Any]) -> str:
    """The CHURN_FILE_* settings that fix the inferred kinds (printed so the user can pin them)."""
    return " ".join(f"CHURN_FILE_{kind.upper()}_COLUMNS='{','.join(inferred[kind])}'"
                    for kind in ("numeric", "boolean", "categorical") if inferred[kind])
