"""The leakage check of a SQL source's feature query: does its result change when data dated after ``as_of`` appears?

:func:`check_leakage` (CLI ``python -m churn.data.leakage check-leakage``) runs the query on temporary copies
of the tables it reads, adds copies of their rows dated after ``as_of``, and refuses the query when that
changes its result (see the function's docstring and docs/guides/bring-your-own-data.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, TYPE_CHECKING

import pandas as pd
import psycopg2

from churn.config import ChurnConfig
from churn.data.sql_source import (SqlSourceError, bind, confine, load_query, query_failed, query_path, quote_ident,
                                   statement_timeout_seconds)

if TYPE_CHECKING:
    from churn.db import PgConnection, PgCursor

log = logging.getLogger(__name__)

DATE_TYPES = {"date", "timestamp without time zone", "timestamp with time zone"}
TEXT_TYPES = {"text", "character varying", "character"}
INTEGER_TYPES = {"integer", "bigint", "smallint"}


@dataclass
class TableProbe:
    """What one probe of one table did: rows dated after ``as_of`` added, and whether the result changed."""

    table: str
    probe: str
    """``features`` (rows dated the day after as_of; the label may change) or ``label`` (after the window)."""
    date_columns: list[str]
    rows_added: int
    changed: bool
    detail: str = ""


@dataclass
class LeakageReport:
    """Outcome of :func:`check_leakage`: ``passed``, ``failed`` (some probe changed the result) or ``inconclusive``."""

    status: str
    as_of: str
    label_window_days: int
    rows: int
    probes: list[TableProbe] = field(default_factory=list)
    not_probed: dict[str, str] = field(default_factory=dict)
    """Tables the query reads that no probe could add rows to, and why."""

    def as_dict(self) -> dict:
        """JSON-able form."""
        return asdict(self)


def _relations(conn: PgConnection, bound_sql: str) -> list[tuple[str, str]]:
    """(schema, table) of every table the plan of the query reads."""
    with conn.cursor() as cur:
        cur.execute(f"EXPLAIN (VERBOSE, FORMAT JSON) {bound_sql}")
        plan = cur.fetchone()[0]
    found: list[tuple[str, str]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "Relation Name" in node:
                pair = (node.get("Schema", "public"), node["Relation Name"])
                if pair not in found:
                    found.append(pair)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(plan)
    return found


def _columns(cur: PgCursor, table: str) -> list[tuple[str, str]]:
    """(name, data type) of a temporary table's columns, in order."""
    cur.execute("SELECT attname, format_type(atttypid, NULL) FROM pg_attribute WHERE attrelid = %s::regclass "
                "AND attnum > 0 AND NOT attisdropped ORDER BY attnum", (f"pg_temp.{quote_ident(table)}",))
    return [(name, kind) for name, kind in cur.fetchall()]  # no typmod: "character varying", not "...(20)"


def _unique_keys(cur: PgCursor, table: str) -> list[list[str]]:
    """Column lists of the temporary table's unique indexes (its primary key included)."""
    cur.execute("SELECT array_agg(a.attname ORDER BY a.attnum) FROM pg_index i JOIN pg_attribute a "
                "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass "
                "AND i.indisunique GROUP BY i.indexrelid", (f"pg_temp.{quote_ident(table)}",))
    return [list(row[0]) for row in cur.fetchall()]


def _entity_columns(cur: PgCursor, schema: str, table: str, id_column: str) -> list[str]:
    """Columns naming another row's entity: declared foreign keys of the source table, or the id column's name."""
    cur.execute("SELECT DISTINCT a.attname FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid "
                "AND a.attnum = ANY(c.conkey) WHERE c.contype = 'f' AND c.conrelid = %s::regclass",
                (f"{quote_ident(schema)}.{quote_ident(table)}",))
    declared = {row[0] for row in cur.fetchall()}
    return [name for name, _ in _columns(cur, table) if name in declared or name == id_column]


def _future_copy_sql(cur: PgCursor, schema: str, table: str, when: date, id_column: str
                     ) -> tuple[list[str], list[str], str]:
    """INSERTs adding copies of each row with every date moved to ``when`` (none, and why, when impossible).

    Two sets of copies: for the same entities, with unique keys that hold no date made distinct (new rows
    of this table: a customer signed up after ``as_of``, a ticket opened after it), and, when the table
    names an entity (a foreign key, or a column named like the query's id), for other entities (the
    entity column permuted deterministically): a customer without any closure gets one after the window.
    """
    columns = _columns(cur, table)
    dates = [name for name, kind in columns if kind in DATE_TYPES]
    if not dates:
        return [], [], "no date or timestamp column"
    kinds = dict(columns)
    entities = _entity_columns(cur, schema, table, id_column)
    target = f"pg_temp.{quote_ident(table)}"

    def distinct_keys(skip: set[str]) -> dict[str, str] | str:
        changed: dict[str, str] = {}
        for key in _unique_keys(cur, table):
            if set(key) & (set(dates) | skip):
                continue  # a moved date, or a permuted entity, already keeps copies apart (or ON CONFLICT skips)
            column = next((c for c in key if kinds[c] in TEXT_TYPES | INTEGER_TYPES), None)
            if column is None:
                return f"unique key {key} has no text or integer column to make copies distinct"
            if kinds[column] in TEXT_TYPES:
                changed[column] = f"o.{quote_ident(column)} || '~after-as-of'"
            else:
                cur.execute(f"SELECT coalesce(max({quote_ident(column)}), 0) - coalesce(min({quote_ident(column)}), 0) + 1 "
                            f"FROM {target}")
                changed[column] = f"o.{quote_ident(column)} + {int(cur.fetchone()[0])}"
        for name in dates:
            stamp = f"'{when.isoformat()} 12:00'" if kinds[name] != "date" else f"'{when.isoformat()}'"
            changed[name] = f"{stamp}::{kinds[name]}"
        return changed

    numbered = f"(SELECT *, row_number() OVER (ORDER BY ctid) AS probe_rn FROM {target}) AS o"
    inserts = []
    same = distinct_keys(set())
    if isinstance(same, str):
        return [], dates, same
    select = ", ".join(same.get(name, f"o.{quote_ident(name)}") for name, _ in columns)
    inserts.append(f"INSERT INTO {target} SELECT {select} FROM {numbered} ON CONFLICT DO NOTHING")
    if entities:
        other = distinct_keys(set(entities))
        if not isinstance(other, str):
            joins = "".join(
                f" JOIN (SELECT {quote_ident(e)} AS probe_value, row_number() OVER (ORDER BY md5({quote_ident(e)}::text), ctid) "
                f"AS probe_rn FROM {target}) AS p{i} ON p{i}.probe_rn = o.probe_rn" for i, e in enumerate(entities))
            other.update({e: f"p{i}.probe_value" for i, e in enumerate(entities)})
            select = ", ".join(other.get(name, f"o.{quote_ident(name)}") for name, _ in columns)
            inserts.append(f"INSERT INTO {target} SELECT {select} FROM {numbered}{joins} ON CONFLICT DO NOTHING")
    return inserts, dates, ""


def _redirect(query: str, relations: list[tuple[str, str]]) -> str:
    """The query text with each schema-qualified table name pointing at its temporary copy."""
    for schema, table in relations:
        pattern = (r'(?<![\w"])(?:"' + re.escape(schema) + r'"|' + re.escape(schema) + r')\s*\.\s*(?:"'
                   + re.escape(table) + r'"|' + re.escape(table) + r')(?![\w"])')
        query = re.sub(pattern, f"pg_temp.{quote_ident(table)}", query, flags=re.IGNORECASE)
    return query


def _result(conn: PgConnection, bound_sql: str, id_column: str) -> pd.DataFrame:
    with conn.cursor() as cur:
        cur.execute(bound_sql)
        names = [d.name for d in cur.description]
        frame = pd.DataFrame(cur.fetchall(), columns=names)
    return frame.sort_values([id_column, *[c for c in names if c != id_column]], kind="stable",
                             na_position="last", key=lambda s: s.astype("str")).reset_index(drop=True)


def _difference(before: pd.DataFrame, after: pd.DataFrame, columns: list[str], id_column: str) -> str:
    """Empty when the two results agree on ``columns``; else what changed, in a sentence."""
    if len(before) != len(after) or not before[id_column].astype("str").equals(after[id_column].astype("str")):
        new_ids = sorted(set(after[id_column].astype("str")) - set(before[id_column].astype("str")))
        return (f"rows changed from {len(before)} to {len(after)} (new or repeated ids, e.g. "
                f"{new_ids[:3] or after[id_column].astype('str')[after[id_column].duplicated()].head(3).tolist()})")
    changed = []
    for column in columns:
        left, right = before[column], after[column]
        numeric = [pd.api.types.is_numeric_dtype(x) and not pd.api.types.is_bool_dtype(x) for x in (left, right)]
        if all(numeric):
            same = ((left - right).abs() <= 1e-9 * (1 + left.abs())) | (left.isna() & right.isna())
        else:
            same = (left.astype("str") == right.astype("str")) | (left.isna() & right.isna())
        if not bool(same.all()):
            changed.append(f"{column} ({int((~same).sum())} rows)")
    return ("changed " + ", ".join(changed)) if changed else ""


def check_leakage(conn: PgConnection, query: str, as_of: date, label_window_days: int, *, id_column: str, label_column: str,
                  max_rows_per_table: int = 100_000, timeout_seconds: float | None = None) -> LeakageReport:
    """Refuse a training query whose result changes when rows dated after ``as_of`` are added.

    Everything happens in one transaction that is rolled back: the tables the query's plan reads are copied
    (up to ``max_rows_per_table`` rows each, with their unique indexes) into temporary tables, the query is
    pointed at the copies, and then, per table with a date or timestamp column, copies of its rows are added
    with every date moved to (a) the day after ``as_of`` (the result apart from the label must not change) and
    (b) the day after the label window (nothing may change); see :func:`_future_copy_sql` for which copies.
    Copies that would repeat a unique key get a distinct key (text ``|| '~after-as-of'``, integers offset)
    unless a date is part of the key. The query must name tables schema-qualified or by a name the copies
    shadow; views and functions are not followed.

    The query is confined as in a nightly run (:func:`churn.data.sql_source.confine`): one statement, READ
    ONLY (only the temporary copies are written, by the check's own statements), statement timeout
    ``timeout_seconds`` (default ``CHURN_SOURCE_STATEMENT_TIMEOUT_SECONDS``).
    """
    report = LeakageReport("inconclusive", as_of.isoformat(), int(label_window_days), 0)
    bound = bind(conn, query, as_of, label_window_days)
    seconds = statement_timeout_seconds() if timeout_seconds is None else float(timeout_seconds)
    try:
        with conn.cursor() as cur:  # a first transaction that only reads: the check, then the plan's tables
            confine(cur, bound, seconds)
        relations = _relations(conn, bound)
        conn.rollback()
        names = [table for _, table in relations]
        clash = sorted({n for n in names if names.count(n) > 1})
        if clash:
            raise SqlSourceError(f"the query reads tables of the same name in two schemas ({clash}); the leakage "
                                 "check cannot copy both")
        redirected = bind(conn, _redirect(query, relations), as_of, label_window_days)
        with conn.cursor() as cur:
            # The copies are made by the check's own statements (a READ ONLY transaction cannot create tables);
            # then the transaction turns READ ONLY before the query's text runs: it may write the copies only.
            cur.execute("SELECT set_config('statement_timeout', %s, true)", (f"{max(1, round(seconds * 1000))}ms",))
            for schema, table in relations:
                cur.execute(f"CREATE TEMP TABLE {quote_ident(table)} (LIKE {quote_ident(schema)}.{quote_ident(table)} "
                            "INCLUDING INDEXES) ON COMMIT DROP")
                cur.execute(f"INSERT INTO pg_temp.{quote_ident(table)} SELECT * FROM {quote_ident(schema)}.{quote_ident(table)} "
                            "LIMIT %s", (int(max_rows_per_table),))
            confine(cur, redirected, seconds)
        leftover = [f"{s}.{t}" for s, t in _relations(conn, redirected) if not s.startswith("pg_temp")]
        if leftover:
            raise SqlSourceError(f"the leakage check could not point the query at copies of {leftover} (read "
                                 "through a view or a function?); name the tables in the query itself")
        baseline = _result(conn, redirected, id_column)
        report.rows = len(baseline)
        features = [c for c in baseline.columns if c not in (id_column, label_column)]
        probes = (("features", as_of + timedelta(days=1), features),
                  ("label", as_of + timedelta(days=int(label_window_days) + 1), [*features, label_column]))
        with conn.cursor() as cur:
            for schema, table in relations:
                for probe, when, compared in probes:
                    inserts, dates, why = _future_copy_sql(cur, schema, table, when, id_column)
                    if not inserts:
                        report.not_probed[f"{schema}.{table}"] = why
                        break
                    cur.execute("SAVEPOINT leakage_probe")
                    added = 0
                    for insert in inserts:
                        cur.execute(insert)
                        added += cur.rowcount
                    if added == 0:
                        cur.execute("ROLLBACK TO SAVEPOINT leakage_probe")
                        report.not_probed[f"{schema}.{table}"] = "every copy collides with a unique key"
                        break
                    detail = _difference(baseline, _result(conn, redirected, id_column),
                                         [c for c in compared if c in baseline.columns], id_column)
                    cur.execute("ROLLBACK TO SAVEPOINT leakage_probe")
                    report.probes.append(TableProbe(f"{schema}.{table}", probe, dates, added, bool(detail), detail))
    except psycopg2.Error as exc:
        raise query_failed(exc, "the leakage check could not run the query") from exc
    finally:
        conn.rollback()  # nothing of the check ever stays in the source database
    if any(p.changed for p in report.probes):
        report.status = "failed"
    elif report.probes:
        report.status = "passed"
    return report


def _main(argv: list[str] | None = None) -> int:
    """``check-leakage``: run the check on the configured source; exit 0 passed, 1 failed, 2 inconclusive."""
    from churn.connections import Resources

    parser = argparse.ArgumentParser(prog="python -m churn.data.leakage", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check-leakage", help="refuse a feature query that reads data dated after as_of")
    check.add_argument("--as-of", type=date.fromisoformat, default=None,
                       help="snapshot date to test (default: today minus CHURN_LABEL_WINDOW_DAYS)")
    check.add_argument("--query", default=None, help="the .sql file (default: CHURN_SOURCE_QUERY)")
    check.add_argument("--max-rows-per-table", type=int, default=100_000)
    args = parser.parse_args(argv)
    cfg = ChurnConfig.from_env()
    path = Path(args.query) if args.query else query_path(cfg)
    as_of = args.as_of or date.today() - timedelta(days=cfg.label_window_days)
    spec_id, spec_label = (("customer_id", "churned") if cfg.source == "postgres" and not args.query
                           else (cfg.id_column, cfg.label_column))
    with Resources.from_airflow(cfg).source_session() as conn:
        report = check_leakage(conn, load_query(path), as_of, cfg.label_window_days, id_column=spec_id,
                               label_column=spec_label, max_rows_per_table=args.max_rows_per_table)
    print(json.dumps(report.as_dict(), indent=2))
    verdict = {"passed": "no leakage found", "failed": "LEAKAGE: the result changed when rows dated after as_of "
               "were added", "inconclusive": "no table could be probed"}[report.status]
    print(f"{path}: {verdict}", file=sys.stderr)
    return {"passed": 0, "failed": 1}.get(report.status, 2)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    raise SystemExit(_main())
