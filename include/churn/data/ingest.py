"""Sources behind one interface: where a run's snapshots and an event's features come from.

``CHURN_SOURCE`` picks one implementation here (:func:`source_for`), and only here:

- ``postgres`` (:class:`DemoSource`): the demo's tables in the platform's own database, read by the
  demo's feature query ``include/churn/sql/demo_features.sql``;
- ``sql`` (:class:`SqlSource`): your feature query on your database (``CHURN_SOURCE_QUERY``);
- ``file`` (:class:`FileSource`): CSV or Parquet deliveries (``CHURN_FILE_PATH``), and delta files
  between nights.

The nightly ingest and the event re-score call the same source object, so both read features the same
way: a SQL source runs the same query (filtered to the event's customers between nights), a file source
converts delta rows with the nightly's own cell conversion.

A snapshot at date S sees only what was known before S: usage of complete months before S's month,
support contacts strictly before S, customers signed up on or before S and not churned by S. The
optional label is "churned within ``label_window_days`` after S".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from churn.data.snapshot import IngestError, Snapshot
from churn.data.spec import (BOOLEAN_FEATURES, CATEGORICAL_FEATURES, ID_COLUMN,  # noqa: F401 - the demo's columns
                             LABEL_COLUMN, NUMERIC_FEATURES, DatasetSpec)

if TYPE_CHECKING:
    from churn.config import ChurnConfig
    from churn.connections import Resources

log = logging.getLogger(__name__)

__all__ = ["IngestError", "Snapshot", "Source", "NightlySnapshots", "DemoSource", "SqlSource", "FileSource",
           "source_for", "outbox_watch", "extract_snapshot"]


@dataclass(frozen=True)
class NightlySnapshots:
    """What a source delivers for one run date: the labelled training and the scoring snapshot, and their spec."""

    train: Snapshot
    score: Snapshot
    spec: DatasetSpec
    detected_format: dict[str, str] = field(default_factory=dict)
    """CSV settings detected from the delivery because they were left at their defaults (file sources)."""


class Source(Protocol):
    """One kind of source: nightly snapshots, and the features of the customers events touch."""

    kind: str
    unknown_customer: str
    """Why an event's customer got no features (the quarantine reason)."""

    def nightly(self, as_of: date, run_dir: Path) -> NightlySnapshots:
        """Write the run's training (as of ``as_of`` minus the label window) and scoring snapshots."""
        ...

    def configured_spec(self) -> DatasetSpec:
        """The spec from configuration alone, for re-scores before any nightly run wrote one."""
        ...

    def prepare_events(self, conn, spec: Callable[[], DatasetSpec]) -> dict[str, Any]:
        """Work due before claiming events (a file source loads new delta files into the outbox); ``spec``
        gives the served batch's spec, asked only when the work needs it."""
        ...

    def event_snapshot(self, conn, events: list, ids: list[str], spec: DatasetSpec, out_path: Path,
                       as_of: date) -> Snapshot:
        """The unlabelled features of ``ids`` as of ``as_of`` (the nightly's conversion), written to ``out_path``."""
        ...


@dataclass
class _ConfiguredSource:
    """What every source holds: the configuration, and the run's connections (None where none are needed)."""

    cfg: ChurnConfig
    res: Resources | None = None

    def configured_spec(self) -> DatasetSpec:
        """The spec from configuration alone."""
        from churn.data.spec import spec_from_config

        return spec_from_config(self.cfg)


@dataclass
class SqlSource(_ConfiguredSource):
    """Your feature query (``CHURN_SOURCE_QUERY``) on your database (``CHURN_SOURCE_URL`` / connection)."""

    kind: str = "sql"
    unknown_customer: str = "unknown customer: not in the source's population as of now"

    def query(self) -> str:
        """The feature query's text, checked for its parameters."""
        from churn.data import sql_source

        return sql_source.load_query(sql_source.query_path(self.cfg))

    def _infer_kinds(self) -> bool:
        c = self.cfg
        return not (c.numeric_columns or c.boolean_columns or c.categorical_columns)

    def spec_for(self, conn, query: str, train_date: date) -> DatasetSpec:
        """The spec: configured kinds, or kinds inferred from the first rows of the query's result."""
        from churn.data import sql_source
        from churn.data.spec import spec_from_config

        sample = None
        if self._infer_kinds():
            bound = sql_source.bind(conn, query, train_date, self.cfg.label_window_days)
            sample = sql_source.read_sample(conn, bound, self.cfg.infer_sample_rows,
                                            timeout_seconds=self.cfg.source_statement_timeout_seconds)
        return spec_from_config(self.cfg, sample=sample)

    def extract(self, conn, as_of: date, out_path: Path, spec: DatasetSpec, *, labelled: bool,
                ids: list[str] | None = None, query: str | None = None) -> Snapshot:
        """The query's result as of ``as_of`` (only ``ids`` when given), streamed to Parquet."""
        from churn.data import sql_source

        return sql_source.extract_query_snapshot(
            conn, query or self.query(), as_of, out_path, spec, labelled=labelled,
            label_window_days=self.cfg.label_window_days, ids=ids,
            timeout_seconds=self.cfg.source_statement_timeout_seconds)

    def nightly(self, as_of: date, run_dir: Path) -> NightlySnapshots:
        """Training rows as of ``as_of - label_window_days`` with their label, scoring rows as of ``as_of``."""
        if self.res is None:
            raise IngestError("a SQL source needs the run's connections (Resources) to extract")
        query = self.query()
        train_date = as_of - timedelta(days=self.cfg.label_window_days)
        with self.res.source_session() as conn:
            spec = self.spec_for(conn, query, train_date)
            train = self.extract(conn, train_date, run_dir / "train_raw.parquet", spec, labelled=True, query=query)
            score = self.extract(conn, as_of, run_dir / "score_raw.parquet", spec, labelled=False, query=query)
        return NightlySnapshots(train, score, spec)

    def prepare_events(self, conn, spec: Callable[[], DatasetSpec]) -> dict[str, Any]:
        """Nothing: source-table triggers fill the outbox."""
        return {}

    def event_snapshot(self, conn, events: list, ids: list[str], spec: DatasetSpec, out_path: Path,
                       as_of: date) -> Snapshot:
        """The nightly's query, filtered to ``ids``."""
        return self.extract(conn, as_of, out_path, spec, labelled=False, ids=ids)


@dataclass
class DemoSource(SqlSource):
    """The demo's tables in the platform's own database, read by the demo's feature query (same path as yours)."""

    kind: str = "postgres"

    def query(self) -> str:
        """The demo's feature query (``include/churn/sql/demo_features.sql``)."""
        from churn.data import sql_source

        return sql_source.load_query(sql_source.DEMO_QUERY)

    def spec_for(self, conn, query: str, train_date: date) -> DatasetSpec:
        """The demo's fixed spec."""
        from churn.data.spec import synthetic_spec

        return synthetic_spec()

    def configured_spec(self) -> DatasetSpec:
        """The demo's fixed spec."""
        from churn.data.spec import synthetic_spec

        return synthetic_spec()


@dataclass
class FileSource(_ConfiguredSource):
    """CSV or Parquet deliveries (``CHURN_FILE_PATH``, may contain ``{ds}``); delta files between nights."""

    kind: str = "file"
    unknown_customer: str = "no delta row for this customer (a file source re-scores from delta files)"

    def nightly(self, as_of: date, run_dir: Path) -> NightlySnapshots:
        """The delivery for ``as_of`` is that date's snapshot: labelled rows train, the same rows (or
        ``CHURN_FILE_SCORE_PATH``) are scored."""
        from churn.data.infer import detect_csv_format
        from churn.data.sources import read_file_snapshot, resolve_files
        from churn.data.spec import spec_from_config
        from churn.data.text import parse_missing

        cfg = self.cfg
        train_files = resolve_files(cfg.file_path, as_of)
        # Settings the user left at their defaults may be detected from the delivery (and the log says how to pin).
        fmt = detect_csv_format(train_files[0], delimiter=cfg.file_delimiter, decimal=cfg.file_decimal,
                                thousands=cfg.file_thousands, encoding=cfg.file_encoding,
                                pinned=frozenset(n.removeprefix("file_") for n in cfg.model_fields_set))
        spec = spec_from_config(cfg, train_files, csv_format=fmt)  # kinds inferred when none are configured
        options = {"delimiter": fmt.delimiter, "encoding": cfg.file_encoding, "chunk_rows": cfg.ingest_chunk_rows,
                   "decimal": fmt.decimal, "thousands": fmt.thousands, "dayfirst": cfg.file_dayfirst,
                   "missing": parse_missing(cfg.file_missing_values)}
        train = read_file_snapshot(spec, train_files, run_dir / "train_raw.parquet", as_of, labelled=True, **options)
        score = read_file_snapshot(spec, resolve_files(cfg.file_score_path or cfg.file_path, as_of),
                                   run_dir / "score_raw.parquet", as_of, labelled=False, **options)
        return NightlySnapshots(train, score, spec, dict(fmt.detected or {}))

    def delta_dir(self) -> Path | None:
        """The delta-file folder (``CHURN_RESCORE_DELTA_DIR``, relative to the project root), or None."""
        from churn.config import PROJECT_ROOT

        if not self.cfg.rescore_delta_dir:
            return None
        return PROJECT_ROOT / Path(self.cfg.rescore_delta_dir).expanduser()  # an absolute setting stays as it is

    def prepare_events(self, conn, spec: Callable[[], DatasetSpec]) -> dict[str, Any]:
        """Load delta files that arrived since the last run into the outbox (one event per row)."""
        from churn.data import outbox

        folder = self.delta_dir()
        if folder is None:
            return {}
        cfg, spec = self.cfg, spec()
        return {"delta_files": outbox.ingest_delta_files(
            conn, folder, spec.id_column, spec.required_columns(labelled=False), delimiter=cfg.file_delimiter,
            encoding=cfg.file_encoding, require_ready=cfg.rescore_delta_require_ready,
            chunk_rows=cfg.ingest_chunk_rows)}

    def event_snapshot(self, conn, events: list, ids: list[str], spec: DatasetSpec, out_path: Path,
                       as_of: date) -> Snapshot:
        """The claimed customers' newest delta rows, converted by the nightly file ingest's own conversion."""
        import pandas as pd
        import pyarrow as pa
        import pyarrow.parquet as pq

        from churn.data.outbox import delta_records
        from churn.data.sources import coerce_chunk, snapshot_schema

        records = delta_records(conn, [e.event_id for e in events])
        stamp = spec.timestamp_column

        def data_time(event) -> tuple:
            # A customer's newest row wins by its data time (CHURN_TIMESTAMP_COLUMN) when the file has one,
            # then by event id (file name order, then row order): never by when the file happened to arrive.
            when = pd.to_datetime(records[event.event_id].get(stamp), errors="coerce", utc=True) if stamp else pd.NaT
            return (pd.Timestamp.min.tz_localize("UTC") if pd.isna(when) else when, event.event_id)

        newest: dict[str, dict] = {}
        wanted = set(ids)
        known = [e for e in events if e.event_id in records and e.customer_id in wanted]
        for event in sorted(known, key=data_time):
            newest[event.customer_id] = records[event.event_id]
        frame = pd.DataFrame(list(newest.values()), columns=spec.required_columns(labelled=False), dtype=object)
        cfg = self.cfg
        typed = coerce_chunk(frame, spec, labelled=False, decimal=cfg.file_decimal, thousands=cfg.file_thousands,
                             dayfirst=cfg.file_dayfirst)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pandas(typed, schema=snapshot_schema(spec, labelled=False),
                                            preserve_index=False), out_path)
        return Snapshot(str(out_path), len(typed), as_of.isoformat(), False)


_SOURCES: dict[str, type] = {"postgres": DemoSource, "sql": SqlSource, "file": FileSource}


def source_for(cfg: ChurnConfig, res: Resources | None = None) -> Source:
    """The configured source (``CHURN_SOURCE``): the one place a source kind is chosen."""
    try:
        return _SOURCES[cfg.source](cfg, res)
    except KeyError:
        raise IngestError(f"CHURN_SOURCE={cfg.source!r}: use one of {', '.join(_SOURCES)}") from None


def outbox_watch(cfg: ChurnConfig) -> dict[str, str]:
    """Where the re-score trigger watches for events: the outbox's connection id and URL variable, and the
    delta-file folder of a file source (absolute; empty when none). Reads configuration only (DAG parse time)."""
    other = cfg.source_in_other_database
    folder = FileSource(cfg).delta_dir() if _SOURCES[cfg.source] is FileSource else None
    return {"conn_id": cfg.source_conn_id if other else cfg.postgres_conn_id,
            "url_env": "CHURN_SOURCE_URL" if other else "CHURN_POSTGRES_URL",
            "delta_dir": str(folder) if folder else ""}


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
