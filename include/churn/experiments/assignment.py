"""Deterministic arm assignment, frozen once made, and the checks of a split.

**The hash** (``sha256-64/10000``), so that any other system computes the same arm::

    bucket(experiment_id, salt, customer_id) =
        int.from_bytes(sha256(f"{experiment_id}|{salt}|{customer_id}".encode("utf-8")).digest()[:8], "big") % 10000

An arm takes the buckets ``[floor(10000 * w_before / W), floor(10000 * (w_before + w) / W))`` in file order
(``W`` the sum of the weights). Enrollment in a layer uses the same hash with the experiment id
``layer:<layer>`` and an empty salt: the customer is in the experiment when that bucket falls in
``[100 * traffic_from, 100 * traffic_to)``.

**Frozen.** The first assignment of each customer is stored in ``churn.experiment_assignments`` and never
changes while the experiment runs (not when weights change, nor when the customer leaves and comes back);
customers seen for the first time are assigned by the file as it is that night.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
from dataclasses import dataclass
from datetime import date
from typing import Iterable

from churn.experiments.definitions import Experiment

log = logging.getLogger(__name__)

BUCKETS = 10_000
# (experiment id, salt, customer id) -> bucket: the published test vectors of the hash (docs/guides/experiments.md)
TEST_VECTORS = (
    ("boosting-vs-champion", "2026-12", "C00000001", 7471),
    ("boosting-vs-champion", "2026-12", "C00000002", 9254),
    ("boosting-vs-champion", "2027-01", "C00000001", 2503),
    ("retention-email", "", "7590-VHVEG", 2796),
    ("layer:retention", "", "Ä-ü-€", 2692),
)

def bucket(experiment_id: str, salt: str, customer_id: str) -> int:
    """The customer's bucket (0..9999) in an experiment: ``sha256-64/10000`` (see the module docstring)."""
    digest = hashlib.sha256(f"{experiment_id}|{salt}|{customer_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def arm_bounds(experiment: Experiment) -> list[tuple[str, int, int]]:
    """``(arm, first bucket, end bucket)`` of every arm: contiguous shares of the 10,000 buckets by weight.

    Exact rational arithmetic (weights as written, e.g. 0.45 = 45/100), the last arm ending at 10,000: every
    bucket has an arm whatever the weights, and another system computing ``floor(10000 * before / total)``
    with exact fractions gets the same bounds.
    """
    from fractions import Fraction

    weights = [Fraction(str(a.weight)) for a in experiment.arms]
    total = sum(weights)
    bounds, before = [], Fraction(0)
    for i, (arm, weight) in enumerate(zip(experiment.arms, weights)):
        low = math.floor(BUCKETS * before / total)
        high = BUCKETS if i == len(weights) - 1 else math.floor(BUCKETS * (before + weight) / total)
        bounds.append((arm.name, low, high))
        before += weight
    return bounds


def enrolled(experiment: Experiment, customer_id: str) -> bool:
    """True when the customer falls in the experiment's traffic range of its layer."""
    low, high = experiment.traffic
    if (low, high) == (0.0, 100.0):
        return True
    return 100 * low <= bucket(f"layer:{experiment.layer_name}", "", customer_id) < 100 * high


def arm_of(experiment: Experiment, customer_id: str) -> str | None:
    """The arm the file assigns ``customer_id`` to (None: not enrolled); the stored assignment wins over this."""
    if not enrolled(experiment, customer_id):
        return None
    b = bucket(experiment.id, experiment.salt, customer_id)
    return next(name for name, low, high in arm_bounds(experiment) if low <= b < high)


def bucket_sql(key_sql: str) -> str:
    """The SQL expression of :func:`bucket` for the text expression ``key_sql`` (``'<id>|<salt>|' || customer_id``).

    The first 8 bytes of the SHA-256 as a signed bigint ``h``; the unsigned value modulo 10,000 is
    ``mod(mod(h, 10000) + 10000 + 1616 * (h < 0), 10000)`` (2^64 mod 10,000 = 1,616; ``mod`` truncates toward
    zero).
    """
    h = f"('x' || encode(substr(sha256(convert_to({key_sql}, 'UTF8')), 1, 8), 'hex'))::bit(64)::bigint"
    return f"mod(mod({h}, {BUCKETS}) + {BUCKETS} + 1616 * (({h}) < 0)::int, {BUCKETS})"  # mod(): no % for the driver


def _arm_case(experiment: Experiment, bucket_column: str) -> tuple[str, list]:
    """``CASE`` choosing the arm of a bucket (the arms' contiguous ranges), with its parameters (the names)."""
    bounds = arm_bounds(experiment)
    whens = " ".join(f"WHEN {bucket_column} < {int(high)} THEN %s" for _, _, high in bounds[:-1])
    return f"CASE {whens} ELSE %s END", [name for name, _, _ in bounds]


@dataclass
class IdsFile:
    """A Parquet file's id column, streamed batch by batch (never a Python list of every id)."""

    path: str
    column: str
    batch_rows: int = 500_000


def _copy_ids(cur, customer_ids) -> None:
    """COPY the ids into the temp table ``experiment_ids``: an :class:`IdsFile` in Arrow CSV batches, else text."""
    if isinstance(customer_ids, IdsFile):
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(customer_ids.path)
        for batch in parquet.iter_batches(batch_size=customer_ids.batch_rows, columns=[customer_ids.column]):
            ids = pc.cast(batch.column(0), pa.string()).drop_null()
            buf = io.BytesIO()
            pacsv.write_csv(pa.table({"customer_id": ids}), buf, write_options=pacsv.WriteOptions(include_header=False))
            buf.seek(0)
            cur.copy_expert("COPY experiment_ids (customer_id) FROM STDIN WITH (FORMAT csv)", buf)
        return
    cur.copy_expert("COPY experiment_ids (customer_id) FROM STDIN",
                    io.StringIO("".join(f"{_copy_text(str(c))}\n" for c in customer_ids)))


@dataclass
class AssignmentCounts:
    """One experiment's assignments after a night: per arm, all stored, and how many were new tonight."""

    experiment_id: str
    per_arm: dict[str, int]
    new: int


def assign(conn, experiments: Iterable[Experiment], customer_ids: "Iterable[str] | IdsFile", run_key: str,
           night: date) -> list[AssignmentCounts]:
    """Store the arm of every customer not yet assigned in each experiment active on ``night``; return counts.

    ``experiments``: every experiment of the file (the inactive ones name layer mates). The ids go to a
    temporary table; only customers without an assignment in the experiment, nor in another experiment of
    its layer (so an edited traffic range never puts a customer in two), are hashed and stored. Idempotent:
    a re-run of the night adds nothing, and an assignment once stored never changes.
    """
    from churn.db import ensure_schema

    experiments = list(experiments)
    active = [e for e in experiments if e.active_on(night)]
    if not active:
        return []
    ensure_schema(conn)
    results = []
    with conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE IF NOT EXISTS experiment_ids (customer_id text) ON COMMIT DROP")
        cur.execute("TRUNCATE experiment_ids")
        _copy_ids(cur, customer_ids)
        cur.execute("ANALYZE experiment_ids")
        for exp in active:
            mates = [e.id for e in experiments if e.layer and e.layer == exp.layer and e.id != exp.id]
            # hashed in the database (the same sha256-64/10000 as bucket(), checked against it by the tests):
            # no id travels back to Python, whatever the population
            arm_case, arm_params = _arm_case(exp, "b")
            low, high = exp.traffic
            everyone = (low, high) == (0.0, 100.0)
            enrolled_sql = "true" if everyone else f"{bucket_sql('lk')} >= %s AND {bucket_sql('lk')} < %s"
            cur.execute(
                f"INSERT INTO churn.experiment_assignments (experiment_id, customer_id, arm, assigned_run) "
                f"SELECT %s, customer_id, {arm_case}, %s FROM (SELECT customer_id, {bucket_sql('k')} AS b FROM "
                f"(SELECT customer_id, %s || customer_id AS k, %s || customer_id AS lk FROM "
                f"(SELECT DISTINCT customer_id FROM experiment_ids) d) i WHERE {enrolled_sql} AND NOT EXISTS "
                f"(SELECT 1 FROM churn.experiment_assignments a WHERE a.customer_id = i.customer_id AND "
                f"a.experiment_id = ANY(%s))) s ON CONFLICT (experiment_id, customer_id) DO NOTHING",
                [exp.id, *arm_params, run_key, f"{exp.id}|{exp.salt}|", f"layer:{exp.layer_name}||",
                 *([] if everyone else [100 * low, 100 * high]), [exp.id, *mates]])
            cur.execute("SELECT arm, count(*), count(*) FILTER (WHERE assigned_run = %s) FROM "
                        "churn.experiment_assignments WHERE experiment_id = %s GROUP BY arm", (run_key, exp.id))
            found = cur.fetchall()
            per_arm = {arm.name: 0 for arm in exp.arms} | {arm: int(n) for arm, n, _ in found}
            new = sum(int(tonight) for _, _, tonight in found)  # a re-run of the night reports the same
            results.append(AssignmentCounts(exp.id, per_arm, new))
            log.info("experiment %s: %s assignment(s) on %s; per arm %s", exp.id, new, night, per_arm)
    conn.commit()
    return results


def _copy_text(value: str) -> str:
    """A value in COPY's text format (ids are checked printable, but escape the format's own characters)."""
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def stored_arms(conn, experiment_id: str, customer_ids: Iterable[str]) -> dict[str, str]:
    """The stored arm of each of ``customer_ids`` that has one (none before the first assignment)."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('churn.experiment_assignments') IS NOT NULL")
        if not cur.fetchone()[0]:
            conn.rollback()
            return {}
        cur.execute("SELECT customer_id, arm FROM churn.experiment_assignments WHERE experiment_id = %s "
                    "AND customer_id = ANY(%s)", (experiment_id, list(customer_ids)))
        found = dict(cur.fetchall())
    conn.rollback()
    return found


@dataclass
class SplitCheck:
    """A sample-ratio-mismatch check: chi-squared of the arms' counts against their weights."""

    counts: dict[str, int]
    expected: dict[str, float]
    chi2: float
    p_value: float
    flagged: bool
    """True when p < ``threshold`` (0.001): the split is broken and the experiment's results are withheld."""


def sample_ratio_check(experiment: Experiment, counts: dict[str, int], threshold: float = 0.001) -> SplitCheck:
    """Chi-squared goodness of fit of the arms' sizes to their weights; flagged at p < ``threshold``."""
    from scipy.stats import chi2 as chi2_dist

    total_weight = sum(a.weight for a in experiment.arms)
    n = sum(counts.get(a.name, 0) for a in experiment.arms)
    expected = {a.name: n * a.weight / total_weight for a in experiment.arms}
    stat = sum((counts.get(name, 0) - e) ** 2 / e for name, e in expected.items() if e > 0)
    p = float(chi2_dist.sf(stat, len(experiment.arms) - 1)) if n else 1.0
    return SplitCheck({a.name: counts.get(a.name, 0) for a in experiment.arms}, expected, float(stat), p,
                      n > 0 and p < threshold)


def sample_size_per_arm(base_rate: float, minimum_detectable_effect: float, alpha: float = 0.05,
                        power: float = 0.8) -> int:
    """Customers per arm to detect an absolute change ``minimum_detectable_effect`` in a churn rate of
    ``base_rate`` (two-sided test of two proportions at ``alpha``, with ``power``)."""
    from scipy.stats import norm

    p1 = base_rate
    p2 = min(max(base_rate - minimum_detectable_effect, 1e-9), 1 - 1e-9)
    z_alpha, z_beta = norm.ppf(1 - alpha / 2), norm.ppf(power)
    pooled = (p1 + p2) / 2
    n = (z_alpha * math.sqrt(2 * pooled * (1 - pooled)) + z_beta * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))) ** 2
    return math.ceil(n / (p1 - p2) ** 2)


def record_split(conn, experiment: Experiment, night: date, run_key: str, counts: AssignmentCounts,
                 check: SplitCheck) -> None:
    """Store the night's split and its check in ``churn.experiment_splits`` (a re-run of the night replaces it)."""
    import json

    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO churn.experiment_splits (experiment_id, night, run_key, counts, new_customers, chi2, p_value, "
            "flagged) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (experiment_id, night) DO UPDATE SET "
            "run_key = EXCLUDED.run_key, counts = EXCLUDED.counts, new_customers = EXCLUDED.new_customers, "
            "chi2 = EXCLUDED.chi2, p_value = EXCLUDED.p_value, flagged = EXCLUDED.flagged",
            (experiment.id, night, run_key, json.dumps(check.counts), counts.new, check.chi2, check.p_value,
             check.flagged))
    conn.commit()


def purge_ended(conn, experiments: Iterable[Experiment], cutoff: date, batch_rows: int = 50_000) -> int:
    """Delete the assignments of experiments that ended before ``cutoff`` (judged by then), in bounded batches.

    Experiments without an ``end``, and those no longer in the file, keep theirs: a file edited by mistake
    must never erase who was in which arm.
    """
    ended = [e.id for e in experiments if e.end is not None and e.end < cutoff]
    total = 0
    with conn.cursor() as cur:
        for experiment_id in ended:
            while True:
                cur.execute("DELETE FROM churn.experiment_assignments WHERE ctid = ANY(ARRAY(SELECT ctid FROM "
                            "churn.experiment_assignments WHERE experiment_id = %s LIMIT %s))",
                            (experiment_id, batch_rows))
                total += cur.rowcount
                conn.commit()
                if cur.rowcount < batch_rows:
                    break
    conn.commit()
    if total:
        log.info("retention: %s assignments of experiments ended before %s removed (%s)", total, cutoff, ended)
    return total
