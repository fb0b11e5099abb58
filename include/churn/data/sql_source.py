"""SQL sources: your own Postgres tables, read by a feature query you own, as of each snapshot date.

``CHURN_SOURCE=sql`` runs the ``.sql`` file named by ``CHURN_SOURCE_QUERY`` on the connection
``CHURN_SOURCE_CONN_ID`` (an Airflow connection, default ``churn_source``). The query is bound with
two parameters, psycopg2 style: ``%(as_of)s`` (the snapshot date) and ``%(label_window_days)s``; it
returns one row per customer with the id, the features and the label "churned within the window after
``as_of``". The training snapshot is taken at ``run date - label_window_days`` (so its label window has
passed); the scoring snapshot at the run date, where the label column is not read.

The demo's own source is one such query (``include/churn/sql/demo_features.sql``, used for
``CHURN_SOURCE=postgres``): one extraction path for both.

Extraction streams: ``COPY (query) TO STDOUT`` flows through a pipe into Arrow's CSV reader (typed by the
dataset spec) and batch by batch into Parquet, so client memory stays bounded whatever the population.

The query is confined (:func:`confine`): it must be exactly one statement (checked by the server's own
parser before anything runs), and it runs in a READ ONLY transaction with ``statement_timeout`` =
``CHURN_SOURCE_STATEMENT_TIMEOUT_SECONDS``. That stops a stray or hostile ``.sql`` file from writing
through the platform; the boundary that holds whatever the query does is the role it runs as: make the
``churn_source`` connection a role that may only SELECT the tables the query reads (a warning is logged
when it runs as a superuser or a role that may write).

The leakage check of such a query lives in :mod:`churn.data.leakage`.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from datetime import date
from pathlib import Path
from typing import Any, TYPE_CHECKING

import pandas as pd
import psycopg2
import psycopg2.errors
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from churn.config import PROJECT_ROOT, ChurnConfig
from churn.data.snapshot import IngestError, Snapshot
from churn.data.spec import DatasetSpec

if TYPE_CHECKING:
    from churn.db import PgConnection, PgCursor

log = logging.getLogger(__name__)

DEMO_QUERY = Path(__file__).resolve().parent.parent / "sql" / "demo_features.sql"
PARAMETERS = ("as_of", "label_window_days", "ids")
# Per-transaction settings of the extract: enough memory to hash the aggregates without spilling, and no JIT,
# whose compile time costs more than it saves on a one-shot query (measured on the demo query: 6.2 s -> 3.9 s
# at 1M); ISO dates in UTC so Arrow reads timestamps without guessing.
_EXTRACT_SETTINGS = "SET LOCAL work_mem = '64MB'; SET LOCAL jit = off; SET LOCAL TimeZone = 'UTC'; " \
                    "SET LOCAL DateStyle = 'ISO'"
# A re-score of many customers at once: the planner misjudges how many of them the query keeps (estimates of one
# row after the population's filters) and joins the per-table aggregates by nested loops, which grow with the
# square of the batch (a 10,000-customer burst took 13 s at 10M customers; hash joins: a fraction of a
# second). Single events keep the planner's choice, which is the fastest for them.
_MANY_IDS = 500
_MANY_IDS_SETTINGS = "SET LOCAL enable_nestloop = off"
TRUE_WORDS = ["t", "true", "1"]  # how Postgres writes booleans in COPY (t/f), plus 0/1 integers
FALSE_WORDS = ["f", "false", "0"]


class SqlSourceError(IngestError):
    """The feature query cannot be used as configured; the message names the file or setting to fix."""


_checked_roles: set[tuple[str, str]] = set()  # (database, role) already checked for write rights in this process


def statement_timeout_seconds() -> float:
    """``CHURN_SOURCE_STATEMENT_TIMEOUT_SECONDS`` of this environment."""
    return ChurnConfig.from_env().source_statement_timeout_seconds


def confine(cur: PgCursor, bound_sql: str, timeout_seconds: float | None = None) -> None:
    """Make the cursor's transaction READ ONLY with a statement timeout, then refuse ``bound_sql`` unless it is one statement.

    Call before running anything of the query in this transaction (the check plans it: planning can run functions).
    """
    if cur.connection.autocommit:
        raise SqlSourceError("the source connection is in autocommit mode: the feature query must run inside a "
                             "READ ONLY transaction (use a connection with autocommit off)")
    seconds = statement_timeout_seconds() if timeout_seconds is None else float(timeout_seconds)
    cur.execute("SET TRANSACTION READ ONLY")  # for this transaction: the next one (an outbox claim) may write
    cur.execute("SELECT set_config('statement_timeout', %s, true)", (f"{max(1, round(seconds * 1000))}ms",))
    _warn_if_role_can_write(cur)
    check_one_statement(cur, bound_sql)


def check_one_statement(cur: PgCursor, bound_sql: str) -> None:
    """Refuse text that the server parses as more than one statement (or as a statement returning no rows).

    The server's parser decides, not a client-side guess at quotes and comments: PL/pgSQL opens a cursor on
    the text (``OPEN ... FOR EXECUTE``), which parses and plans it but runs nothing, and refuses more than
    one statement. The text travels as a quoted literal (quoted twice), so it cannot end the check early.
    """
    import psycopg2.errors

    probe = cur.mogrify("%s", (bound_sql,)).decode()
    body = f"DECLARE feature_query refcursor; BEGIN OPEN feature_query FOR EXECUTE {probe}; CLOSE feature_query; END"
    try:
        cur.execute(cur.mogrify("DO %s", (body,)).decode())
    except psycopg2.errors.InvalidCursorDefinition as exc:  # 42P11: several statements, or one returning no rows
        primary = exc.diag.message_primary or str(exc).strip()
        if "multi-query" in primary:
            raise SqlSourceError(
                "the feature query is more than one SQL statement (a ';' outside a string or comment): it must be "
                "exactly one SELECT; remove everything after it") from exc
        raise SqlSourceError(f"the feature query must be one SELECT returning rows ({primary})") from exc
    except psycopg2.Error as exc:  # the query's own error, without the PL/pgSQL context of the check
        raise query_failed(exc, "the feature query fails on the source database", primary_only=True) from exc


def _warn_if_role_can_write(cur: PgCursor) -> None:
    """Warn (once per role and database) when the query runs as a superuser or a role that may write tables."""
    cur.execute("SELECT current_database(), current_user, rolsuper FROM pg_roles WHERE rolname = current_user")
    database, user, superuser = cur.fetchone()
    if (database, user) in _checked_roles:
        return
    _checked_roles.add((database, user))
    fix = ("create a role that may only SELECT the tables the query reads and point the Airflow connection "
           "CHURN_SOURCE_CONN_ID (default churn_source), or CHURN_SOURCE_URL, at it (docs/guides/bring-your-own-data.md)")
    if superuser:
        log.warning("the feature query runs as %s, a superuser of database %s: it is confined to one READ ONLY "
                    "statement, but a superuser's query can still read server files or end sessions; %s",
                    user, database, fix)
        return
    # The platform's own schema is left out: the event consumer may write its outbox on this connection.
    cur.execute("SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'churn') "
                "AND n.nspname NOT LIKE 'pg\\_%' "
                "AND has_table_privilege(c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE') ORDER BY 1 LIMIT 3")
    writable = [row[0] for row in cur.fetchall()]
    if writable:
        log.warning("the feature query runs as %s, which may write tables of database %s (e.g. %s); %s",
                    user, database, ", ".join(writable), fix)


def query_path(cfg: ChurnConfig) -> Path:
    """The feature query file: ``CHURN_SOURCE_QUERY`` (relative to the project root) or the demo's."""
    if cfg.source == "postgres":
        return DEMO_QUERY
    if not cfg.source_query:
        raise SqlSourceError("CHURN_SOURCE=sql needs CHURN_SOURCE_QUERY: your .sql feature query "
                             "(docs/guides/bring-your-own-data.md); the demo's is include/churn/sql/demo_features.sql")
    path = Path(cfg.source_query).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def load_query(path: str | Path) -> str:
    """The query text of a ``.sql`` file, checked for the ``%(as_of)s`` parameter, without a trailing ``;``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SqlSourceError(f"cannot read the feature query {path} ({exc}): set CHURN_SOURCE_QUERY to a .sql "
                             "file (relative paths are from the project root)") from exc
    body = re.sub(r"[\s;]+$", "", text)
    if "%(as_of)s" not in body:
        raise SqlSourceError(f"{path} does not use %(as_of)s: a feature query must compute each customer's "
                             "features as of the snapshot date it is given (see docs/guides/bring-your-own-data.md)")
    unknown = sorted(set(re.findall(r"%\((\w+)\)s", body)) - set(PARAMETERS))
    if unknown:
        raise SqlSourceError(f"{path} uses unknown parameter(s) {unknown}; the platform binds only "
                             f"{['%(' + p + ')s' for p in PARAMETERS]} (write a literal percent sign as %%)")
    return body


def bind(conn: PgConnection, query: str, as_of: date, label_window_days: int, **extra: Any) -> str:
    """The query with its parameters bound as literals (one statement, usable inside COPY)."""
    with conn.cursor() as cur:
        try:
            # ids: NULL for the nightly snapshot, the event's customers for a re-score (a query may filter
            # each table with it: "AND (%(ids)s::text[] IS NULL OR t.id = ANY(%(ids)s::text[]))")
            return cur.mogrify(query, {"as_of": as_of, "label_window_days": int(label_window_days), "ids": None,
                                       **extra}).decode()
        except (ValueError, TypeError, IndexError) as exc:  # a stray % in the query text
            raise SqlSourceError(f"the feature query cannot be bound ({exc}): write a literal percent sign as %% "
                                 "(e.g. LIKE 'VIP%%')") from exc


def query_failed(exc: psycopg2.Error, what: str, primary_only: bool = False) -> SqlSourceError:
    """The database's error with the fix: the connection or the query, or loading the demo's tables."""
    hint = ""
    if isinstance(exc, psycopg2.errors.UndefinedTable):
        hint = (" Is CHURN_SOURCE_CONN_ID the database that holds your tables? For the demo source: are the "
                "src.* tables loaded (make demo, or python -m churn.demo load)?")
    elif isinstance(exc, psycopg2.errors.QueryCanceled) and "statement timeout" in str(exc):
        hint = (" The query ran longer than CHURN_SOURCE_STATEMENT_TIMEOUT_SECONDS: make it faster (indexes on the "
                "date columns it filters) or raise that setting.")
    elif isinstance(exc, psycopg2.errors.ReadOnlySqlTransaction):
        hint = (" The feature query runs in a READ ONLY transaction and may not write (nor call a function that "
                "writes): compute the features with a plain SELECT.")
    message = (exc.diag.message_primary if primary_only else None) or str(exc).strip()
    return SqlSourceError(f"{what}: {message}.{hint}")


def wrapped(bound_sql: str, columns: str = "*") -> str:
    """The query as the platform runs it: a sub-query (what :func:`confine` checks is exactly what runs)."""
    # The newline: a query ending in a -- comment must not comment out the closing parenthesis.
    return f"SELECT {columns} FROM ({bound_sql}\n) AS feature_query"


def result_columns(conn: PgConnection, bound_sql: str, timeout_seconds: float | None = None) -> list[str]:
    """Column names the bound query returns (planned, not run; confined like every run of it)."""
    try:
        with conn.cursor() as cur:
            confine(cur, wrapped(bound_sql), timeout_seconds)
            cur.execute(f"{wrapped(bound_sql)} LIMIT 0")
            names = [d.name for d in cur.description]
        conn.rollback()
    except psycopg2.Error as exc:
        conn.rollback()
        raise query_failed(exc, "the feature query fails on the source database") from exc
    except SqlSourceError:
        conn.rollback()
        raise
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SqlSourceError(f"the feature query returns column name(s) {dupes} more than once; alias them")
    return names


def read_sample(conn: PgConnection, bound_sql: str, rows: int, timeout_seconds: float | None = None) -> pd.DataFrame:
    """The first ``rows`` rows of the bound query, every cell as text (what kind inference reads)."""
    try:
        with conn.cursor() as cur:
            confine(cur, wrapped(bound_sql), timeout_seconds)
            cur.execute(f"{wrapped(bound_sql)} LIMIT %s", (int(rows),))
            names = [d.name for d in cur.description]
            data = cur.fetchall()
        conn.rollback()
    except psycopg2.Error as exc:
        conn.rollback()
        raise query_failed(exc, "the feature query fails on the source database") from exc
    except SqlSourceError:
        conn.rollback()
        raise

    def text(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    return pd.DataFrame([[text(v) for v in row] for row in data], columns=names, dtype=object)


def arrow_schema(spec: DatasetSpec, labelled: bool) -> pa.Schema:
    """Arrow types of a SQL snapshot: text id and categoricals, float numerics, booleans, the label."""
    fields = spec.arrow_fields()
    if labelled:
        # raw text when CHURN_LABEL_VALUES maps it (validation checks the values), else 0/1
        fields.append((spec.label_column, pa.string() if spec.label_values else pa.int8()))
    return pa.schema(fields)


def quote_ident(name: str) -> str:
    """A SQL identifier in double quotes (embedded quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'


def extract_query_snapshot(conn: PgConnection, query: str, as_of: date, out_path: str | Path, spec: DatasetSpec, *,
                           labelled: bool, label_window_days: int = 0, ids: list[str] | None = None,
                           timeout_seconds: float | None = None) -> Snapshot:
    """Stream the query's result as of ``as_of`` into a typed Parquet snapshot (label only when ``labelled``).

    ``ids``: only these customers (the event re-score: the same query, its result filtered by id).
    ``timeout_seconds``: the statement timeout (default ``CHURN_SOURCE_STATEMENT_TIMEOUT_SECONDS``).
    """
    if timeout_seconds is None:
        timeout_seconds = statement_timeout_seconds()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if ids is not None:
        query = (f"SELECT * FROM ({query}\n) AS customers_to_rescore "
                 f"WHERE {quote_ident(spec.id_column)}::text = ANY(%(ids)s::text[])")
    sql = bind(conn, query, as_of, label_window_days, **({"ids": list(ids)} if ids is not None else {}))
    available = result_columns(conn, sql, timeout_seconds)
    schema = arrow_schema(spec, labelled)
    missing = [c for c in schema.names if c not in available]
    if missing:
        raise SqlSourceError(f"the feature query returns no column(s) {missing} (it returns {available[:40]}): "
                             "fix the query's aliases or the CHURN_FILE_*_COLUMN(S) settings")
    ignored = sorted(set(available) - set(schema.names) - {spec.label_column})
    selected = ", ".join(quote_ident(c) for c in schema.names)
    # The server's COPY output flows through a pipe into Arrow's CSV reader while the query is still
    # running (a helper thread drives COPY): no temporary CSV on disk, and parsing overlaps the query.
    read_fd, write_fd = os.pipe()
    copy_error: list[BaseException] = []

    def copy_out() -> None:
        try:
            with os.fdopen(write_fd, "wb", buffering=1 << 20) as pipe_in, conn.cursor() as cur:
                confine(cur, wrapped(sql, selected), timeout_seconds)
                cur.execute(_EXTRACT_SETTINGS)
                if ids is not None and len(ids) >= _MANY_IDS:
                    cur.execute(_MANY_IDS_SETTINGS)
                cur.copy_expert(f"COPY ({wrapped(sql, selected)}) TO STDOUT "
                                "WITH (FORMAT csv, HEADER true)", pipe_in)
            conn.commit()
        except BaseException as exc:  # re-raised by the caller's thread below
            copy_error.append(exc)
            try:
                conn.rollback()
            except psycopg2.Error:  # a broken connection cannot roll back; the original error is what matters
                log.warning("rollback after a failed snapshot COPY failed too; the connection is unusable")

    copier = threading.Thread(target=copy_out, name="snapshot-copy", daemon=True)
    copier.start()
    rows = 0
    tmp_parquet = out_path.with_suffix(".parquet.tmp")
    conversion_error: pa.ArrowInvalid | None = None
    try:
        with os.fdopen(read_fd, "rb") as pipe_out:
            try:
                reader = pacsv.open_csv(
                    pipe_out,
                    read_options=pacsv.ReadOptions(block_size=4 << 20),
                    convert_options=pacsv.ConvertOptions(column_types=schema, true_values=TRUE_WORDS,
                                                         false_values=FALSE_WORDS, strings_can_be_null=False),
                )
                with pq.ParquetWriter(tmp_parquet, schema) as writer:
                    for batch in reader:
                        writer.write_batch(batch.select(schema.names))
                        rows += batch.num_rows
            except pa.ArrowInvalid as exc:
                # A failed COPY shows up here as truncated CSV: its error, once the thread ends, is the cause.
                pipe_out.close()  # unblocks a COPY still writing, which then fails and is rolled back
                copier.join()
                if not copy_error:
                    conversion_error = exc
        copier.join()
        if copy_error:
            exc = copy_error[0]
            if isinstance(exc, psycopg2.Error):
                raise query_failed(exc, f"could not read the feature query's result for snapshot {as_of}") from exc
            raise exc
        if conversion_error is not None:
            raise SqlSourceError(
                f"the feature query's result for {as_of} does not match the dataset spec's types: "
                f"{conversion_error}. Cast the column in the query (::float8 for numbers, ::int for a boolean "
                "label), map a text label with CHURN_LABEL_VALUES, or pin the column's kind with "
                "CHURN_FILE_*_COLUMNS") from conversion_error
        os.replace(tmp_parquet, out_path)  # readers never see a half-written snapshot
    finally:
        copier.join()
        tmp_parquet.unlink(missing_ok=True)
    if ignored:
        log.info("feature query columns not in the dataset spec (not read): %s", ignored)
    log.info("snapshot %s: %s rows -> %s", as_of, rows, out_path)
    return Snapshot(str(out_path), rows, as_of.isoformat(), labelled, ignored_columns=ignored or None)

