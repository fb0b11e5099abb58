"""Atomic, idempotent publish of a run's scores to Postgres.

Scores are bulk-loaded with COPY into a table private to the run
(``churn.scores_<run>``), indexed, and only then exposed: one short transaction
repoints the ``churn.scores_current`` view (what consumers read) and rebuilds
``churn.scores_history`` over the retained runs. A reader sees the old complete
batch or the new complete batch, never a mix. Re-publishing a run replaces its
table in the same way, so there are never duplicates.

The switch needs exclusive locks on the views, which an open reader transaction holds off; while it waits,
every new reader queues behind it. So an attempt may wait for its locks only
``CHURN_PUBLISH_SWITCH_LOCK_TIMEOUT_SECONDS`` in all, then gives them up (readers go on) and retries with
backoff until ``CHURN_PUBLISH_SWITCH_DEADLINE_SECONDS``; the consumer role's idle-in-transaction timeout
ends the sessions that would hold it off forever.
"""

from __future__ import annotations

import io
import logging
import re
import time
from datetime import date, timedelta
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TYPE_CHECKING

import psycopg2
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from psycopg2 import sql
from psycopg2.extensions import encrypt_password

from churn.db import ensure_schema
from churn.publish.refresh import batch_cutoff

if TYPE_CHECKING:
    from churn.db import PgConnection, PgCursor

log = logging.getLogger(__name__)

SCORES_COLUMNS = "customer_id, churn_probability, risk_band, risk_decile, model_version, run_id, scored_at"
_TABLE_DDL = """
CREATE TABLE {name} (
    customer_id text NOT NULL,
    churn_probability real NOT NULL,
    risk_band text NOT NULL,
    risk_decile smallint NOT NULL,
    model_version text NOT NULL,
    run_id text NOT NULL,
    scored_at timestamptz NOT NULL,
    experiment text,
    arm text,
    features_hash bigint
)"""
_LOCK_KEY = 7412  # serializes publishes (the switch is short; loads run in parallel-safe private tables)


READER_VIEWS = ("scores_current", "scores_history")  # all a consumer role may read


class PublishError(RuntimeError):
    """Publishing failed before the switch; readers still see the previous batch."""


class ReaderRoleError(RuntimeError):
    """The read-only consumer role could not be created or granted; the message says what a DBA must run."""


@dataclass
class PostgresPublish:
    """Outcome of a Postgres publish."""

    table: str
    rows: int
    is_current: bool
    load_seconds: float


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def connect_for_publish(factory: Callable[[], object], run_key: str):
    """Open the publishing connection; an unreachable server becomes a PublishError that says what to check."""
    try:
        return factory()
    except psycopg2.OperationalError as exc:
        raise PublishError(
            f"cannot reach Postgres to publish run {run_key} ({_one_line(exc)}); nothing was changed and readers "
            "still see the previous batch. Check CHURN_POSTGRES_URL / the Airflow connection 'churn_postgres' "
            "and that the server is up; the task retry publishes the run."
        ) from exc


def run_table(run_key: str) -> str:
    """Per-run table name, e.g. ``scores_2026_11_20`` (schema ``churn``)."""
    safe = re.sub(r"[^a-z0-9]+", "_", run_key.lower()).strip("_")
    if not safe:
        raise PublishError(f"run key {run_key!r} gives an empty table name")
    return f"scores_{safe}"[:60]


_PER_CUSTOMER = "customer_id, churn_probability, risk_band, risk_decile"
_CONSTANT_COLUMNS = ("model_version", "run_id", "scored_at")
EXPERIMENT_COLUMNS = ("experiment", "arm")  # who served the score: null outside experiments
LOG_COLUMNS = ("run_id, customer_id, churn_probability, risk_band, risk_decile, model_version, experiment, arm, "
               "features_hash, scored_at")  # churn.prediction_log


def _versions_vary(parquet: pq.ParquetFile) -> bool:
    """True when the file's ``model_version`` differs between rows (an experiment's arms), from the statistics."""
    meta = parquet.metadata
    index = parquet.schema_arrow.get_field_index("model_version")
    seen: set = set()
    for group in range(meta.num_row_groups):
        stats = meta.row_group(group).column(index).statistics
        if stats is None or not stats.has_min_max:
            return True  # no statistics: copy the column per row rather than trust the first value
        seen.update((stats.min, stats.max))
        if len(seen) > 1:
            return True
    return False


def _batch_constants(scores_path: str | Path, run_key: str) -> dict[str, object]:
    """The batch-wide values of the score file: run_id, scored_at and (one model served) model_version."""
    parquet = pq.ParquetFile(scores_path)
    columns = [c for c in _CONSTANT_COLUMNS if c != "model_version" or not _versions_vary(parquet)]
    first = next(parquet.iter_batches(batch_size=1, columns=columns), None)
    if first is None:
        return {"run_id": run_key}
    values = {c: first.column(c)[0].as_py() for c in columns}
    if values["run_id"] != run_key:
        raise PublishError(f"{scores_path} holds scores of run {values['run_id']!r}, not {run_key!r}: "
                           "publish the score file of this run (nothing was switched)")
    return values


def _per_row_columns(scores_path: str | Path, constants: dict[str, object]) -> str:
    """What COPY carries per row: the customer's columns, the experiment's when the file has them, and
    model_version when it is not one value for the whole batch."""
    names = set(pq.ParquetFile(scores_path).schema_arrow.names)
    extra = [c for c in ("model_version", *EXPERIMENT_COLUMNS, "features_hash") if c in names and c not in constants]
    return ", ".join([_PER_CUSTOMER, *extra])


def _check_constants(batch, constants: dict[str, object], scores_path: str | Path) -> None:
    for column in constants:
        values = pc.unique(batch.column(column)).to_pylist()
        if values != [constants[column]]:
            raise PublishError(f"{scores_path} mixes {column} values {values[:3]}: a score file holds exactly "
                               "one run of one model; re-run the score task (nothing was switched)")


def copy_parquet(cur: PgCursor, parquet_path: str | Path, table: str, columns: str = SCORES_COLUMNS,
                 batch_rows: int = 250_000, freeze: bool = False, on_batch: Callable[[], None] | None = None,
                 check: Callable[[pa.RecordBatch], None] | None = None) -> int:
    """COPY a Parquet file into ``table`` batch by batch (CSV over the wire, bounded memory).

    The next batch is read and CSV-encoded in a helper thread while the server
    ingests the current one (Arrow releases the GIL), so encoding and COPY overlap;
    at most two encoded batches exist at a time.
    """
    options = "FORMAT csv, FREEZE true" if freeze else "FORMAT csv"
    parquet = pq.ParquetFile(parquet_path)
    names = [c.strip() for c in columns.split(",")]
    batches = parquet.iter_batches(batch_size=batch_rows, columns=names if check is None else None)

    def encode_next() -> tuple[int, io.BytesIO] | None:
        batch = next(batches, None)
        if batch is None:
            return None
        if check is not None:
            check(batch)  # the check sees every column; COPY sends only ``columns``
            batch = batch.select(names)
        buf = io.BytesIO()
        pacsv.write_csv(batch, buf, write_options=pacsv.WriteOptions(include_header=False))
        buf.seek(0)
        return batch.num_rows, buf

    rows = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="copy-encode") as pool:
        pending = pool.submit(encode_next)
        while (encoded := pending.result()) is not None:
            pending = pool.submit(encode_next)
            count, buf = encoded
            cur.copy_expert(f"COPY {table} ({columns}) FROM STDIN WITH ({options})", buf)
            rows += count
            if on_batch is not None:
                on_batch()
    return rows


def publish_scores(conn: PgConnection, scores_path: str | Path, run_key: str, model_version: str, retention_runs: int = 7,
                   hook: Callable[[str], None] | None = None, copy_batch_rows: int = 250_000,
                   lock_wait_seconds: float = 900.0, switch_lock_timeout_seconds: float | None = None,
                   switch_deadline_seconds: float | None = None, log_days: int = 0) -> PostgresPublish:
    """Load the run's scores into a private table, then switch readers to it in one transaction.

    Run tables beyond the ``retention_runs`` newest leave the score views; those less than ``log_days`` older
    than this run stay as the prediction log (``churn.prediction_log``), the rest are dropped.

    The switch waits for its locks at most ``switch_lock_timeout_seconds`` per attempt and retries until
    ``switch_deadline_seconds`` (defaults: ``CHURN_PUBLISH_SWITCH_LOCK_TIMEOUT_SECONDS`` / ``..._DEADLINE_SECONDS``).

    ``hook(point)`` is called at named points (``copy`` after each COPY batch,
    ``loaded``, ``switching``, ``switched``); the kill tests use it to stop the process exactly there.
    Database errors become :class:`PublishError` (nothing is switched before the
    single switch transaction commits). The whole publish of a run (staging load and switch)
    holds a session advisory lock of that run: a second publish of the same run (a zombie task
    and its retry) waits for the first instead of dropping its staging table under it.
    """
    try:
        _lock_run(conn, run_key, lock_wait_seconds)
        try:
            return _publish(conn, scores_path, run_key, model_version, retention_runs,
                            hook or (lambda point: None), copy_batch_rows,
                            _SwitchLimits.resolve(switch_lock_timeout_seconds, switch_deadline_seconds), log_days)
        finally:
            if not conn.closed:
                conn.rollback()  # no-op after a commit; needed to run the unlock after an error
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (_LOCK_KEY, run_key))
                conn.commit()
    except PublishError:
        if not conn.closed:
            conn.rollback()  # drops the half-loaded staging table of this attempt
        raise
    except psycopg2.Error as exc:
        if not conn.closed:
            try:
                conn.rollback()
            except psycopg2.Error:
                pass  # the connection is gone: the server rolls the transaction back itself
        raise PublishError(
            f"Postgres publish of run {run_key} failed ({type(exc).__name__}: {_one_line(exc)}). Readers still "
            "see the previous batch (the switch is one transaction). Check that Postgres is reachable "
            "(CHURN_POSTGRES_URL / Airflow connection 'churn_postgres') and let the task retry."
        ) from exc


def _lock_run(conn: PgConnection, run_key: str, wait_seconds: float) -> None:
    """Take the session advisory lock of ``run_key``'s publish, waiting up to ``wait_seconds``."""
    deadline = time.monotonic() + wait_seconds
    while True:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (_LOCK_KEY, run_key))
            got = cur.fetchone()[0]
        conn.commit()
        if got:
            return
        if time.monotonic() > deadline:
            raise PublishError(f"another publish of run {run_key} held its lock for {wait_seconds:.0f} s; wait for "
                               "it to finish (a dead one releases the lock when its connection drops) and retry")
        time.sleep(0.2)


@dataclass(frozen=True)
class _SwitchLimits:
    lock_timeout: float
    deadline: float

    @classmethod
    def resolve(cls, lock_timeout: float | None, deadline: float | None) -> "_SwitchLimits":
        """The given limits, else the settings of this environment."""
        if lock_timeout is None or deadline is None:
            from churn.config import ChurnConfig

            cfg = ChurnConfig.from_env()
            lock_timeout = cfg.publish_switch_lock_timeout_seconds if lock_timeout is None else lock_timeout
            deadline = cfg.publish_switch_deadline_seconds if deadline is None else deadline
        return cls(float(lock_timeout), float(deadline))


class _LocksBusy(Exception):
    """This switch attempt spent its lock budget (readers hold the views): roll back, let them pass, retry."""


class _LockBudget:
    """A cursor whose statements wait for locks only for what is left of one switch attempt's budget.

    ``lock_timeout`` bounds each lock wait; setting it to the remainder before each statement bounds them all
    together, so a reader queued behind a lock this attempt already holds never waits longer than the budget.
    """

    def __init__(self, cur, seconds: float) -> None:
        self._cur = cur
        self._ends_at = time.monotonic() + seconds

    def execute(self, query, params=None) -> None:
        """Run ``query`` with ``lock_timeout`` set to the attempt's remaining budget."""
        left = self._ends_at - time.monotonic()
        if left <= 0.001:
            raise _LocksBusy()
        self._cur.execute("SELECT set_config('lock_timeout', %s, true)", (f"{max(1, int(left * 1000))}ms",))
        self._cur.execute(query, params)

    def __getattr__(self, name):
        return getattr(self._cur, name)


def _lock_holders(conn: PgConnection) -> str:
    """Who holds locks on the churn schema's relations now, for the error message (pid, user, state, age)."""
    try:
        with conn.cursor() as cur:
            cur.execute("""SELECT DISTINCT a.pid, a.usename, a.state, date_trunc('second', now() - a.xact_start)
                           FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                           JOIN pg_class c ON c.oid = l.relation
                           WHERE l.granted AND c.relnamespace = 'churn'::regnamespace AND a.pid <> pg_backend_pid()
                           ORDER BY 4 DESC NULLS LAST LIMIT 5""")
            rows = cur.fetchall()
        conn.rollback()
    except psycopg2.Error:
        conn.rollback()
        return "unknown (see pg_locks)"
    return ", ".join(f"pid {pid} ({user}, {state}, transaction open {age})" for pid, user, state, age in rows) or "none now"


def _publish(conn: PgConnection, scores_path: str | Path, run_key: str, model_version: str, retention_runs: int,
             hook: Callable[[str], None], copy_batch_rows: int, limits: _SwitchLimits,
             log_days: int = 0) -> PostgresPublish:
    ensure_schema(conn)
    final = run_table(run_key)
    staging = f"{final}__loading"
    started = time.monotonic()
    constants = _batch_constants(scores_path, run_key)
    with conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS churn.{staging}")  # leftovers of a killed attempt
        cur.execute(_TABLE_DDL.format(name=f"churn.{staging}"))
        # The batch-wide columns (model version, run id, scoring time) are column defaults while
        # loading, so COPY carries only the four per-customer columns (less than half the bytes).
        for column, value in constants.items():
            cur.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET DEFAULT %s").format(
                sql.Identifier("churn", staging), sql.Identifier(column)), (value,))
        # FREEZE: the table was created in this transaction, so rows can be written pre-frozen
        # (no hint-bit rewrite of the whole table on first read by consumers).
        rows = copy_parquet(cur, scores_path, f"churn.{staging}", columns=_per_row_columns(scores_path, constants),
                            batch_rows=copy_batch_rows,
                            freeze=True, on_batch=lambda: hook("copy"),
                            check=lambda batch: _check_constants(batch, constants, scores_path))
        for column in constants:
            cur.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP DEFAULT").format(
                sql.Identifier("churn", staging), sql.Identifier(column)))
        cur.execute(f"ALTER TABLE churn.{staging} ADD PRIMARY KEY (customer_id)")
        cur.execute(f"ANALYZE churn.{staging}")
    conn.commit()  # loaded but invisible: no view points at the staging table yet
    load_seconds = time.monotonic() - started
    hook("loaded")

    deadline = time.monotonic() + limits.deadline
    pause, attempt = min(0.25, limits.lock_timeout), 0
    while True:
        attempt += 1
        try:
            with conn.cursor() as raw:
                raw.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))  # another publish's switch: short
                is_current = _switch(_LockBudget(raw, limits.lock_timeout), run_key, final, staging, model_version,
                                     rows, retention_runs, log_days)
                hook("switching")  # everything done but the commit: a kill here must leave the old batch served
            conn.commit()
            break
        except (psycopg2.errors.LockNotAvailable, _LocksBusy) as exc:
            conn.rollback()  # gives the locks back: the queued readers go on with the old batch
            left = deadline - time.monotonic()
            if left <= 0:
                raise PublishError(
                    f"the switch to run {run_key} found no moment without readers in the score views for "
                    f"{limits.deadline:.0f} s ({attempt} attempts of {limits.lock_timeout:g} s); readers still see the "
                    f"previous batch. Holding locks now: {_lock_holders(conn)}. End those transactions "
                    "(pg_terminate_backend, or an idle_in_transaction_session_timeout on their role), or raise "
                    "CHURN_PUBLISH_SWITCH_DEADLINE_SECONDS; the task retry publishes the run.") from exc
            log.warning("switch to run %s: readers hold the score views (attempt %s gave up its locks after %g s); "
                        "retrying in %.2f s", run_key, attempt, limits.lock_timeout, min(pause, left))
            time.sleep(min(pause, left))
            pause = min(pause * 2, 5.0)
    hook("switched")
    apply_retention(conn, retention_runs, log_days, limits.lock_timeout)
    log.info("published %s scores to churn.%s (current: %s) in %.2f s", rows, final, is_current, load_seconds)
    return PostgresPublish(f"churn.{final}", rows, is_current, load_seconds)


def _switch(cur: PgCursor, run_key: str, final: str, staging: str, model_version: str, rows: int, retention_runs: int,
            log_days: int = 0) -> bool:
    """Point the views at the run's table (one attempt, in the caller's transaction); retention follows it."""
    cur.execute(
        """INSERT INTO churn.score_runs (run_key, table_name, model_version, rows)
           VALUES (%s, %s, %s, %s)
           ON CONFLICT (run_key) DO UPDATE SET table_name = EXCLUDED.table_name,
             model_version = EXCLUDED.model_version, rows = EXCLUDED.rows, published_at = now()""",
        (run_key, final, model_version, rows),
    )
    cur.execute("SELECT max(run_key) FROM churn.score_runs")
    latest = cur.fetchone()[0]
    is_current = latest == run_key
    # Views first point at the staging table, so the old copy of this run (if any) can be dropped.
    if is_current:
        cur.execute(f"CREATE OR REPLACE VIEW churn.scores_current AS {current_view_sql(staging, run_key)}")
        # Refreshes from before this batch's data cutoff are superseded by it (the view hides them already).
        cur.execute("DELETE FROM churn.score_refreshes WHERE data_at <= %s::timestamptz", (batch_cutoff(run_key),))
    _rebuild_history_view(cur, retention_runs, replace={final: staging})
    if _log_view_uses(cur, final):  # this run published again: the log must let go of its old table first
        _rebuild_log_view(cur, exclude=set(), replace={final: staging})
    cur.execute(f"DROP TABLE IF EXISTS churn.{final}")
    cur.execute(f"ALTER TABLE churn.{staging} RENAME TO {final}")  # views follow the table, not its name
    cur.execute(
        f"ALTER TABLE churn.{final} RENAME CONSTRAINT {staging}_pkey TO {final}_pkey"
    )
    cur.execute("UPDATE churn.score_runs SET is_current = (run_key = %s)", (latest,))
    return is_current


def _log_view_uses(cur: PgCursor, table: str) -> bool:
    cur.execute("SELECT EXISTS (SELECT 1 FROM information_schema.view_table_usage WHERE view_schema = 'churn' AND "
                "view_name = 'prediction_log' AND table_schema = 'churn' AND table_name = %s)", (table,))
    return bool(cur.fetchone()[0])


def apply_retention(conn: PgConnection, retention_runs: int, log_days: int = 0, lock_timeout: float = 5.0) -> int:
    """After a switch: rebuild the prediction log's view over the kept run tables, drop the others whole.

    Its own transaction, outside the switch: an analyst's long query on ``churn.prediction_log`` can delay
    it (each lock is waited for at most ``lock_timeout``), never the batch's switch. When it cannot run now,
    the run tables stay one night more and the next publish drops them. Returns the run tables dropped.
    """
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT set_config('lock_timeout', %s, true)", (f"{max(1, int(lock_timeout * 1000))}ms",))
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))  # never beside another publish's switch
            doomed = _beyond_retention(cur, retention_runs, log_days)
            _rebuild_log_view(cur, exclude={table for _, table in doomed}, replace={})
            _apply_retention(cur, retention_runs, doomed)
        conn.commit()
        return len(doomed)
    except psycopg2.Error as exc:
        holders = "unknown (the connection is gone)"
        try:  # the batch is switched already: nothing here may turn into a failed publish
            conn.rollback()
            holders = _lock_holders(conn)
        except psycopg2.Error:
            pass
        log.warning("retention of the score tables and the prediction log's view deferred to the next publish (%s; "
                    "until then tonight's run is missing from churn.prediction_log); locks held now: %s",
                    _one_line(exc), holders)
        return 0


def _retained(cur: PgCursor, retention_runs: int) -> list[tuple[str, str]]:
    cur.execute(
        "SELECT run_key, table_name FROM churn.score_runs ORDER BY run_key DESC LIMIT %s", (max(retention_runs, 2),)
    )
    return cur.fetchall()


def current_view_sql(table: str, run_key: str) -> str:
    """``churn.scores_current``: the batch's rows, each replaced by its event refresh when that is newer data.

    The first seven columns are the batch contract; ``source`` (``batch`` / ``event``) and ``event_at`` follow,
    then the ``experiment`` and ``arm`` whose model served the score (null outside experiments; an arm is frozen,
    so an event re-score serves the same arm).
    """
    overlaid = ", ".join(f"coalesce(r.{c}, b.{c}) AS {c}" for c in SCORES_COLUMNS.split(", ")[1:])
    return (f"SELECT b.customer_id, {overlaid}, CASE WHEN r.customer_id IS NULL THEN 'batch' ELSE 'event' END "
            f"AS source, r.event_at, b.experiment, b.arm FROM churn.{table} b LEFT JOIN churn.score_refreshes r "
            f"ON r.customer_id = b.customer_id AND r.data_at > '{batch_cutoff(run_key)}'::timestamptz")


def _rebuild_history_view(cur: PgCursor, retention_runs: int, replace: dict[str, str]) -> None:
    tables = [replace.get(table, table) for _, table in _retained(cur, retention_runs)]
    cur.execute("SELECT table_name FROM information_schema.columns WHERE table_schema = 'churn' AND column_name = "
                "'experiment' AND table_name = ANY(%s)", (tables,))
    with_arms = {row[0] for row in cur.fetchall()}
    none = "NULL::text AS experiment, NULL::text AS arm"  # run tables from before experiments, event scores
    selects = [f"SELECT {SCORES_COLUMNS}, {'experiment, arm' if t in with_arms else none} FROM churn.{t}"
               for t in tables]
    selects.append(f"SELECT {SCORES_COLUMNS}, {none} FROM churn.score_refresh_log")  # the event scores between nights
    cur.execute(f"CREATE OR REPLACE VIEW churn.scores_history AS {' UNION ALL '.join(selects)}")  # keeps grants


def _beyond_retention(cur: PgCursor, retention_runs: int, log_days: int = 0) -> list[tuple[str, str]]:
    """(run key, table) of the runs to drop: neither among the ``retention_runs`` newest (the score views) nor
    less than ``log_days`` older than the newest (the prediction log)."""
    keep = {run for run, _ in _retained(cur, retention_runs)}
    logged_from = None
    if keep and log_days > 0:
        try:
            logged_from = (date.fromisoformat(max(keep)[:10]) - timedelta(days=log_days)).isoformat()
        except ValueError:  # run keys that are not dates (ad hoc runs): no age, only the history count applies
            log.warning("run key %s is not a date: the prediction log keeps only the score history's runs", max(keep))
    cur.execute("SELECT run_key, table_name FROM churn.score_runs")
    return [(run, table) for run, table in cur.fetchall()
            if run not in keep and not (logged_from and run[:10] > logged_from)]


def _apply_retention(cur: PgCursor, retention_runs: int, doomed: list[tuple[str, str]]) -> None:
    for run, table in doomed:
        cur.execute(f"DROP TABLE IF EXISTS churn.{table}")
        cur.execute("DELETE FROM churn.score_runs WHERE run_key = %s", (run,))
        log.info("retention: dropped scores of run %s", run)
    keep = {run for run, _ in _retained(cur, retention_runs)}
    if keep:  # event scores older than the oldest retained batch leave the history with it
        cur.execute("DELETE FROM churn.score_refresh_log WHERE data_at <= %s::timestamptz",
                    (batch_cutoff(min(keep)),))


def _rebuild_log_view(cur: PgCursor, exclude: set[str], replace: dict[str, str]) -> None:
    """``churn.prediction_log``: every kept run table (one table per run is the log's partition: retention drops
    a whole table, never deletes rows), with each customer's served score, model, arm and features hash."""
    cur.execute("SELECT table_name FROM churn.score_runs ORDER BY run_key")
    tables = [replace.get(t, t) for (t,) in cur.fetchall() if t not in exclude]
    cur.execute("SELECT table_name FROM information_schema.columns WHERE table_schema = 'churn' AND column_name = "
                "'features_hash' AND table_name = ANY(%s)", (tables,))
    logged = {row[0] for row in cur.fetchall()}  # run tables of this release (older ones lack the columns)
    selects = [f"SELECT {LOG_COLUMNS} FROM churn.{table}" for table in tables if table in logged]
    if not selects:  # no run table of this release yet: the view exists, empty, with its columns
        selects = ["SELECT NULL::text AS run_id, NULL::text AS customer_id, NULL::real AS churn_probability, "
                   "NULL::text AS risk_band, NULL::smallint AS risk_decile, NULL::text AS model_version, "
                   "NULL::text AS experiment, NULL::text AS arm, NULL::bigint AS features_hash, "
                   "NULL::timestamptz AS scored_at WHERE false"]
    cur.execute(f"CREATE OR REPLACE VIEW churn.prediction_log AS {' UNION ALL '.join(selects)}")


def stale_customers(conn: PgConnection, runs: list[str], current_table: str, fetch_rows: int = 50_000) -> Iterator[str]:
    """Ids scored by any of ``runs`` (whose tables still exist) but absent from ``current_table``, streamed."""
    tables = []
    with conn.cursor() as cur:
        for run in runs:
            cur.execute("SELECT to_regclass(%s)", (f"churn.{run_table(run)}",))
            if cur.fetchone()[0] is not None:
                tables.append(f"churn.{run_table(run)}")
            else:
                log.warning("scores of run %s are gone from Postgres: its Redis keys cannot be matched for cleanup",
                            run)
    conn.commit()
    if not tables:
        return
    union = " UNION ".join(f"SELECT customer_id FROM {t}" for t in tables)
    # A named (server-side) cursor streams the difference: memory stays flat for any population.
    with conn.cursor(name="stale_customers") as cur:
        cur.itersize = fetch_rows
        cur.execute(f"{union} EXCEPT SELECT customer_id FROM {current_table}")
        for (customer_id,) in cur:
            yield customer_id
    conn.commit()


def current_run(conn: PgConnection) -> str | None:
    """run_key of the batch readers currently see, or None before the first publish."""
    ensure_schema(conn)
    with conn.cursor() as cur:
        cur.execute("SELECT run_key FROM churn.score_runs WHERE is_current")
        row = cur.fetchone()
    conn.commit()
    return row[0] if row else None


def ensure_reader_role(conn: PgConnection, role: str = "churn_reader", password: str | None = None,
                       idle_in_transaction_seconds: float | None = None) -> None:
    """Create (or update) the read-only consumer role: SELECT on the score views, nothing else.

    The role logs in with ``password`` (taken by the caller from the
    ``CHURN_PG_READER_PASSWORD`` environment variable, never from config or
    code); without one it is created without a password (it can still be used
    through ``SET ROLE`` or trust/peer authentication). The views are owned by
    the publisher, so the role needs no right on the run tables behind them.
    Its sessions left idle inside a transaction end after ``idle_in_transaction_seconds``
    (default ``CHURN_PG_READER_IDLE_IN_TRANSACTION_SECONDS``): such a session holds off the publish switch.
    """
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", role):
        raise ReaderRoleError(f"CHURN_PG_READER_ROLE={role!r} must be a lower-case SQL identifier")
    if idle_in_transaction_seconds is None:
        from churn.config import ChurnConfig

        idle_in_transaction_seconds = ChurnConfig.from_env().pg_reader_idle_in_transaction_seconds
    for attempt in (1, 2):
        try:
            _grant_reader(conn, role, password, idle_in_transaction_seconds)
            return
        except psycopg2.errors.DuplicateObject:
            conn.rollback()  # roles are cluster-wide: another database's publish created it meanwhile
            if attempt == 2:
                raise


def _grant_reader(conn: PgConnection, role: str, password: str | None, idle_in_transaction_seconds: float) -> None:
    ident = sql.Identifier(role)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            cur.execute("SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user")
            manages_roles = bool(cur.fetchone()[0])
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
            exists = cur.fetchone() is not None
            if exists and not manages_roles:
                # Least privilege: a DBA (or `python -m churn.db migrate`) made the role and its settings; the
                # publisher, owner of the views it has just replaced, only grants SELECT on them.
                for view in READER_VIEWS:
                    cur.execute("SELECT to_regclass(%s)", (f"churn.{view}",))
                    if cur.fetchone()[0] is not None:
                        cur.execute(sql.SQL("GRANT SELECT ON churn.{} TO {}").format(sql.Identifier(view), ident))
                conn.commit()
                return
            if not exists:
                cur.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT").format(ident))
            if password:
                # A SCRAM-SHA-256 verifier computed here (libpq), so the cleartext never reaches the server
                # (nor its log, which prints the statement of a failed command).
                verifier = encrypt_password(password, role, conn, "scram-sha-256")
                cur.execute(sql.SQL("ALTER ROLE {} PASSWORD %s").format(ident), (verifier,))
            # Consumers cannot write by accident even through a function or a future grant.
            cur.execute(sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(ident))
            # A consumer that opens a transaction and walks away would hold the views' locks for ever: the
            # publish switch retries around it only until its deadline.
            cur.execute(sql.SQL("ALTER ROLE {} SET idle_in_transaction_session_timeout = %s").format(ident),
                        (f"{max(1, int(idle_in_transaction_seconds * 1000))}ms",))
            cur.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                sql.Identifier(conn.get_dsn_parameters()["dbname"]), ident))
            cur.execute(sql.SQL("GRANT USAGE ON SCHEMA churn TO {}").format(ident))
            for view in READER_VIEWS:
                cur.execute("SELECT to_regclass(%s)", (f"churn.{view}",))
                if cur.fetchone()[0] is not None:
                    cur.execute(sql.SQL("GRANT SELECT ON churn.{} TO {}").format(sql.Identifier(view), ident))
        conn.commit()
    except psycopg2.errors.InsufficientPrivilege as exc:
        conn.rollback()
        raise ReaderRoleError(
            f"the publishing user may not create or grant role {role!r} ({exc.pgerror.strip()}); have a DBA run "
            f"'CREATE ROLE {role} LOGIN PASSWORD ...; ALTER ROLE {role} SET idle_in_transaction_session_timeout = "
            f"{max(1, int(idle_in_transaction_seconds * 1000))}; GRANT USAGE ON SCHEMA churn TO {role}; GRANT SELECT ON "
            f"churn.scores_current, churn.scores_history TO {role}' or set CHURN_PG_READER_ROLE to empty"
        ) from exc
