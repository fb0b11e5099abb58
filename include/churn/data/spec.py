"""The dataset spec: which columns are the id, the label and the features of each kind.

Every source (the demo's Postgres tables, your own database's feature query, CSV/Parquet files in a drop folder)
produces one, ingest writes it as ``dataset_spec.json`` into the run folder, and
split, train and validate read it from there, so a new dataset needs configuration
only, never code.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from churn.fileio import write_text_atomic

log = logging.getLogger(__name__)

# The demo source's columns (include/churn/sql/demo_features.sql).
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

SPEC_FILE = "dataset_spec.json"
PARSE_ERRORS_COLUMN = "_parse_errors"  # per-row text of cells ingest could not parse (files only)


class SpecError(ValueError):
    """The dataset spec (from configuration) is incomplete or contradictory; the message names the variable."""


@dataclass(frozen=True)
class DatasetSpec:
    """Columns and kinds of one dataset, plus the expectation suite that checks it."""

    name: str
    source: str
    id_column: str
    label_column: str
    numeric: list[str] = field(default_factory=list)
    boolean: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    suite: str = "churn_features"
    label_values: dict[str, int] = field(default_factory=dict)
    """Raw label value -> 0/1 (e.g. ``{"Yes": 1, "No": 0}``); empty when the label already is 0/1."""
    timestamp_column: str | None = None
    """Column holding each record's update time; enables the freshness check."""
    inference: dict = field(default_factory=dict)
    """How the feature kinds were inferred (``churn.data.infer``), empty when they were configured."""

    @property
    def feature_columns(self) -> list[str]:
        """All feature columns in a stable order (numeric, boolean, categorical)."""
        return [*self.numeric, *self.boolean, *self.categorical]

    def required_columns(self, labelled: bool) -> list[str]:
        """Columns a snapshot must have: id, features, the timestamp if configured, the label for training."""
        cols = [self.id_column, *self.feature_columns]
        if self.timestamp_column:
            cols.append(self.timestamp_column)
        if labelled:
            cols.append(self.label_column)
        return cols

    def check(self) -> "DatasetSpec":
        """Raise SpecError when the spec cannot work (no features, a column listed twice)."""
        if not self.id_column or not self.label_column:
            raise SpecError("the dataset spec needs an id column and a label column (CHURN_ID_COLUMN / "
                            "CHURN_LABEL_COLUMN)")
        if not self.feature_columns:
            raise SpecError("the dataset spec has no feature columns: set CHURN_NUMERIC_COLUMNS, "
                            "CHURN_BOOLEAN_COLUMNS and/or CHURN_CATEGORICAL_COLUMNS, or leave all three "
                            "empty and let ingest infer them from the delivered file")
        names = [self.id_column, self.label_column, *self.feature_columns]
        dupes = sorted({c for c in names if names.count(c) > 1})
        if dupes:
            raise SpecError(f"column(s) {dupes} are listed twice in the dataset spec (id, label and feature lists "
                            "must not overlap)")
        return self

    def arrow_fields(self) -> list[tuple[str, Any]]:
        """(name, Arrow type) of the id, the features and the timestamp: the typed part of every snapshot."""
        import pyarrow as pa

        fields = [(self.id_column, pa.string())]
        fields += [(c, pa.float64()) for c in self.numeric]
        fields += [(c, pa.bool_()) for c in self.boolean]
        fields += [(c, pa.string()) for c in self.categorical]
        if self.timestamp_column:
            fields.append((self.timestamp_column, pa.timestamp("us", tz="UTC")))
        return fields

    def as_dict(self) -> dict:
        """JSON-able form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "DatasetSpec":
        """Inverse of ``as_dict``."""
        return cls(**data)

    def write(self, run_dir: str | Path) -> Path:
        """Write ``dataset_spec.json`` into the run folder and return its path."""
        return write_text_atomic(Path(run_dir) / SPEC_FILE, json.dumps(self.as_dict(), indent=2))


def synthetic_spec() -> DatasetSpec:
    """The spec of the Postgres synthetic source (the default)."""
    return DatasetSpec("churn_synthetic", "postgres", ID_COLUMN, LABEL_COLUMN, list(NUMERIC_FEATURES),
                       list(BOOLEAN_FEATURES), list(CATEGORICAL_FEATURES), "churn_features")


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def parse_label_values(value: str) -> dict[str, int]:
    """``"Yes:1,No:0"`` -> ``{"Yes": 1, "No": 0}``; raises SpecError naming CHURN_LABEL_VALUES."""
    mapping: dict[str, int] = {}
    for part in _split(value):
        raw, sep, target = part.rpartition(":")
        if not sep or target.strip() not in {"0", "1"}:
            raise SpecError(f"CHURN_LABEL_VALUES={value!r}: each item must be '<raw value>:<0 or 1>', "
                            "e.g. 'Yes:1,No:0'")
        mapping[raw.strip()] = int(target)
    if mapping and set(mapping.values()) != {0, 1}:
        raise SpecError(f"CHURN_LABEL_VALUES={value!r} must map at least one value to 1 and one to 0")
    return mapping


def spec_from_config(cfg, files: list[Path] | None = None, sample=None, csv_format=None) -> DatasetSpec:
    """The dataset spec the configured source produces (``CHURN_SOURCE`` = ``postgres``, ``sql`` or ``file``).

    For a file or SQL source whose three feature lists are all empty, the kinds are inferred
    (``churn.data.infer``; configured lists always win) from the first rows of ``files`` (read with
    ``csv_format``, the delivery's detected delimiter and decimal mark) or from ``sample``, the first rows
    of the feature query's result as text. A file's label mapping is inferred from the same rows when
    ``CHURN_LABEL_VALUES`` is empty, so the label is checked as the text the file holds every night.
    """
    if cfg.source == "postgres":
        return synthetic_spec()
    if cfg.source == "file" and not cfg.file_path:
        raise SpecError("CHURN_SOURCE=file needs CHURN_FILE_PATH (a path or glob, may contain {ds})")
    if cfg.source == "sql" and not cfg.source_query:
        raise SpecError("CHURN_SOURCE=sql needs CHURN_SOURCE_QUERY (your .sql feature query, see "
                        "docs/guides/bring-your-own-data.md)")
    kinds = {"numeric": _split(cfg.numeric_columns), "boolean": _split(cfg.boolean_columns),
             "categorical": _split(cfg.categorical_columns)}
    inference: dict = {}
    label_values = parse_label_values(cfg.label_values)
    infer_labels = cfg.source == "file" and not label_values and bool(files)
    if (files or sample is not None) and (infer_labels or not any(kinds.values())):
        from churn.data.infer import CsvFormat, LabelValuesError, infer_kinds, infer_label_values, pin_settings, \
            read_sample
        from churn.data.text import parse_missing

        fmt = csv_format or CsvFormat(cfg.file_delimiter, cfg.file_decimal, cfg.file_thousands)
        missing = parse_missing(cfg.file_missing_values) if cfg.source == "file" else frozenset()
        origin = {"query": cfg.source_query} if sample is not None else {"file": str(files[0])}
        if sample is None:
            sample = read_sample(files[0], cfg.infer_sample_rows, delimiter=fmt.delimiter,
                                 encoding=cfg.file_encoding)
        if not any(kinds.values()):
            inference = infer_kinds(sample, id_column=cfg.id_column, label_column=cfg.label_column,
                                    timestamp_column=cfg.timestamp_column or None, decimal=fmt.decimal,
                                    thousands=fmt.thousands, max_categories=cfg.infer_max_categories,
                                    missing=missing)
            inference.update(origin)
            kinds = {k: inference[k] for k in kinds}
            log.warning("column kinds inferred from %s (%s rows): %s; ignored %s. Pin them with: %s",
                        next(iter(origin.values())), inference["sample_rows"], kinds, inference["ignored"],
                        pin_settings(inference))
        if infer_labels and cfg.label_column in sample.columns:
            try:
                label_values = infer_label_values(sample[cfg.label_column], cfg.label_column, missing)
            except LabelValuesError as exc:
                raise SpecError(str(exc)) from exc
            inference = {**inference, "label_values": label_values}
            log.warning("label mapping inferred from %s: %s; pin it with CHURN_LABEL_VALUES='%s'",
                        next(iter(origin.values())), label_values,
                        ",".join(f"{raw}:{target}" for raw, target in label_values.items()))
    return DatasetSpec(
        name=cfg.suite, source=cfg.source, id_column=cfg.id_column, label_column=cfg.label_column,
        numeric=kinds["numeric"], boolean=kinds["boolean"], categorical=kinds["categorical"], suite=cfg.suite,
        label_values=label_values,
        timestamp_column=cfg.timestamp_column or None, inference=inference,
    ).check()


def load_run_spec(run_dir: str | Path) -> DatasetSpec:
    """The spec ingest wrote for this run (the synthetic one, with a warning, for runs from before specs)."""
    path = Path(run_dir) / SPEC_FILE
    if not path.exists():
        log.warning("no %s in %s (run ingested before dataset specs); assuming the synthetic source", SPEC_FILE,
                    run_dir)
        return synthetic_spec()
    return DatasetSpec.from_dict(json.loads(path.read_text()))
