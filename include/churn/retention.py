"""Retention: what the platform writes every night and every event is purged after ``CHURN_RETENTION_DAYS``.

Without it the outbox, its delta rows, the quarantine, validation results, profiles, drift figures, the
event refresh log, run folders, re-score batch folders, local exports and consumed delta files grow
forever. :func:`purge` deletes, for one logical date ``as_of``:

- database rows older than the cutoff (done outbox events and their delta rows; per-run quarantine,
  validation results, column profiles, drift metrics, run metrics and run records; refresh-log rows; experiment
  splits; the assignments of experiments whose ``end`` is before the cutoff);
- run folders ``runs/<date>``, re-score folders ``rescore/<run>``, export files and consumed delta files
  (``done/``, ``rejected/``) older than the cutoff.

What readers and the registry trust is never purged: the served batch and its run folder, model versions,
suites, promotions. Realized-performance monitoring reads the scores of ``CHURN_REALIZED_LAG_DAYS`` ago
(from the run folder once the Postgres table is gone), so the cutoff is never later than that:
``keep = max(CHURN_RETENTION_DAYS, CHURN_REALIZED_LAG_DAYS + 1)`` days.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import logging
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

if TYPE_CHECKING:
    from churn.db import PgConnection, PgCursor

log = logging.getLogger(__name__)

_DATE_NAME = re.compile(r"(\d{4}-\d{2}-\d{2})")  # the run date in a folder's or export file's name
# (table, column holding the date) of run-keyed rows; run keys are the logical date (YYYY-MM-DD...).
_RUN_KEYED = ("churn.quarantine", "churn.validation_results", "churn.column_profiles", "churn.drift_metrics",
              "churn.run_metrics", "churn.pipeline_runs", "churn.experiment_splits")
_TIMED = (("churn.rescore_outbox", "done_at"), ("churn.score_refresh_log", "scored_at"))


@dataclass
class PurgeResult:
    """What one purge removed, and the cutoff it used."""

    cutoff: str
    keep_days: int
    rows: dict[str, int] = field(default_factory=dict)
    folders: dict[str, int] = field(default_factory=dict)
    files: int = 0
    kept_served: str | None = None

    def as_dict(self) -> dict:
        """JSON-able form (the task's XCom)."""
        return asdict(self)


def keep_days(retention_days: int, realized_lag_days: int) -> int:
    """Days kept: the configured retention, never less than what realized-performance monitoring reads."""
    return max(int(retention_days), int(realized_lag_days) + 1)


def _exists(cur: PgCursor, table: str) -> bool:
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
    return bool(cur.fetchone()[0])


def purge_rows(conn: PgConnection, cutoff: date, served_run: str | None, batch_rows: int = 50_000) -> dict[str, int]:
    """Delete rows older than ``cutoff`` in bounded batches (short transactions, no long lock on the outbox)."""
    counts: dict[str, int] = {}
    stamp = datetime.combine(cutoff, datetime.min.time(), tzinfo=timezone.utc)
    with conn.cursor() as cur:
        for table in _RUN_KEYED:
            if not _exists(cur, table):
                continue
            # Run keys start with the logical date; keys that do not (tests, manual keys) are left alone.
            cur.execute(f"DELETE FROM {table} WHERE run_key ~ '^\\d{{4}}-\\d{{2}}-\\d{{2}}' "  # noqa: S608 - fixed names
                        "AND left(run_key, 10) < %s AND run_key IS DISTINCT FROM %s", (cutoff.isoformat(), served_run))
            counts[table] = cur.rowcount
            conn.commit()
        for table, column in _TIMED:
            if not _exists(cur, table):
                continue
            total = 0
            while True:  # batches: the outbox is written by triggers on the user's tables meanwhile
                cur.execute(f"DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table} "  # noqa: S608
                            f"WHERE {column} < %s LIMIT %s))", (stamp, batch_rows))
                total += cur.rowcount
                conn.commit()
                if cur.rowcount < batch_rows:
                    break
            counts[table] = total
    conn.commit()
    return counts


def _older(path: Path, cutoff: date) -> bool:
    match = _DATE_NAME.search(path.name)
    if match:
        try:
            return date.fromisoformat(match.group(1)) < cutoff
        except ValueError:
            pass
    return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).date() < cutoff


def purge_paths(folder: Path, cutoff: date, keep: set[str] = frozenset(), *, dirs: bool = True,
                pattern: str = "*") -> int:
    """Remove entries of ``folder`` older than ``cutoff`` (by the date their name starts with, else mtime)."""
    if not folder.is_dir():
        return 0
    removed = 0
    for path in folder.glob(pattern):
        if path.name in keep or path.is_symlink() or (path.is_dir() != dirs) or not _older(path, cutoff):
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed += 1
    return removed


def _purge_experiments(conn: PgConnection, cfg, cutoff: date) -> int:
    """Assignments of experiments that ended before the cutoff (their last night was judged by then)."""
    if not getattr(cfg, "experiments_file", ""):
        return 0
    from churn.experiments.assignment import purge_ended
    from churn.experiments.decisions import effective, ended_on
    from churn.experiments.definitions import ExperimentsError, load_experiments

    try:
        experiments = load_experiments(cfg.experiments_file).experiments
    except ExperimentsError as exc:  # retention never fails on it; the assign task reports the file's error
        log.warning("retention: experiment assignments kept, the experiments file cannot be read: %s", exc)
        return 0
    with conn.cursor() as cur:
        present = _exists(cur, "churn.experiment_assignments")
    conn.commit()
    return purge_ended(conn, effective(experiments, ended_on(conn)), cutoff) if present else 0


def purge(conn: PgConnection, cfg, as_of: date) -> PurgeResult:
    """Purge database rows and files older than the retention cutoff for ``as_of`` (see the module doc)."""
    from churn.publish.refresh import current_batch

    days = keep_days(cfg.retention_days, cfg.realized_lag_days)
    cutoff = as_of - timedelta(days=days)
    started = time.monotonic()
    with conn.cursor() as cur:
        served = current_batch(cur) if _exists(cur, "churn.score_runs") else None
    conn.commit()
    served_run = served[0] if served else None
    result = PurgeResult(cutoff.isoformat(), days, kept_served=served_run)
    result.rows = purge_rows(conn, cutoff, served_run)
    result.rows["churn.experiment_assignments"] = _purge_experiments(conn, cfg, cutoff)
    keep = {served_run} if served_run else set()
    result.folders["runs"] = purge_paths(cfg.runs_dir, cutoff, keep)
    result.folders["rescore"] = purge_paths(cfg.state_dir / "rescore", cutoff)
    result.files = purge_paths(cfg.exports_dir, cutoff, dirs=False)
    if cfg.rescore_delta_dir:
        delta = Path(cfg.rescore_delta_dir)
        result.files += sum(purge_paths(delta / sub, cutoff, dirs=False) for sub in ("done", "rejected"))
    log.info("retention (keep %s days, cutoff %s, served run %s kept): rows %s, folders %s, files %s in %.1f s",
             days, cutoff, served_run, result.rows, result.folders, result.files, time.monotonic() - started)
    return result
