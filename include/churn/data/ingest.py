"""The demo source's columns, the snapshot record every source returns, and the demo's extraction.

A snapshot at date S sees only what was known before S: usage of complete
months before S's month, support contacts strictly before S, customers signed
up on or before S and not churned by S. The optional label is "churned within
``label_window_days`` after S". The query is ``include/churn/sql/demo_features.sql``,
run by the SQL source's streaming extraction (``churn.data.sql_source``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date
from pathlib import Path

log = logging.getLogger(__name__)

ID_COLUMN = "customer_id"
LABEL_COLUMN = "churned"
CATEGORICAL_FEATURES = ["contract", "plan", "region", "payment_method"]
BOOLEAN_FEATURES = ["paperless_billing", "senior"]
NUMERIC_FEATURES = [
    "monthly_charge",
    "num_lines",
    "tenure_days",
    "minutes_recent",
    "minutes_prior",
    "minutes_trend",
    "data_gb_avg",
    "dropped_calls",
    "usage_months",
    "contacts_90d",
    "complaints_90d",
    "unresolved_90d",
    "days_since_contact",
]


class IngestError(RuntimeError):
    """The source could not be read; the message says which table or setting to fix."""


@dataclass(frozen=True)
class Snapshot:
    """A written feature snapshot: where it is and how many rows it has."""

    path: str
    rows: int
    snapshot_date: str
    labelled: bool
    source_files: list[str] | None = None
    """Files read (file sources only), in reading order."""
    ignored_columns: list[str] | None = None
    """Columns the files or the query return that are not in the dataset spec (not read, logged)."""
    max_chunk_rows: int | None = None
    """Largest number of rows held in memory at once while reading (file sources)."""


def extract_snapshot(
    conn, snapshot: date, out_path: str | Path, label_window_days: int | None = None
) -> Snapshot:
    """Write the demo's features (and label, when a window is given) as of ``snapshot`` to Parquet.

    The demo source is one SQL-source query (``include/churn/sql/demo_features.sql``): same path as yours.
    """
    from churn.data.spec import synthetic_spec
    from churn.data.sql_source import DEMO_QUERY, extract_query_snapshot, load_query

    return extract_query_snapshot(conn, load_query(DEMO_QUERY), snapshot, out_path, synthetic_spec(),
                                  labelled=label_window_days is not None, label_window_days=label_window_days or 0)
