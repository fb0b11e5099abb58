"""Re-score events, durably: an outbox table filled by triggers on the source tables, claimed exactly once.

A change to a source table that moves a customer's features (a support contact, a changed customer row,
a usage month) inserts one row per touched customer into ``churn.rescore_outbox`` **in the same
transaction** as the change (statement-level triggers with transition tables: one INSERT per statement,
however many rows it wrote). Nothing is lost when no consumer runs; a consumer claims a batch
(``FOR UPDATE SKIP LOCKED``: two consumers never claim the same event), and marks it done only after
the new scores are in both stores, so a consumer that dies mid-batch loses nothing: its claim expires
after ``lease_seconds`` (or its retry, with the same claimer id, takes the batch back at once).

Bulk loads that must not produce events (the demo's nightly data load) set the session setting
``churn.suppress_outbox = on``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, TYPE_CHECKING

if TYPE_CHECKING:
    from churn.db import PgConnection

log = logging.getLogger(__name__)

OUTBOX_DDL = """
CREATE SCHEMA IF NOT EXISTS churn;
CREATE TABLE IF NOT EXISTS churn.rescore_outbox (
    event_id bigserial PRIMARY KEY,
    customer_id text,                    -- null when the changed row had no id (quarantined)
    kind text NOT NULL,                  -- the source table's name, or 'manual'
    source_table text NOT NULL,
    event_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    claimed_by text,
    claimed_at timestamptz,
    attempts integer NOT NULL DEFAULT 0,
    done_at timestamptz,
    outcome text                         -- rescored | quarantined | superseded
);
CREATE INDEX IF NOT EXISTS rescore_outbox_pending ON churn.rescore_outbox (event_id) WHERE done_at IS NULL;
-- File sources: the changed customers' rows of a delta file, kept with their event (the features to score).
CREATE TABLE IF NOT EXISTS churn.rescore_delta_rows (
    event_id bigint PRIMARY KEY REFERENCES churn.rescore_outbox (event_id) ON DELETE CASCADE,
    record jsonb NOT NULL
);
CREATE INDEX IF NOT EXISTS rescore_outbox_done ON churn.rescore_outbox (done_at) WHERE done_at IS NOT NULL;
-- "was this delta file recorded" and "has this kind of event ever come" look up by these (both grow nightly).
CREATE INDEX IF NOT EXISTS rescore_outbox_source ON churn.rescore_outbox (source_table);
CREATE INDEX IF NOT EXISTS rescore_outbox_kind ON churn.rescore_outbox (kind);
"""

# The trigger function runs on the source application's writes, so it must work for a role that has no right
# on schema churn and must never make that write fail:
# - SECURITY DEFINER, owned by OUTBOX_WRITER_ROLE (NOLOGIN, may only INSERT into the outbox): the writing role
#   needs no grant on churn, and the function can do nothing else, whoever fires it;
# - a pinned search_path (pg_catalog, then pg_temp) and schema-qualified names: a writer cannot make it resolve
#   a name to an object of its own (operators resolve in pg_catalog, first on the path);
# - an exception block: if the outbox insert fails (a revoked grant, a dropped table), the write still commits
#   and a WARNING names the fix. Decision: an event lost is healed by the next nightly run (it re-scores
#   everyone); a source write refused is an outage of the user's application.
# FUNCTION_MARK in the body lets install tell this version from an older one and replace it.
OUTBOX_WRITER_ROLE = "churn_outbox_writer"
TRIGGER_FUNCTION = "churn.record_rescore_events()"
FUNCTION_MARK = "churn outbox trigger v2"
_PINNED_PATH = "search_path=pg_catalog, pg_temp"
FUNCTION_DDL = """
CREATE OR REPLACE FUNCTION churn.record_rescore_events() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
-- churn outbox trigger v2 (see churn.data.outbox)
BEGIN
    IF coalesce(pg_catalog.current_setting('churn.suppress_outbox', true), '') = 'on' THEN
        RETURN NULL;
    END IF;
    BEGIN
        -- TG_ARGV[0]: the customer id column of the table
        EXECUTE pg_catalog.format('INSERT INTO churn.rescore_outbox (customer_id, kind, source_table) '
                                  'SELECT DISTINCT (pg_catalog.to_jsonb(r) ->> %L), %L, %L FROM changed_rows r',
                                  TG_ARGV[0], TG_TABLE_NAME, TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME);
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'churn: re-score event of %.% not recorded (%: %); the write itself succeeded',
            TG_TABLE_SCHEMA, TG_TABLE_NAME, SQLSTATE, SQLERRM
            USING HINT = 'run "python -m churn.data.outbox install" as a role that may create roles '
                         '(it re-grants INSERT on churn.rescore_outbox to churn_outbox_writer)';
    END;
    RETURN NULL;
END
$fn$;
"""

DEMO_TABLES = ("src.support_contacts", "src.customers", "src.usage_monthly")
_NAME = re.compile(r"^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*$")


class OutboxError(RuntimeError):
    """The outbox cannot be installed or used as configured; the message says what to fix."""


@dataclass(frozen=True)
class ClaimedEvent:
    """One outbox entry claimed by a consumer."""

    event_id: int
    customer_id: str | None
    kind: str
    event_at: str
    attempts: int = 1
    """How many times it has been claimed, this claim included."""


def ensure_outbox(conn: PgConnection, *, strict: bool = False) -> None:
    """Create the outbox tables and the secured trigger function (idempotent, no lock on the source tables).

    ``strict`` (installing triggers): a trigger function that cannot be secured is an :class:`OutboxError`
    saying what a DBA must run; otherwise (the consumer's calls, which do not depend on it) a warning.
    """
    # Checked first: CREATE INDEX IF NOT EXISTS locks the table before it looks, and would queue behind
    # (and block) the source's writers on every claim.
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('churn.rescore_outbox_done') IS NOT NULL "
                    "AND to_regclass('churn.rescore_delta_rows') IS NOT NULL "
                    "AND to_regclass('churn.rescore_outbox_source') IS NOT NULL "
                    "AND to_regclass('churn.rescore_outbox_kind') IS NOT NULL")
        if not cur.fetchone()[0]:
            cur.execute("SELECT pg_advisory_xact_lock(7414)")  # two first runs at once: one creates
            cur.execute(OUTBOX_DDL)
    conn.commit()
    problems = trigger_function_problems(conn)
    if not problems:
        return
    problems = _secure_trigger_function(conn) or trigger_function_problems(conn)
    if problems:
        message = (f"the re-score trigger function {TRIGGER_FUNCTION} is not safe to fire from the source "
                   f"application's writes: {'; '.join(problems)}. Fix: run 'python -m churn.data.outbox install' as a "
                   f"superuser, or have a DBA run: {_DBA_FIX}")
        if strict:
            raise OutboxError(message)
        if not _warned:
            _warned.append(True)
            log.warning("%s", message)


_warned: list[bool] = []  # the consumer's warning about an unsecured trigger function, once per process
_DBA_FIX = (f"CREATE ROLE {OUTBOX_WRITER_ROLE} NOLOGIN; GRANT USAGE ON SCHEMA churn TO {OUTBOX_WRITER_ROLE}; "
            f"GRANT INSERT ON churn.rescore_outbox TO {OUTBOX_WRITER_ROLE}; GRANT USAGE ON SEQUENCE "
            f"churn.rescore_outbox_event_id_seq TO {OUTBOX_WRITER_ROLE}; then, as a superuser, the function of "
            f"churn.data.outbox.FUNCTION_DDL, REVOKE ALL ON FUNCTION {TRIGGER_FUNCTION} FROM PUBLIC; "
            f"ALTER FUNCTION {TRIGGER_FUNCTION} OWNER TO {OUTBOX_WRITER_ROLE}")


def trigger_function_problems(conn: PgConnection) -> list[str]:
    """What keeps the trigger function from being safe for any writer (empty when it is): owner, security, path."""
    with conn.cursor() as cur:
        cur.execute(
            """SELECT p.prosecdef, pg_get_userbyid(p.proowner), coalesce(%(path)s = ANY(p.proconfig), false),
                      strpos(p.prosrc, %(mark)s) > 0,
                      p.proacl IS NOT NULL AND NOT EXISTS (SELECT 1 FROM aclexplode(p.proacl) a WHERE a.grantee = 0),
                      r.rolsuper OR r.rolcanlogin OR r.rolbypassrls
               FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner
               WHERE p.oid = to_regprocedure(%(fn)s)""",
            {"path": _PINNED_PATH, "mark": FUNCTION_MARK, "fn": TRIGGER_FUNCTION})
        row = cur.fetchone()
        if row is None:
            conn.rollback()
            return [f"{TRIGGER_FUNCTION} does not exist"]
        definer, owner, pinned, current, private, powerful = row
        problems = []
        if not current:
            problems.append("it is an older version (without the exception block that keeps source writes safe)")
        if not definer:
            problems.append("it is not SECURITY DEFINER (it runs as the writing role, which needs rights on churn)")
        if not pinned:
            problems.append("its search_path is not pinned to 'pg_catalog, pg_temp'")
        if not private:
            problems.append("PUBLIC may execute it")
        if owner != OUTBOX_WRITER_ROLE:
            problems.append(f"it is owned by {owner}, not by the role {OUTBOX_WRITER_ROLE} that may only insert "
                            "into the outbox")
        elif powerful:
            problems.append(f"its owner {owner} may log in or is a superuser (it must be NOLOGIN NOSUPERUSER)")
        else:
            cur.execute("SELECT has_schema_privilege(%(r)s, 'churn', 'USAGE') "
                        "AND has_table_privilege(%(r)s, 'churn.rescore_outbox', 'INSERT') "
                        "AND has_sequence_privilege(%(r)s, pg_get_serial_sequence('churn.rescore_outbox', 'event_id'), "
                        "'USAGE')", {"r": OUTBOX_WRITER_ROLE})
            if not cur.fetchone()[0]:
                problems.append(f"{OUTBOX_WRITER_ROLE} may not insert into churn.rescore_outbox (USAGE on schema "
                                "churn, INSERT on the table, USAGE on its sequence)")
    conn.rollback()
    return problems


def _secure_trigger_function(conn: PgConnection) -> list[str]:
    """(Re)create the trigger function as SECURITY DEFINER owned by the writer role; why not, when refused."""
    import psycopg2
    from psycopg2 import sql

    role = sql.Identifier(OUTBOX_WRITER_ROLE)
    for attempt in (1, 2):
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(7414)")
                cur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
                superuser = bool(cur.fetchone()[0])
                cur.execute("SELECT rolsuper OR rolcanlogin OR rolbypassrls FROM pg_roles WHERE rolname = %s",
                            (OUTBOX_WRITER_ROLE,))
                found = cur.fetchone()
                attributes = sql.SQL("NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS")
                if found is None:
                    cur.execute(sql.SQL("CREATE ROLE {} ").format(role) + attributes)
                elif found[0]:
                    cur.execute(sql.SQL("ALTER ROLE {} ").format(role) + attributes)
                cur.execute(sql.SQL("GRANT USAGE ON SCHEMA churn TO {}").format(role))
                # INSERT and nothing else: whoever fires the trigger, the function can only add outbox rows.
                cur.execute(sql.SQL("REVOKE ALL ON churn.rescore_outbox FROM {}").format(role))
                cur.execute(sql.SQL("GRANT INSERT ON churn.rescore_outbox TO {}").format(role))
                cur.execute("SELECT pg_get_serial_sequence('churn.rescore_outbox', 'event_id')")
                cur.execute(sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(sql.SQL(cur.fetchone()[0]), role))
                cur.execute(FUNCTION_DDL)
                # A trigger function cannot be called directly, but EXECUTE is what CREATE TRIGGER checks: only
                # the installer may attach it to a table (so nobody else can write outbox rows through it).
                cur.execute(f"REVOKE ALL ON FUNCTION {TRIGGER_FUNCTION} FROM PUBLIC")
                cur.execute(sql.SQL(f"ALTER FUNCTION {TRIGGER_FUNCTION} OWNER TO {{}}").format(role))
                if not superuser:
                    cur.execute(f"GRANT EXECUTE ON FUNCTION {TRIGGER_FUNCTION} TO CURRENT_USER")
            conn.commit()
            log.info("re-score trigger function secured: SECURITY DEFINER, owned by %s", OUTBOX_WRITER_ROLE)
            return []
        except psycopg2.errors.DuplicateObject:
            conn.rollback()  # roles are cluster-wide: another database's install created it meanwhile
            if attempt == 2:
                raise
        except psycopg2.errors.InsufficientPrivilege as exc:
            conn.rollback()  # nothing half-done: never a SECURITY DEFINER function owned by the installer
            with conn.cursor() as cur:
                cur.execute("SELECT current_user")
                user = cur.fetchone()[0]
            conn.rollback()
            return [f"{user} may not set it up ({(exc.pgerror or str(exc)).strip().splitlines()[0]})",
                    *trigger_function_problems(conn)]
    return []


def install_triggers(conn: PgConnection, tables: Iterable[str], id_column: str) -> list[str]:
    """Statement-level INSERT and UPDATE triggers on each ``schema.table`` writing the outbox; returns those added.

    The trigger function is checked first (SECURITY DEFINER, pinned search_path, owned by the writer role):
    an application role that may only write its own table must be able to go on writing it.
    """
    ensure_outbox(conn, strict=True)
    added = []
    with conn.cursor() as cur:
        for table in tables:
            if not _NAME.match(table):
                raise OutboxError(f"CHURN_RESCORE_TABLES entry {table!r} must be schema.table (lower case)")
            cur.execute("SELECT to_regclass(%s)", (table,))
            if cur.fetchone()[0] is None:
                raise OutboxError(f"cannot install re-score triggers: table {table} does not exist (load the "
                                  "source tables first, or fix CHURN_RESCORE_TABLES)")
            cur.execute("SELECT 1 FROM information_schema.columns WHERE table_schema || '.' || table_name = %s "
                        "AND column_name = %s", (table, id_column))
            if cur.fetchone() is None:
                raise OutboxError(f"table {table} has no column {id_column!r} naming the customer")
            for event in ("insert", "update"):
                name = f"churn_rescore_{event}"
                cur.execute("SELECT 1 FROM pg_trigger WHERE tgrelid = %s::regclass AND tgname = %s", (table, name))
                if cur.fetchone():
                    continue
                cur.execute(f"CREATE TRIGGER {name} AFTER {event.upper()} ON {table} REFERENCING NEW TABLE AS "
                            f"changed_rows FOR EACH STATEMENT EXECUTE FUNCTION churn.record_rescore_events(%s)",
                            (id_column,))
                added.append(f"{table}:{event}")
    conn.commit()
    if added:
        log.info("re-score triggers installed: %s", added)
    for ddl in missing_id_indexes(conn, tables, id_column):
        # The re-score reads only the event's customers in every table: without an index led by the id
        # column each event scans the whole table and its latency grows with the population.
        log.warning("no index on the customer id of a source table; an event re-score would scan it whole. "
                    "Create one (as the table's owner): %s", ddl)
    return added


def missing_id_indexes(conn: PgConnection, tables: Iterable[str], id_column: str) -> list[str]:
    """``CREATE INDEX`` statements for the tables whose ``id_column`` leads no valid index (empty: all indexed)."""
    missing = []
    with conn.cursor() as cur:
        for table in tables:
            if not _NAME.match(table):
                raise OutboxError(f"CHURN_RESCORE_TABLES entry {table!r} must be schema.table (lower case)")
            cur.execute(
                "SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
                "WHERE i.indrelid = %s::regclass AND i.indisvalid AND a.attname = %s", (table, id_column))
            if cur.fetchone() is None:
                name = f"{table.split('.', 1)[1]}_{id_column}_idx"[:63]
                missing.append(f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{name}" ON {table} ("{id_column}");')
    conn.rollback()
    return missing


def enqueue(conn: PgConnection, customer_ids: Iterable[str], kind: str = "manual") -> int:
    """Record a re-score request for each id (the manual trigger's path into the same outbox)."""
    ensure_outbox(conn)
    ids = sorted({str(i) for i in customer_ids})
    with conn.cursor() as cur:
        cur.execute("INSERT INTO churn.rescore_outbox (customer_id, kind, source_table) "
                    "SELECT unnest(%s::text[]), %s, 'manual'", (ids, kind))
    conn.commit()
    return len(ids)


DELTA_SUFFIXES = (".csv", ".gz", ".bz2", ".parquet", ".pq")
READY_SUFFIX = ".ready"  # "<file>.ready" beside a delta file: the writer says the file is complete
DELTA_INSERT_ROWS = 5_000  # rows per INSERT while recording a delta file (one transaction per file)


def delta_files(folder: str | Path, *, require_ready: bool = False) -> list[Path]:
    """Complete delta files waiting in ``folder`` (not yet moved to ``done/`` or ``rejected/``), in name order.

    Complete means written under another name and renamed in (names starting with ``.`` or ending in
    ``.tmp``/``.partial``/``.part`` are ignored), and with ``require_ready`` also announced by an empty
    ``<file>.ready`` beside it. Order is the name's, not the arrival time's: writers name files so that
    they sort by data time (``delta_2026-11-25T101500.csv``), so a late file never overtakes a newer one.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    files = [p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")
             and p.suffix.lower() in DELTA_SUFFIXES]
    if require_ready:
        files = [p for p in files if p.with_name(p.name + READY_SUFFIX).is_file()]
    return sorted(files, key=lambda p: p.name)


def _delta_chunks(path: Path, chunk_rows: int, delimiter: str, encoding: str):
    """The delta file's rows as text frames of at most ``chunk_rows`` (never the whole file in memory)."""
    import pandas as pd

    from churn.data.text import text_codec

    if path.suffix.lower() in {".parquet", ".pq"}:
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
            frame = batch.to_pandas()
            yield frame.astype("str").where(frame.notna(), "")
        return
    yield from pd.read_csv(path, sep=delimiter, encoding=text_codec(encoding), dtype=str, keep_default_na=False,
                           compression="infer", chunksize=chunk_rows)


def ingest_delta_files(conn: PgConnection, folder: str | Path, id_column: str, required_columns: list[str], *,
                       delimiter: str = ",", encoding: str = "utf-8", require_ready: bool = False,
                       chunk_rows: int = 50_000) -> dict:
    """Record each delta file's rows as events (one per row, with the row) and move the file to ``done/``.

    A file is recorded in one transaction, keyed by its content hash, so a crash before the move never
    records it twice. A file that cannot be read, or lacks the id or a feature column, is moved to
    ``rejected/`` with ``<name>.reason.txt`` and a ``churn.quarantine`` row (dataset ``event_outbox``).
    The file is read in chunks of ``chunk_rows`` and inserted ``DELTA_INSERT_ROWS`` rows per statement.
    """
    import psycopg2
    from psycopg2.extras import execute_values

    from churn.db import to_jsonb
    from churn.fileio import file_sha256, write_text_atomic

    ensure_outbox(conn)
    root = Path(folder)
    done = {"files": 0, "events": 0, "rejected": []}
    for path in delta_files(root, require_ready=require_ready):
        digest = file_sha256(path)
        source = f"delta:{path.name}:{digest[:16]}"
        with conn.cursor() as cur:
            cur.execute("SELECT EXISTS (SELECT 1 FROM churn.rescore_outbox WHERE source_table = %s)", (source,))
            seen = cur.fetchone()[0]
        conn.rollback()
        reason = None
        if not seen:
            events = 0
            try:
                with conn.cursor() as cur:
                    for frame in _delta_chunks(path, chunk_rows, delimiter, encoding):
                        frame = frame.rename(columns=str.strip)
                        missing = [c for c in required_columns if c not in frame.columns]
                        if missing:
                            reason = (f"delta file lacks column(s) {missing}: it must carry the file source's id "
                                      "and feature columns for each changed customer")
                            break
                        records = frame.to_dict(orient="records")
                        for start in range(0, len(records), DELTA_INSERT_ROWS):
                            part = records[start:start + DELTA_INSERT_ROWS]
                            # Ids drawn first, ascending, then given in the file's row order: a later row of a
                            # customer has the higher event id, and is the newer one when the deltas are applied.
                            cur.execute("SELECT nextval(pg_get_serial_sequence('churn.rescore_outbox', 'event_id')) "
                                        "FROM generate_series(1, %s)", (len(part),))
                            ids = sorted(row[0] for row in cur.fetchall())
                            execute_values(cur, "INSERT INTO churn.rescore_outbox (event_id, customer_id, kind, "
                                           "source_table) VALUES %s",
                                           [(i, str(r[id_column]).strip() or None, "delta", source)
                                            for i, r in zip(ids, part)], page_size=len(part))
                            execute_values(cur, "INSERT INTO churn.rescore_delta_rows (event_id, record) VALUES %s",
                                           [(i, to_jsonb(r)) for i, r in zip(ids, part)], page_size=len(part))
                            events += len(part)
            except (ValueError, OSError, UnicodeDecodeError, psycopg2.Error) as exc:
                reason = f"unreadable delta file ({type(exc).__name__}: {str(exc)[:300]})"
            if reason is None:
                conn.commit()  # the whole file's events appear at once, or none of them
                done["events"] += events
            else:
                conn.rollback()
        target = root / ("rejected" if reason else "done")
        target.mkdir(exist_ok=True)
        path.replace(target / path.name)
        path.with_name(path.name + READY_SUFFIX).unlink(missing_ok=True)
        if reason:
            write_text_atomic(target / f"{path.name}.reason.txt", reason + "\n")
            with conn.cursor() as cur:
                cur.execute("INSERT INTO churn.quarantine (run_key, dataset, row_number, customer_id, reasons, record) "
                            "VALUES (%s, 'event_outbox', 0, NULL, %s, %s) ON CONFLICT DO NOTHING",
                            (f"delta-{digest[:16]}", [reason], to_jsonb({"file": path.name})))
            conn.commit()
            log.warning("delta file %s rejected: %s", path.name, reason)
            done["rejected"].append(path.name)
        else:
            done["files"] += 1
    return done


def delta_records(conn: PgConnection, event_ids: list[int]) -> dict[int, dict]:
    """The delta rows recorded with these events."""
    with conn.cursor() as cur:
        cur.execute("SELECT event_id, record FROM churn.rescore_delta_rows WHERE event_id = ANY(%s)",
                    (list(event_ids),))
        rows = {r[0]: r[1] for r in cur.fetchall()}
    conn.rollback()
    return rows


def claim(conn: PgConnection, claimer: str, limit: int, lease_seconds: float) -> list[ClaimedEvent]:
    """Claim up to ``limit`` pending events for ``claimer`` (its own unfinished claims first, then expired ones)."""
    ensure_outbox(conn)
    with conn.cursor() as cur:
        cur.execute(
            """WITH picked AS (
                   SELECT event_id FROM churn.rescore_outbox
                   WHERE done_at IS NULL
                     AND (claimed_by IS NULL OR claimed_by = %(claimer)s
                          OR claimed_at < now() - %(lease)s * interval '1 second')
                   ORDER BY event_id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
               UPDATE churn.rescore_outbox o
               SET claimed_by = %(claimer)s, claimed_at = now(), attempts = o.attempts + 1
               FROM picked WHERE o.event_id = picked.event_id
               RETURNING o.event_id, o.customer_id, o.kind, o.event_at, o.attempts""",
            {"claimer": claimer, "lease": float(lease_seconds), "limit": int(limit)})
        rows = cur.fetchall()
    conn.commit()
    return sorted((ClaimedEvent(r[0], r[1], r[2], r[3].isoformat(), r[4]) for r in rows), key=lambda e: e.event_id)


def complete(conn: PgConnection, claimer: str, outcomes: dict[int, str]) -> int:
    """Mark claimed events done with their outcome; only this claimer's claims (a lost claim changes nothing)."""
    if not outcomes:
        return 0
    by_outcome: dict[str, list[int]] = {}
    for event_id, outcome in outcomes.items():
        by_outcome.setdefault(outcome, []).append(int(event_id))
    done = 0
    with conn.cursor() as cur:
        for outcome, ids in by_outcome.items():
            cur.execute("UPDATE churn.rescore_outbox SET done_at = clock_timestamp(), outcome = %s "
                        "WHERE event_id = ANY(%s) AND claimed_by = %s AND done_at IS NULL", (outcome, ids, claimer))
            done += cur.rowcount
    conn.commit()
    return done


def pending(conn: PgConnection) -> tuple[int, int | None]:
    """(number of events not yet done, the highest pending event id)."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('churn.rescore_outbox')")
        if cur.fetchone()[0] is None:
            conn.rollback()
            return 0, None
        cur.execute("SELECT count(*), max(event_id) FROM churn.rescore_outbox WHERE done_at IS NULL")
        count, highest = cur.fetchone()
    conn.rollback()
    return int(count), highest


def activity(conn: PgConnection, window_minutes: int = 60) -> dict:
    """What the Churn page and the alerts show: backlog, oldest waiting, refreshed recently, lag p50/p95."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('churn.rescore_outbox')")
        if cur.fetchone()[0] is None:
            conn.rollback()
            return {"installed": False, "waiting": 0, "oldest_waiting_seconds": None, "done_last_window": 0,
                    "rescored_last_window": 0, "quarantined_last_window": 0, "lag_p50_seconds": None,
                    "lag_p95_seconds": None, "window_minutes": window_minutes}
        cur.execute("SELECT count(*), extract(epoch FROM now() - min(event_at)) FROM churn.rescore_outbox "
                    "WHERE done_at IS NULL")
        waiting, oldest = cur.fetchone()
        cur.execute(
            """SELECT count(*), count(*) FILTER (WHERE outcome = 'rescored'),
                      count(*) FILTER (WHERE outcome = 'quarantined'),
                      percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM done_at - event_at)),
                      percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM done_at - event_at))
               FROM churn.rescore_outbox WHERE done_at >= now() - %s * interval '1 minute'""", (window_minutes,))
        done, rescored, quarantined, p50, p95 = cur.fetchone()
    conn.rollback()

    def seconds(value) -> float | None:
        return None if value is None else round(float(value), 3)

    return {"installed": True, "waiting": int(waiting), "oldest_waiting_seconds": seconds(oldest),
            "done_last_window": int(done), "rescored_last_window": int(rescored),
            "quarantined_last_window": int(quarantined), "lag_p50_seconds": seconds(p50),
            "lag_p95_seconds": seconds(p95), "window_minutes": window_minutes}


def falling_behind(stats: dict, max_waiting: int, max_lag_seconds: float) -> list[str]:
    """The alert reasons of an :func:`activity` figure set: too many events waiting, or a p95 lag too long."""
    reasons = []
    if stats.get("waiting", 0) > max_waiting:
        reasons.append(f"{stats['waiting']} events waiting, more than CHURN_RESCORE_MAX_WAITING={max_waiting}")
    lag = stats.get("lag_p95_seconds")
    if lag is not None and lag > max_lag_seconds:
        reasons.append(f"p95 event-to-score lag {lag:.1f} s over the last {stats.get('window_minutes')} min, more than "
                       f"CHURN_RESCORE_MAX_LAG_SECONDS={max_lag_seconds:g}")
    return reasons


def _main(argv: list[str] | None = None) -> int:
    """``install`` the triggers, ``status`` of the outbox, ``enqueue`` ids for a re-score."""
    from churn.config import ChurnConfig
    from churn.connections import Resources

    parser = argparse.ArgumentParser(prog="python -m churn.data.outbox", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install", help="install the outbox and the triggers on CHURN_RESCORE_TABLES")
    sub.add_parser("status", help="backlog, refreshed in the last hour, lag p50/p95 (JSON)")
    enqueue_cmd = sub.add_parser("enqueue", help="ask for a re-score of these customer ids")
    enqueue_cmd.add_argument("ids", nargs="+")
    args = parser.parse_args(argv)
    cfg = ChurnConfig.from_env()
    res = Resources.from_airflow(cfg)
    with res.source_session() as conn:
        if args.command == "install":
            added = install_triggers(conn, cfg.rescore_table_names, cfg.rescore_id_column)
            print(json.dumps({"added": added, "missing_id_indexes": missing_id_indexes(
                conn, cfg.rescore_table_names, cfg.rescore_id_column)}))
        elif args.command == "status":
            print(json.dumps(activity(conn), indent=2))
        else:
            print(json.dumps({"enqueued": enqueue(conn, args.ids)}))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    raise SystemExit(_main())
