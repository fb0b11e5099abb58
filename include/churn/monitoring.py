"""Run monitoring in Postgres: per-run figures, prediction drift (PSI) and realized performance.

- :func:`score_summary` / :func:`psi`: the score distribution of a run and its drift against
  the previous run's (fixed 10 equal-width probability bins, so summaries compare across runs).
- :func:`record_run`: one row per run in ``churn.run_metrics`` (replaced on a re-run).
- :func:`evaluate_realized`: when outcomes (``src.churn_events``) are known for customers scored
  ``realized_lag_days`` ago, the ROC AUC those scores achieved, per model version, in
  ``churn.realized_performance``; :func:`realized_retrain_trigger` turns a drop into a retrain.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any, TYPE_CHECKING

import numpy as np

from churn.config import ChurnConfig
from churn.data.drift import psi_from_shares
from churn.db import ensure_schema, to_jsonb
from churn.report import stage_timings

if TYPE_CHECKING:
    from churn.db import PgConnection

log = logging.getLogger(__name__)

BIN_EDGES = np.linspace(0.0, 1.0, 11)


def score_summary(proba: np.ndarray, band_cuts: tuple[float, ...] = (0.1, 0.2)) -> dict[str, Any]:
    """Mean, spread, quantiles, risk-band shares and a 10-bin histogram of churn probabilities."""
    proba = np.asarray(proba, dtype=float)
    if proba.size == 0:
        raise ValueError("no scores to summarize: the scored population is empty")
    return _summary(int(proba.size), float(proba.mean()), float(proba.std()), proba, _band_counts(proba, band_cuts),
                    np.histogram(np.clip(proba, 0.0, 1.0), bins=BIN_EDGES)[0], band_cuts)


def _band_counts(proba: np.ndarray, band_cuts: tuple[float, ...]) -> np.ndarray:
    return np.bincount(np.digitize(proba, band_cuts), minlength=len(band_cuts) + 1)


def _summary(n: int, mean: float, std: float, quantile_values: np.ndarray, band_counts: np.ndarray,
             histogram: np.ndarray, band_cuts: tuple[float, ...]) -> dict[str, Any]:
    """The stored score-summary shape (run metrics, report) from its figures."""
    names = ["low", "medium", "high"] if len(band_cuts) == 2 else [f"band_{i}" for i in range(len(band_cuts) + 1)]
    quantiles = np.quantile(quantile_values, [0.1, 0.25, 0.5, 0.75, 0.9])
    return {
        "count": n,
        "mean": mean,
        "std": std,
        "quantiles": {k: float(v) for k, v in zip(("p10", "p25", "p50", "p75", "p90"), quantiles)},
        "band_shares": {name: float(band_counts[i] / n) for i, name in enumerate(names)},
        "histogram": {"edges": [float(e) for e in BIN_EDGES], "counts": [int(c) for c in histogram]},
    }


def streamed_score_summary(scores_path: str | Path, band_cuts: tuple[float, ...] = (0.1, 0.2),
                           sample_rows: int = 200_000, chunk_rows: int = 500_000) -> dict[str, Any]:
    """:func:`score_summary` of a score file read in chunks: count, mean, std, band shares and the histogram
    exact over every customer; quantiles from an id-hash sample of about ``sample_rows`` (``quantile_sample_rows``).
    """
    from churn.data.stream import iter_frames, keep_mask, parquet_rows

    total = parquet_rows(scores_path)
    if total == 0:
        raise ValueError("no scores to summarize: the scored population is empty")
    fraction = 1.0 if total <= sample_rows else sample_rows / total
    counts = np.zeros(len(BIN_EDGES) - 1, dtype=np.int64)
    bands = np.zeros(len(band_cuts) + 1, dtype=np.int64)
    n, total_sum, total_sq = 0, 0.0, 0.0
    kept = []
    for frame in iter_frames(scores_path, chunk_rows, ["customer_id", "churn_probability"]):
        proba = frame["churn_probability"].to_numpy(dtype=float)
        counts += np.histogram(np.clip(proba, 0.0, 1.0), bins=BIN_EDGES)[0]
        bands += _band_counts(proba, band_cuts)
        n += proba.size
        total_sum += float(proba.sum())
        total_sq += float(np.square(proba).sum())
        kept.append(proba[keep_mask(frame["customer_id"], fraction)])
    mean = total_sum / n
    sample = np.concatenate(kept)
    summary = _summary(int(n), mean, float(np.sqrt(max(total_sq / n - mean * mean, 0.0))), sample, bands, counts,
                       band_cuts)
    return {**summary, "quantile_sample_rows": int(sample.size)}


def psi(expected_counts: list[int] | np.ndarray, actual_counts: list[int] | np.ndarray, eps: float = 1e-4) -> float:
    """Population stability index between two histograms over the same bins (0 = identical)."""
    expected = np.asarray(expected_counts, dtype=float)
    actual = np.asarray(actual_counts, dtype=float)
    if expected.shape != actual.shape or expected.sum() <= 0 or actual.sum() <= 0:
        raise ValueError("PSI needs two non-empty histograms over the same bins")
    return psi_from_shares(expected / expected.sum(), actual / actual.sum(), eps)


def previous_run(conn: PgConnection, run_key: str) -> tuple[str, dict] | None:
    """The latest earlier non-dry run with a score summary: (run_key, score_summary)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT run_key, score_summary FROM churn.run_metrics WHERE run_key < %s AND NOT dry_run "
            "AND score_summary IS NOT NULL ORDER BY run_key DESC LIMIT 1", (run_key,),
        )
        row = cur.fetchone()
    conn.commit()
    return (row[0], row[1]) if row else None


@dataclass
class RunMetrics:
    """One row of ``churn.run_metrics``."""

    run_key: str
    model_version: str | None
    dry_run: bool
    rows_in: int | None
    rows_quarantined: int | None
    rows_scored: int | None
    rows_published: int | None
    stage_seconds: dict
    score_summary: dict | None
    prediction_psi: float | None
    previous_run_key: str | None
    report_path: str | None = None


def build_run_metrics(conn: PgConnection, run_key: str, summary: dict, scores_path: str | None, model_version: str | None,
                      band_cuts: tuple[float, ...], dry_run: bool, sample_rows: int = 200_000) -> RunMetrics:
    """Figures of one run from its summary and scores file, with PSI against the previous run."""
    scores = None
    if scores_path and Path(scores_path).exists():
        scores = streamed_score_summary(scores_path, band_cuts, sample_rows)
    prev = previous_run(conn, run_key)
    drift = psi(prev[1]["histogram"]["counts"], scores["histogram"]["counts"]) if prev and scores else None
    ingested = summary.get("rows_ingested") or {}
    quarantined = summary.get("rows_quarantined") or {}
    return RunMetrics(
        run_key=run_key, model_version=model_version,
        dry_run=dry_run, rows_in=sum(v for v in ingested.values() if isinstance(v, int)) if ingested else None,
        rows_quarantined=sum(v for v in quarantined.values() if isinstance(v, int)) if quarantined else None,
        rows_scored=summary.get("scored"), rows_published=summary.get("published_postgres"),
        stage_seconds={k: v for k, v in stage_timings(summary).items() if v is not None},
        score_summary=scores, prediction_psi=drift, previous_run_key=prev[0] if prev else None,
    )


def record_run(conn: PgConnection, metrics: RunMetrics) -> None:
    """Insert or replace the run's row in ``churn.run_metrics`` (idempotent per run key)."""
    ensure_schema(conn)
    with conn.cursor() as cur:
        cur.execute(
            """INSERT INTO churn.run_metrics (run_key, model_version, dry_run, rows_in, rows_quarantined,
                   rows_scored, rows_published, stage_seconds, score_summary, prediction_psi, previous_run_key,
                   report_path)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
               ON CONFLICT (run_key) DO UPDATE SET recorded_at = now(), model_version = EXCLUDED.model_version,
                   dry_run = EXCLUDED.dry_run, rows_in = EXCLUDED.rows_in,
                   rows_quarantined = EXCLUDED.rows_quarantined, rows_scored = EXCLUDED.rows_scored,
                   rows_published = EXCLUDED.rows_published, stage_seconds = EXCLUDED.stage_seconds,
                   score_summary = EXCLUDED.score_summary, prediction_psi = EXCLUDED.prediction_psi,
                   previous_run_key = EXCLUDED.previous_run_key, report_path = EXCLUDED.report_path""",
            (metrics.run_key, metrics.model_version, metrics.dry_run, metrics.rows_in, metrics.rows_quarantined,
             metrics.rows_scored, metrics.rows_published, to_jsonb(metrics.stage_seconds),
             to_jsonb(metrics.score_summary) if metrics.score_summary else None, metrics.prediction_psi,
             metrics.previous_run_key, metrics.report_path),
        )
    conn.commit()


def _sampled_outcomes(conn: PgConnection, cfg: ChurnConfig, scored_on: date, as_of: date):
    """Per model version: customers scored on ``scored_on``, how many churned by ``as_of``, and an id-hash
    sample (about ``cfg.metrics_sample_rows``) of (probability, churned) pairs; None when the scores are gone.

    Postgres run table (joined with the outcomes in SQL, only the sample leaves the server), else the run
    folder's score file streamed in chunks.
    """
    import pandas as pd

    from churn.publish.postgres import run_table

    table = run_table(scored_on.isoformat())
    window = (scored_on, as_of)
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", (f"churn.{table}",))
        exists = cur.fetchone()[0] is not None
        if exists:
            cur.execute(f"SELECT count(*) FROM churn.{table}")
            total = cur.fetchone()[0]
            fraction = 1.0 if total <= cfg.metrics_sample_rows else cfg.metrics_sample_rows / total
            outcome = ("EXISTS (SELECT 1 FROM src.churn_events e WHERE e.customer_id = s.customer_id "
                       "AND e.churn_date > %s AND e.churn_date <= %s)")
            cur.execute(f"SELECT model_version, count(*), count(*) FILTER (WHERE {outcome}) FROM churn.{table} s "
                        "GROUP BY model_version", window)
            counts = {row[0]: (row[1], row[2]) for row in cur.fetchall()}
            # hashtext: a stable hash inside Postgres; the sample is the same on every evaluation of this run
            cur.execute(f"SELECT model_version, churn_probability, ({outcome})::int FROM churn.{table} s "
                        "WHERE (hashtext(customer_id)::bigint + 2147483648) < %s",
                        (*window, int(fraction * 4294967296) + (1 if fraction >= 1.0 else 0)))
            sample = pd.DataFrame(cur.fetchall(), columns=["model_version", "churn_probability", "churned"])
    conn.commit()
    if exists:
        return counts, sample
    path = cfg.runs_dir / scored_on.isoformat() / "scores.parquet"
    if not path.exists():  # history tables are pruned after CHURN_SCORE_HISTORY_RUNS runs; run folders stay
        return None
    from churn.data.stream import iter_frames, keep_mask, parquet_rows

    churned = set(churned_between(conn, *window))
    total = parquet_rows(path)
    fraction = 1.0 if total <= cfg.metrics_sample_rows else cfg.metrics_sample_rows / total
    counts: dict = {}
    kept = []
    for frame in iter_frames(path, 500_000, ["customer_id", "churn_probability", "model_version"]):
        frame = frame.assign(churned=frame["customer_id"].isin(churned).astype(int))
        for version, part in frame.groupby("model_version"):
            seen = counts.get(version, (0, 0))
            counts[version] = (seen[0] + len(part), seen[1] + int(part["churned"].sum()))
        kept.append(frame[keep_mask(frame["customer_id"], fraction)][["model_version", "churn_probability",
                                                                      "churned"]])
    return counts, pd.concat(kept) if kept else pd.DataFrame(columns=["model_version", "churn_probability",
                                                                       "churned"])


def has_outcomes(conn: PgConnection) -> bool:
    """True when the source has an outcome table (``src.churn_events``: the demo source; others have none yet)."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('src.churn_events') IS NOT NULL")
        found = bool(cur.fetchone()[0])
    conn.commit()
    return found


def churned_between(conn: PgConnection, after: date, until: date) -> list[str]:
    """Ids of the customers who churned after ``after`` and on or before ``until`` (``src.churn_events``)."""
    with conn.cursor() as cur:
        cur.execute("SELECT DISTINCT customer_id FROM src.churn_events WHERE churn_date > %s AND churn_date <= %s",
                    (after, until))
        ids = [row[0] for row in cur.fetchall()]
    conn.commit()
    return ids


def evaluate_realized(conn: PgConnection, cfg: ChurnConfig, as_of: date) -> list[dict]:
    """ROC AUC achieved by the scores of ``as_of - realized_lag_days``, per model version; stored and returned.

    Customers and churners are counted over every scored customer; the AUC is computed on an id-hash
    sample of about ``CHURN_METRICS_SAMPLE_ROWS`` customers (its size is in the record), so memory does not
    grow with the population.
    """
    from sklearn.metrics import roc_auc_score

    ensure_schema(conn)
    scored_on = as_of - timedelta(days=cfg.realized_lag_days)
    if not has_outcomes(conn):
        # Outcomes come from the demo source's src.churn_events; a file or SQL source has none here yet, and
        # failing the report on the first night past the lag (found by the seven-nights test) helps nobody.
        log.info("realized performance: no outcome table (src.churn_events) for the %s source; not judged",
                 cfg.source)
        return []
    found = _sampled_outcomes(conn, cfg, scored_on, as_of)
    if found is None or not found[0]:
        log.info("realized performance: no scores from %s (%s days ago) to judge", scored_on, cfg.realized_lag_days)
        return []
    counts, sample = found
    results = []
    for version, (customers, churned) in sorted(counts.items()):
        part = sample[sample["model_version"] == version]
        y = part["churned"].to_numpy().astype(int)
        if customers < cfg.realized_min_customers or churned in (0, customers) or len(set(y)) < 2:
            log.info("realized performance of %s: %s customers, %s churned: not enough to judge",
                     version, customers, churned)
            continue
        with conn.cursor() as cur:
            cur.execute("SELECT (metrics->>'roc_auc')::float FROM churn.model_registry WHERE version = %s",
                        (version,))
            row = cur.fetchone()
        conn.commit()
        record = {"scored_run_key": scored_on.isoformat(), "model_version": str(version),
                  "evaluated_on": as_of.isoformat(), "customers": int(customers), "churned": int(churned),
                  "auc_sample_rows": int(len(part)),
                  "realized_roc_auc": float(roc_auc_score(y, part["churn_probability"].to_numpy())),
                  "expected_roc_auc": row[0] if row else None}
        with conn.cursor() as cur:
            cur.execute(
                """INSERT INTO churn.realized_performance (scored_run_key, model_version, evaluated_on, customers,
                       churned, realized_roc_auc, expected_roc_auc) VALUES (%s, %s, %s, %s, %s, %s, %s)
                   ON CONFLICT (scored_run_key, model_version) DO UPDATE SET evaluated_on = EXCLUDED.evaluated_on,
                       customers = EXCLUDED.customers, churned = EXCLUDED.churned,
                       realized_roc_auc = EXCLUDED.realized_roc_auc, expected_roc_auc = EXCLUDED.expected_roc_auc,
                       recorded_at = now()""",
                (record["scored_run_key"], record["model_version"], as_of, record["customers"], record["churned"],
                 record["realized_roc_auc"], record["expected_roc_auc"]),
            )
        conn.commit()
        log.info("realized ROC AUC of %s on scores from %s: %.4f on %s sampled of %s customers (test: %s)", version,
                 scored_on, record["realized_roc_auc"], len(part), customers, record["expected_roc_auc"])
        results.append(record)
    return results


def realized_drop(record: dict, max_drop: float) -> str | None:
    """Why a realized result is a decay signal (test AUC minus realized AUC above ``max_drop``), or None."""
    expected, realized = record.get("expected_roc_auc"), record.get("realized_roc_auc")
    if expected is None or realized is None or expected - realized <= max_drop:
        return None
    return (f"realized ROC AUC of {record['model_version']} on scores from {record['scored_run_key']} is "
            f"{realized:.4f}, {expected - realized:.4f} below its test ROC AUC {expected:.4f} "
            f"(allowed drop {max_drop:.4f})")


def realized_retrain_trigger(conn: PgConnection, cfg: ChurnConfig, champion_version: str | None) -> tuple[bool, str]:
    """Retrain when the champion's latest realized ROC AUC dropped more than ``max_realized_auc_drop``."""
    if champion_version is None:
        return False, "no champion"
    ensure_schema(conn)
    with conn.cursor() as cur:
        cur.execute(
            """SELECT scored_run_key, model_version, realized_roc_auc, expected_roc_auc
               FROM churn.realized_performance WHERE model_version = %s ORDER BY scored_run_key DESC LIMIT 1""",
            (champion_version,),
        )
        row = cur.fetchone()
    conn.commit()
    if row is None:
        return False, f"no realized performance for {champion_version} yet"
    reason = realized_drop(dict(zip(("scored_run_key", "model_version", "realized_roc_auc", "expected_roc_auc"),
                                    row)), cfg.max_realized_auc_drop)
    return (True, reason) if reason else (False, f"realized ROC AUC of {champion_version} is {row[2]:.4f}: fine")
