"""Experiments judged on outcomes: each experiment's arms on a night whose label window has closed.

Every night past ``CHURN_REALIZED_LAG_DAYS``: the customers assigned on or before the night scored
``realized_lag_days`` ago, the scores they were served that night (the run's Postgres table while it is kept,
else the run folder's score file), and whether they churned since (``src.churn_events``), analysed per arm
(:func:`churn.experiments.analysis.analyze`) and stored in ``churn.experiment_results``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from datetime import date, timedelta

import numpy as np

from churn.config import ChurnConfig
from churn.experiments.analysis import ExperimentAnalysis, analyze
from churn.experiments.decisions import effective, ended_on
from churn.experiments.definitions import load_experiments
from churn.monitoring import churned_between, has_outcomes

log = logging.getLogger(__name__)


def _copy_table(conn, query: str, params: tuple, names: list[str]):
    """A query's rows as an Arrow table, streamed with ``COPY ... TO STDOUT`` (columnar, never Python tuples).

    Every column is text except ``churn_probability`` (ids such as ``00123`` stay as written).
    """
    import tempfile

    import pyarrow as pa
    import pyarrow.csv as pacsv

    with tempfile.SpooledTemporaryFile(max_size=64 << 20) as spool:
        with conn.cursor() as cur:
            cur.copy_expert(f"COPY ({cur.mogrify(query, params).decode()}) TO STDOUT WITH (FORMAT csv)", spool)
        conn.commit()
        if spool.tell() == 0:
            return pa.table({n: pa.array([], pa.float64() if n == "churn_probability" else pa.string()) for n in names})
        spool.seek(0)
        types = {n: pa.float64() if n == "churn_probability" else pa.string() for n in names}
        return pacsv.read_csv(spool, read_options=pacsv.ReadOptions(column_names=names),
                              convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=False))


def _served_scores(conn, cfg: ChurnConfig, scored_on: date):
    """``customer_id -> churn_probability`` served on ``scored_on`` as an Arrow table, or None when gone."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from churn.publish.postgres import run_table

    table = run_table(scored_on.isoformat())
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", (f"churn.{table}",))
        present = cur.fetchone()[0] is not None
    conn.commit()
    if present:
        scores = _copy_table(conn, f"SELECT customer_id, churn_probability FROM churn.{table}", (),
                             ["customer_id", "churn_probability"])
        return scores.cast(pa.schema([("customer_id", pa.string()), ("churn_probability", pa.float64())]))
    path = cfg.runs_dir / scored_on.isoformat() / "scores.parquet"
    if not path.exists():
        return None
    return pq.read_table(path, columns=["customer_id", "churn_probability"])


def evaluate_experiments(conn, cfg: ChurnConfig, as_of: date) -> list[ExperimentAnalysis]:
    """Analyse every experiment of the file on the night ``realized_lag_days`` before ``as_of``; store and return."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from churn.db import ensure_schema

    if not cfg.experiments_file:
        return []
    ensure_schema(conn)
    scored_on = as_of - timedelta(days=cfg.realized_lag_days)
    if not has_outcomes(conn):
        log.info("experiments: no outcome table (src.churn_events) for the %s source; not judged", cfg.source)
        return []
    ended = effective(load_experiments(cfg.experiments_file).experiments, ended_on(conn))
    experiments = [e for e in ended if e.active_on(scored_on)]
    if not experiments:
        return []
    scores = _served_scores(conn, cfg, scored_on)
    if scores is None:
        log.info("experiments: no scores served on %s are kept; not judged", scored_on)
        return []
    churned_ids = pa.array(churned_between(conn, scored_on, as_of), pa.string())
    results = []
    for experiment in experiments:
        assigned = _copy_table(conn, "SELECT customer_id, arm FROM churn.experiment_assignments WHERE "
                                     "experiment_id = %s AND assigned_run <= %s", (experiment.id, scored_on.isoformat()),
                               ["customer_id", "arm"])
        if not assigned.num_rows:
            continue
        assigned = assigned.cast(pa.schema([("customer_id", pa.string()), ("arm", pa.string())]))
        joined = assigned.join(scores, "customer_id", join_type="inner")
        churned = pc.is_in(joined.column("customer_id"), value_set=churned_ids).to_numpy(zero_copy_only=False)
        analysis = analyze(experiment, joined.column("arm").to_numpy(zero_copy_only=False),
                           joined.column("churn_probability").to_numpy(zero_copy_only=False).astype(float),
                           churned.astype(int))
        with conn.cursor() as cur:
            cur.execute(
                "INSERT INTO churn.experiment_results (experiment_id, scored_on, evaluated_on, customers, withheld, "
                "result) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (experiment_id, scored_on) DO UPDATE SET "
                "evaluated_on = EXCLUDED.evaluated_on, customers = EXCLUDED.customers, withheld = EXCLUDED.withheld, "
                "result = EXCLUDED.result",
                (experiment.id, scored_on, as_of, joined.num_rows, analysis.withheld,
                 json.dumps(_jsonable(asdict(analysis)))))
        conn.commit()
        log.info("experiment %s on %s: %s customers, %s", experiment.id, scored_on, joined.num_rows,
                 analysis.withheld or [(c.treated, c.holdout, round(c.uplift.estimate, 4)) for c in analysis.comparisons])
        results.append(analysis)
    return results


def _jsonable(value):
    """NaN and infinities become null (JSON has neither)."""
    if isinstance(value, float):
        return None if not np.isfinite(value) else value
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
