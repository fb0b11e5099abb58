"""One typed configuration for the whole churn platform.

Every field has a local default so that ``make demo`` works with no setup.
Each field can be overridden by an environment variable named
``CHURN_<FIELD NAME IN UPPER CASE>`` (for example ``CHURN_TRAIN_BUDGET_MINUTES=5``).
Secrets never live here: database and Redis credentials come from Airflow
connections (``postgres_conn_id`` / ``redis_conn_id``) or from the
``CHURN_POSTGRES_URL`` / ``CHURN_REDIS_URL`` environment variables.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the variable to fix."""


def _default_state_dir() -> Path:
    return PROJECT_ROOT / ".state"


@dataclass(frozen=True)
class ChurnConfig:
    """Typed settings; see README "Configuration" for the table of fields."""

    # --- where things live -------------------------------------------------
    state_dir: Path = field(default_factory=_default_state_dir)
    """Project-local folder for embedded servers' data, run folders, models and exports."""

    # --- connections (ids only: the secrets stay in Airflow / the environment) --
    postgres_conn_id: str = "churn_postgres"
    """Airflow connection id of the Postgres that holds source tables, scores and the registry."""
    redis_conn_id: str = "churn_redis"
    """Airflow connection id of the Redis that serves scores to front-end apps."""
    sftp_conn_id: str = "churn_sftp"
    """Airflow connection id of the SFTP server receiving exports (absent = keep files local)."""
    postgres_port: int = 54329
    """Loopback port of the embedded PostgreSQL server (embedded default only)."""
    redis_port: int = 63799
    """Loopback port of the embedded Redis server (embedded default only)."""
    airflow_port: int = 8080
    """Loopback port of the local Airflow api-server (UI and REST API) started by ``make demo`` / ``make cluster``."""
    celery_broker_db: int = 1
    """Redis database of the embedded Redis used as Celery broker by ``make cluster`` (never the score keyspace)."""
    celery_workers: int = 2
    """Celery worker processes started by ``make cluster`` (each with concurrency 1)."""
    dask_scheduler_port: int = 8786
    """Loopback port of the Dask scheduler started by ``make cluster`` (TPOT's cluster there)."""
    dask_workers: int = 2
    """Dask worker processes started by ``make cluster`` (one thread each)."""

    # --- schedule ------------------------------------------------------------
    schedule_cron: str = "0 2 * * *"
    """Cron expression of the nightly run (UTC)."""
    catchup: bool = False
    """Whether the scheduler back-fills missed nightly runs."""

    # --- demo data -------------------------------------------------------------
    demo_customers: int = 20_000
    """Population size written by the synthetic generator for ``make demo``."""
    demo_seed: int = 7
    """Seed of the synthetic generator (same seed, same data)."""
    usage_months: int = 6
    """Months of usage history the generator writes (per active customer and month)."""

    # --- data / labels --------------------------------------------------------
    label_window_days: int = 30
    """Label = churned within this many days after the training snapshot."""
    max_bad_row_fraction: float = 0.05
    """Share of quarantined rows above which a run stops before training and publishing."""
    max_row_count_change: float = 0.5
    """Batch check: rows may shrink to (1 - this) or grow to 1 / (1 - this) times the previous good run's count."""
    max_data_age_days: float = 3.0
    """Batch check where a timestamp column exists: the newest record must be at most this old at the run date."""
    ingest_chunk_rows: int = 100_000
    """Rows held in memory at once by every stage that streams a snapshot (file ingest, validation, profiling)."""
    profile_sample_rows: int = 100_000
    """Rows (chosen by id hash) on which profiles compute quantiles, distinct counts and top values."""
    metrics_sample_rows: int = 200_000
    """Scored customers (chosen by id hash) behind score quantiles and the realized ROC AUC."""

    # --- data source (default: the Postgres synthetic tables) ------------------------
    source: typing.Literal["postgres", "file", "sql"] = "postgres"
    """``postgres`` (the demo's src.* tables), ``sql`` (your database and feature query) or ``file`` (a drop folder)."""
    source_conn_id: str = "churn_source"
    """SQL source: Airflow connection id of your database (``CHURN_SOURCE_URL`` wins; undefined = the platform's)."""
    source_query: str = ""
    """SQL source: your feature query (.sql with ``%(as_of)s``, ``%(label_window_days)s``); relative to the project root."""
    file_path: str = ""
    """File source: path or glob; ``{ds}`` = the run date; relative paths are from the project root."""
    file_score_path: str = ""
    """File source: path/glob of the customers to score; empty = score the rows of ``file_path``."""
    file_id_column: str = "customer_id"
    """File and SQL sources: the customer id column."""
    file_label_column: str = "churned"
    """File and SQL sources: the target column (training rows)."""
    file_label_values: str = ""
    """File and SQL sources: raw label -> 0/1, e.g. ``Yes:1,No:0``; empty = the label already is 0/1."""
    file_numeric_columns: str = ""
    """File and SQL sources: comma-separated numeric feature columns (blanks become nulls)."""
    file_boolean_columns: str = ""
    """File and SQL sources: comma-separated yes/no feature columns (1/0, true/false, yes/no)."""
    file_categorical_columns: str = ""
    """File and SQL sources: comma-separated categorical feature columns."""
    file_timestamp_column: str = ""
    """File and SQL sources: optional record update-time column (enables the freshness check)."""
    file_suite: str = "file_source"
    """File and SQL sources: expectation suite name (``include/churn/expectations/<name>.json``) and dataset name."""
    file_delimiter: str = ","
    """File source: CSV delimiter."""
    file_encoding: str = "utf-8"
    """File source: CSV text encoding (a UTF-8 byte-order mark is accepted)."""
    file_decimal: str = "."
    """File source: decimal mark of numbers in CSV files (``,`` for many regional spreadsheet exports)."""
    file_thousands: str = ""
    """File source: thousands separator in CSV numbers (e.g. ``.`` with a decimal comma); empty = none."""
    infer_sample_rows: int = 20_000
    """File and SQL sources without feature lists: rows read to infer the column kinds (README "Column kinds inferred")."""
    infer_max_categories: int = 50
    """File and SQL sources without feature lists: a text column with at most this many distinct values is categorical."""
    file_dayfirst: bool = False
    """File source: read ambiguous dates day first (31.12.2026, 01/02/2026 = 1 February)."""

    # --- re-scoring between nights (churn_rescore) ----------------------------------
    rescore_tables: str = "src.support_contacts,src.customers,src.usage_monthly"
    """Source tables whose inserts and updates record re-score events (outbox triggers; README "Between nights")."""
    rescore_id_column: str = "customer_id"
    """Column of those tables that names the customer."""
    rescore_batch_rows: int = 10_000
    """Events claimed (and customers re-scored) per batch; a run drains the outbox batch by batch."""
    rescore_claim_lease_seconds: float = 600.0
    """A claimed event whose consumer died is claimed again by another run after this long."""
    rescore_poll_seconds: float = 2.0
    """How often the triggerer's outbox watcher looks for new events."""
    rescore_max_attempts: int = 5
    """An event claimed this many times without finishing is quarantined (a poison event never blocks others)."""
    rescore_max_waiting: int = 10_000
    """Alert when more events than this wait in the outbox."""
    rescore_max_lag_seconds: float = 300.0
    """Alert when the p95 event-to-new-score lag of the last hour exceeds this."""
    rescore_delta_dir: str = ""
    """File source: folder where delta files (the file's columns, changed customers only) are dropped; empty = off."""

    # --- drift -------------------------------------------------------------------------
    drift_psi_threshold: float = 0.2
    """A feature whose PSI against the champion's training reference exceeds this is a reason to retrain."""
    drift_sample_rows: int = 200_000
    """Scoring rows sampled for the drift comparison (bounds memory)."""

    # --- training ----------------------------------------------------------------
    cv_folds: int = 5
    """Folds of the cross-validated ROC AUC that selects the challenger among the candidates."""
    cv_max_rows: int = 20_000
    """Rows (a stratified sample of train + validation) behind that estimate; bounds its cost."""

    train_budget_minutes: float = 2.0
    """Wall-clock budget of the TPOT search."""
    train_tpot: bool = True
    """Run the TPOT search next to the logistic baseline (false = baseline only, e.g. quick checks of a new source)."""
    max_eval_minutes: float = 0.5
    """Time limit for evaluating one candidate pipeline inside TPOT."""
    tpot_search_space: str = "linear-light"
    """TPOT 1.x search space name (``linear-light``, ``linear``, ``graph`` ...)."""
    tpot_cv: int = 3
    """Cross-validation folds inside the TPOT search."""
    tpot_population_size: int = 20
    """Individuals per TPOT generation."""
    n_jobs: int = 2
    """Local parallel workers for TPOT (ignored when a Dask scheduler is configured)."""
    dask_scheduler_address: str = ""
    """``tcp://host:8786`` of an existing Dask cluster; empty = TPOT starts a local one."""
    random_state: int = 42
    """Seed for splits, TPOT and the baseline."""
    max_train_rows: int = 200_000
    """Training rows are sampled down to this many (stratified) to keep the search in budget."""
    split_fractions: str = "0.8,0.1,0.1"
    """Train, validation and test fractions, keyed on a hash of the customer id."""
    train_progress_seconds: float = 15.0
    """Seconds between TPOT progress lines in the task log (also one line per finished generation)."""
    reference_rows: int = 50_000
    """Training feature rows (with ids) saved as ``reference.parquet`` next to each model for drift checks."""
    onnx_parity_tolerance: float = 1e-5
    """ONNX export counts only if its probabilities differ from scikit-learn's by less than this on the test split."""

    max_champion_age_days: int = 7
    """The nightly run retrains when the champion is older than this (or on a 'retrain' trigger)."""

    # --- gate -------------------------------------------------------------------
    min_roc_auc: float = 0.6
    """A challenger below this test ROC AUC is never promoted (<= 0 disables promotion)."""
    max_auc_drop: float = 0.01
    """A challenger may be at most this much worse than the champion on the same test rows."""
    promote_without_comparison: bool = True
    """Promote a challenger (above the floor) when the champion cannot score the new data (schema change); false = refuse."""

    # --- scoring / publish -------------------------------------------------------
    score_chunk_rows: int = 200_000
    """Rows scored and published per chunk (bounds memory)."""
    score_partitions: int = 2
    """Hash partitions of the id space scored as separate (mapped) tasks; deciles stay global."""
    risk_band_cuts: str = "0.3,0.6"
    """Probability cut points between the ``low``, ``medium`` and ``high`` risk bands."""
    redis_key_prefix: str = "churn"
    """Prefix of every Redis key the platform writes."""
    redis_layout: typing.Literal["json", "hash"] = "json"
    """Redis key layout: ``json`` (GET churn:score:{id}) or ``hash`` (compact buckets, README "Score contracts")."""
    redis_hash_buckets: int = 65_536
    """Buckets of the ``hash`` layout; keep customers / buckets under ~100 so buckets stay compactly encoded."""
    publish_lease_seconds: float = 60.0
    """Lease of the one-publish-at-a-time locks (Redis lease, renewed every batch); a dead holder's lapses."""
    publish_lock_wait_seconds: float = 900.0
    """How long a publish waits for another publish of the same stores before failing (and retrying)."""
    pg_reader_role: str = "churn_reader"
    """Read-only Postgres role for consumers (password from CHURN_PG_READER_PASSWORD); empty = not managed."""
    score_history_runs: int = 7
    """How many published runs stay queryable in Postgres score history."""

    # --- monitoring and alerts ----------------------------------------------------
    realized_lag_days: int = 30
    """Realized performance: judge the scores published this many days ago against the churn seen since."""
    realized_min_customers: int = 200
    """Minimum customers with a known outcome before a realized ROC AUC is computed."""
    max_realized_auc_drop: float = 0.05
    """Realized ROC AUC this much below the model's test ROC AUC triggers a retrain and an alert."""
    max_prediction_psi: float = 0.2
    """PSI of this run's scores vs the previous run's above which an alert is raised."""
    run_deadline_minutes: float = 240.0
    """The nightly run alerts when it has not finished this many minutes after it was queued."""
    alert_webhook_conn_id: str = "churn_alert_webhook"
    """Airflow connection (http, host = URL) receiving alerts as JSON POSTs; absent = log only."""
    alert_email_conn_id: str = "churn_alert_smtp"
    """Airflow connection (smtp; extra {"to": "a@b"}) receiving alerts by e-mail; absent = log only."""
    report_base_url: str = "http://localhost:8080/churn"
    """Public URL of the Churn page (plugin) used in logs and alerts to link a run's report."""

    # --- exports -----------------------------------------------------------------
    export_band: str = "high"
    """Risk band of the default export (used only while ``exports`` is empty)."""
    exports: str = ""
    """JSON list of export definitions (README "Exports"); empty = one CSV of ``export_band`` as before."""
    export_remote_dir: str = "."
    """Folder on the SFTP server receiving exports (relative to the login's home directory)."""
    export_upload_attempts: int = 4
    """SFTP upload attempts per run (a dropped connection is retried with exponential backoff)."""
    export_retry_seconds: float = 2.0
    """First backoff between SFTP upload attempts; doubles after each failure."""
    export_chunk_rows: int = 50_000
    """Rows fetched from Postgres per chunk while an export file is streamed to disk."""

    def __post_init__(self) -> None:
        """Check choices and ranges at construction (also for per-run overrides), naming the variable to fix."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, var = getattr(self, f.name), f"CHURN_{f.name.upper()}"
            kind = hints[f.name]
            if typing.get_origin(kind) is typing.Literal and value not in typing.get_args(kind):
                raise ConfigError(f"{var}={value!r} is not allowed; use one of {', '.join(typing.get_args(kind))}")
            low, high = _RANGES.get(f.name, (None, None))
            if (low is not None and value < low) or (high is not None and value > high):
                bounds = f"between {low} and {high}" if low is not None and high is not None else \
                    (f"at least {low}" if low is not None else f"at most {high}")
                raise ConfigError(f"{var}={value!r} is out of range: it must be {bounds}")
        if len(self.file_decimal) != 1 or len(self.file_thousands) > 1 or self.file_decimal == self.file_thousands \
                or self.file_delimiter in (self.file_decimal, self.file_thousands):
            raise ConfigError(
                f"CHURN_FILE_DECIMAL={self.file_decimal!r} / CHURN_FILE_THOUSANDS={self.file_thousands!r} / "
                f"CHURN_FILE_DELIMITER={self.file_delimiter!r}: the decimal mark is one character, the thousands "
                "separator at most one, and the three must differ (e.g. ';' delimiter, ',' decimal, '.' thousands)")
        self.band_cuts  # noqa: B018 - parsed now so that a bad value fails at start, not mid-run
        self.splits  # noqa: B018

    @property
    def rescore_table_names(self) -> list[str]:
        """``CHURN_RESCORE_TABLES`` as a list of ``schema.table`` names."""
        return [name.strip() for name in self.rescore_tables.split(",") if name.strip()]

    @property
    def runs_dir(self) -> Path:
        """Folder holding one sub-folder per run (parquet files, reports, summary)."""
        return self.state_dir / "runs"

    @property
    def models_dir(self) -> Path:
        """Folder holding model artifacts, one sub-folder per version."""
        return self.state_dir / "models"

    @property
    def exports_dir(self) -> Path:
        """Folder where CSV exports are written before (optional) SFTP delivery."""
        return self.state_dir / "exports"

    @property
    def band_cuts(self) -> tuple[float, ...]:
        """Risk band cut points as floats, validated ascending in (0, 1)."""
        try:
            cuts = tuple(float(x) for x in self.risk_band_cuts.split(","))
        except ValueError:
            cuts = ()
        if not cuts or list(cuts) != sorted(cuts) or not all(0.0 < c < 1.0 for c in cuts):
            raise ConfigError(
                f"CHURN_RISK_BAND_CUTS={self.risk_band_cuts!r} must be ascending numbers in (0, 1), e.g. '0.3,0.6'"
            )
        return cuts

    @property
    def splits(self) -> tuple[float, float, float]:
        """Train/validation/test fractions, validated to sum to 1."""
        try:
            parts = tuple(float(x) for x in self.split_fractions.split(","))
        except ValueError:
            parts = ()
        if len(parts) != 3 or abs(sum(parts) - 1.0) > 1e-6 or min(parts) <= 0:
            raise ConfigError(
                f"CHURN_SPLIT_FRACTIONS={self.split_fractions!r} must be three positive fractions summing to 1"
            )
        return parts  # type: ignore[return-value]

    def replace(self, **changes: typing.Any) -> "ChurnConfig":
        """Return a copy with some fields changed (per-run overrides)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: typing.Mapping[str, str] | None = None) -> "ChurnConfig":
        """Build the config from defaults overridden by ``CHURN_*`` environment variables."""
        env = os.environ if environ is None else environ
        hints = typing.get_type_hints(cls)
        values: dict[str, typing.Any] = {}
        for f in dataclasses.fields(cls):
            var = f"CHURN_{f.name.upper()}"
            if var not in env:
                continue
            raw = env[var]
            values[f.name] = _coerce(var, raw, hints[f.name])
        return cls(**values)


# Inclusive (min, max) of numeric fields; None = unbounded on that side.
_RANGES: dict[str, tuple[float | None, float | None]] = {
    **{name: (1, 65535) for name in ("postgres_port", "redis_port", "airflow_port", "dask_scheduler_port")},
    **{name: (1, None) for name in (
        "celery_workers", "dask_workers", "demo_customers", "usage_months", "label_window_days", "ingest_chunk_rows",
        "profile_sample_rows", "metrics_sample_rows", "drift_sample_rows", "tpot_population_size", "n_jobs",
        "max_train_rows", "reference_rows", "score_chunk_rows", "redis_hash_buckets", "score_history_runs",
        "realized_min_customers", "export_upload_attempts", "export_chunk_rows", "infer_sample_rows",
        "infer_max_categories", "rescore_batch_rows", "rescore_max_attempts", "rescore_max_waiting", "cv_max_rows")},
    "celery_broker_db": (0, 15), "tpot_cv": (2, 20), "cv_folds": (2, 20), "score_partitions": (1, 256),
    "max_bad_row_fraction": (0.0, 1.0), "max_row_count_change": (0.0, 0.99), "min_roc_auc": (0.0, 1.0),
    "max_auc_drop": (0.0, 1.0), "max_realized_auc_drop": (0.0, 1.0), "drift_psi_threshold": (0.0, None),
    "max_prediction_psi": (0.0, None), "onnx_parity_tolerance": (0.0, None), "max_data_age_days": (0.0, None),
    "max_champion_age_days": (0, None), "realized_lag_days": (1, None),
    **{name: (0.001, None) for name in ("train_budget_minutes", "max_eval_minutes", "train_progress_seconds",
                                       "publish_lease_seconds", "publish_lock_wait_seconds", "run_deadline_minutes",
                                       "export_retry_seconds", "rescore_claim_lease_seconds", "rescore_poll_seconds",
                                       "rescore_max_lag_seconds")},
}


def _coerce(var: str, raw: str, kind: typing.Any) -> typing.Any:
    """Convert one environment string to the field's type, or explain the fix."""
    if typing.get_origin(kind) is typing.Literal:
        return raw.strip()  # the allowed values are checked (and listed) by ChurnConfig.__post_init__
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
        if kind is Path:
            return Path(raw).expanduser().resolve()
        return kind(raw)
    except ValueError as exc:
        raise ConfigError(f"{var}={raw!r} is not a valid {getattr(kind, '__name__', kind)}") from exc


def field_docs() -> dict[str, str]:
    """Each field's documentation: the string literal under it in this module's source."""
    import ast

    tree = ast.parse(Path(__file__).read_text())
    body = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "ChurnConfig").body
    docs = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[node.target.id] = " ".join(str(after.value.value).split())
    return docs


def _default_text(name: str, value: typing.Any) -> str:
    if name == "state_dir":
        return "`.state` (in the checkout)"
    if value == "":
        return "(empty)"
    if isinstance(value, bool):
        return str(value).lower()
    return f"`{value}`" if isinstance(value, str) else str(value)


def markdown_table() -> str:
    """The README's configuration table, generated from the fields, their defaults and their docs."""
    docs = field_docs()
    defaults = ChurnConfig()
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for f in dataclasses.fields(ChurnConfig):
        meaning = docs.get(f.name, "").replace("|", "\\|")
        rows.append(f"| CHURN_{f.name.upper()} | {_default_text(f.name, getattr(defaults, f.name))} | {meaning} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    """CLI: ``--markdown`` prints the README table; ``--check`` validates the current environment's settings."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m churn.config")
    parser.add_argument("--markdown", action="store_true", help="print the README configuration table")
    parser.add_argument("--check", action="store_true", help="validate the CHURN_* variables of this environment")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown_table(), end="")
    if args.check:
        try:
            ChurnConfig.from_env()
        except ConfigError as exc:
            print(f"error: {exc}")
            return 2
        print("configuration ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
