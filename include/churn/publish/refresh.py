"""Event refreshes of single customers' scores, consistent with the nightly batch in Postgres and Redis.

Postgres: ``churn.score_refreshes`` holds each refreshed customer's newest refresh, stamped with
``data_at`` (when its features were read); ``churn.scores_current`` shows a refresh instead of the
batch's row only while ``data_at`` is later than the served batch's data cutoff (its run date, 00:00
UTC), so the next nightly batch supersedes it by itself, atomically with its switch. Every refresh
is also appended to ``churn.score_refresh_log`` (one row per customer and re-score run), which
``churn.scores_history`` includes. The apply runs under the nightly switch's advisory lock: a refresh
is checked against the batch that is served when it commits.

Redis: the same records as the batch (``churn:score:{id}`` JSON with ``"source": "event"`` and
``event_at``; or a 7-field hash value ``proba|decile|band|run_id|model_version|scored_at|event_at``, with
``|experiment|arm`` after it, 9 fields, for a customer an experiment's arm serves),
written under the nightly publish's lease, and only when the refresh is newer than the batch the
marker serves. The nightly Redis publish, under the same lease, skips customers whose refresh is newer
than its batch. Whichever order they run in, both stores end with the newest data's score.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, TYPE_CHECKING

import pandas as pd

from churn.publish.redis_encoding import Fencing
from churn.publish.redis_keys import (
    RedisPublishError, bucket_key, bucket_of, compact_key, group_of, is_cluster, lock_key, node_client, score_key,
    served_meta,
)

if TYPE_CHECKING:
    from churn.db import PgConnection, PgCursor

log = logging.getLogger(__name__)

SWITCH_LOCK = 7412  # the nightly Postgres switch's transaction lock (churn.publish.postgres._LOCK_KEY)
REFRESH_COLUMNS = ("customer_id, churn_probability, risk_band, risk_decile, model_version, run_id, scored_at, "
                   "data_at, event_at")


def batch_cutoff(run_key: str) -> str:
    """The data cutoff of the nightly batch ``run_key`` (its snapshot date, 00:00 UTC)."""
    return f"{run_key[:10]}T00:00:00+00:00"


@dataclass
class RefreshOutcome:
    """What happened to each customer of one refresh batch in Postgres."""

    applied: list[str]
    superseded: list[str]
    """A newer score exists: a nightly batch that switched in after the features were read, or a later event."""
    not_served: list[str]
    """Not in the served batch (new customers are scored by the next nightly run), or no batch served yet."""
    batch_run: str | None


def current_batch(cur: PgCursor) -> tuple[str, str] | None:
    """(run_key, table name) of the batch ``churn.scores_current`` serves, or None."""
    cur.execute("SELECT run_key, table_name FROM churn.score_runs WHERE is_current")
    row = cur.fetchone()
    return (row[0], row[1]) if row else None


def apply_postgres(conn: PgConnection, scores: pd.DataFrame, *, model_version: str, run_id: str, scored_at: datetime,
                   data_at: datetime) -> RefreshOutcome:
    """Store the refreshed scores (columns id, probability, band, decile, ``event_at``, optional per-row
    ``model_version``, else ``model_version``) where they are newest."""
    from psycopg2.extras import execute_values

    from churn.db import ensure_schema

    ensure_schema(conn)
    ids = scores["customer_id"].astype("str").tolist()
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (SWITCH_LOCK,))
        batch = current_batch(cur)
        if batch is None:
            conn.rollback()
            return RefreshOutcome([], [], ids, None)
        run_key, table = batch
        cur.execute(f"SELECT customer_id FROM churn.{table} WHERE customer_id = ANY(%s)", (ids,))
        served = {row[0] for row in cur.fetchall()}
        fresh = data_at > datetime.fromisoformat(batch_cutoff(run_key))  # else the batch has the newer data
        # an experiment's customer keeps its arm's model (the scores' own model_version column)
        versions = (scores["model_version"].astype("str").tolist() if "model_version" in scores.columns
                    else [model_version] * len(scores))
        rows = [(str(r.customer_id), float(r.churn_probability), str(r.risk_band), int(r.risk_decile), version,
                 run_id, scored_at, data_at, r.event_at)
                for r, version in zip(scores.itertuples(index=False), versions) if str(r.customer_id) in served]
        kept: set[str] = set()
        if rows and fresh:
            # Newest data wins: an older refresh (a slower run of an earlier event) never replaces a newer one.
            kept = {r[0] for r in execute_values(
                cur, f"INSERT INTO churn.score_refreshes ({REFRESH_COLUMNS}) VALUES %s ON CONFLICT (customer_id) "
                     "DO UPDATE SET churn_probability = EXCLUDED.churn_probability, risk_band = EXCLUDED.risk_band, "
                     "risk_decile = EXCLUDED.risk_decile, model_version = EXCLUDED.model_version, "
                     "run_id = EXCLUDED.run_id, scored_at = EXCLUDED.scored_at, data_at = EXCLUDED.data_at, "
                     "event_at = EXCLUDED.event_at WHERE churn.score_refreshes.data_at < EXCLUDED.data_at "
                     "RETURNING customer_id", rows, fetch=True)}
            execute_values(
                cur, f"INSERT INTO churn.score_refresh_log ({REFRESH_COLUMNS}) VALUES %s ON CONFLICT "
                     "(customer_id, run_id) DO UPDATE SET churn_probability = EXCLUDED.churn_probability, "
                     "risk_band = EXCLUDED.risk_band, risk_decile = EXCLUDED.risk_decile, "
                     "scored_at = EXCLUDED.scored_at, data_at = EXCLUDED.data_at, event_at = EXCLUDED.event_at",
                [r for r in rows if r[0] in kept])
    conn.commit()
    return RefreshOutcome(applied=sorted(kept), superseded=sorted({r[0] for r in rows} - kept),
                          not_served=sorted(set(ids) - served), batch_run=run_key)


def served_arms(cur: PgCursor, table: str, customer_ids: list[str]) -> dict[str, tuple[str, str | None, str | None]]:
    """``(model_version, experiment, arm)`` of each customer in the served batch's ``table`` (an experiment's
    customer keeps its arm, frozen, and so its arm's model, between nights)."""
    cur.execute("SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = 'churn' AND "
                "table_name = %s AND column_name = 'experiment')", (table,))
    arms = "experiment, arm" if cur.fetchone()[0] else "NULL, NULL"  # a run table from before experiments
    cur.execute(f"SELECT customer_id, model_version, {arms} FROM churn.{table} WHERE customer_id = ANY(%s)",
                (list(customer_ids),))
    return {cid: (version, experiment, arm) for cid, version, experiment, arm in cur.fetchall()}


def newer_than_batch(conn: PgConnection, run_key: str) -> list[str]:
    """Customers whose refresh is newer than batch ``run_key`` (the nightly Redis publish leaves them alone)."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('churn.score_refreshes')")
        if cur.fetchone()[0] is None:
            conn.rollback()
            return []
        cur.execute("SELECT customer_id FROM churn.score_refreshes WHERE data_at > %s::timestamptz",
                    (batch_cutoff(run_key),))
        ids = [row[0] for row in cur.fetchall()]
    conn.rollback()
    return ids


def _time_text(value) -> str | None:
    return None if value is None else pd.Timestamp(value).tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def write_redis(client, conn: PgConnection, customer_ids: Iterable[str], *, prefix: str = "churn", lock_wait_seconds: float = 900.0,
                lock_lease_seconds: float = 60.0) -> int:
    """Copy the customers' newest refreshes from Postgres to Redis where they are newer than the served batch.

    Idempotent and convergent (it copies whatever Postgres holds now), so a retry or a late run never
    writes anything older than what it finds.
    """
    import redis

    ids = sorted({str(i) for i in customer_ids})
    if not ids:
        return 0
    lease_name = lock_key(prefix, is_cluster(client))
    lease = node_client(client, lease_name).lock(lease_name, timeout=lock_lease_seconds,
                                                 blocking_timeout=lock_wait_seconds, thread_local=False)
    if not lease.acquire():
        raise RedisPublishError(f"re-score: {lease_name} was held for {lock_wait_seconds:.0f} s (a nightly "
                                "publish?); the task's retry writes the refreshes")
    try:
        # Fenced like the nightly publish: applied by the server only while the lease is still ours, so a
        # re-score that stalled past its lease writes nothing over a batch published meanwhile.
        fencing = Fencing(client, lease_name, lease.local.token, int(lock_lease_seconds * 1000), prefix)
        meta = served_meta(fencing.home, prefix)
        served = meta.get("run_id")
        if not served:
            log.warning("Redis serves no batch yet: refreshes are not written")
            return 0
        layout = meta.get("layout") or "json"
        buckets = int(meta.get("buckets") or 0)
        groups = int(meta.get("groups") or 0)  # a cluster's hash-tag groups (0 on one server)
        fencing.claim(groups, "re-score")
        with conn.cursor() as cur:
            cur.execute(f"SELECT {REFRESH_COLUMNS} FROM churn.score_refreshes WHERE customer_id = ANY(%s) "
                        "AND data_at > %s::timestamptz", (ids, batch_cutoff(served)))
            rows = cur.fetchall()
            batch = current_batch(cur)
            arms = served_arms(cur, batch[1], [r[0] for r in rows]) if batch and rows else {}
        conn.rollback()
        commands: dict[int | None, list[tuple]] = {}
        for cid, proba, band, decile, version, run_id, scored_at, _data_at, event_at in rows:
            _, experiment, arm = arms.get(cid, (None, None, None))
            if layout in ("hash", "compact"):
                # 7 fields, 9 with the experiment and arm that served the customer
                value = "|".join([f"{float(proba):.6f}", str(int(decile)), band, run_id, version,
                                  _time_text(scored_at), _time_text(event_at)] + ([experiment, arm] if experiment else []))
                key = (bucket_key(cid, prefix, buckets) if layout == "hash"
                       else compact_key(cid, prefix, buckets, groups))
                group = group_of(bucket_of(cid, buckets), buckets, groups) if groups else None
                commands.setdefault(group, []).append(("HSET", key, cid, value))
            else:
                commands.setdefault(None, []).append(("SET", score_key(cid, prefix), json.dumps({
                    "customer_id": cid, "churn_probability": round(float(proba), 6), "risk_band": band,
                    "risk_decile": int(decile), "model_version": version, "run_id": run_id,
                    "scored_at": _time_text(scored_at), "source": "event", "event_at": _time_text(event_at),
                    **({"experiment": experiment, "arm": arm} if experiment else {})})))
        for group, batch in commands.items():  # one transaction (per cluster group)
            fencing.run(batch, "re-score", group=group)
        return len(rows)
    except redis.RedisError as exc:
        raise RedisPublishError(f"re-score: writing refreshes to Redis failed ({type(exc).__name__}: {exc}); the "
                                "task's retry writes them (Postgres already holds them)") from exc
    finally:
        try:
            lease.release()
        except redis.exceptions.LockError:
            pass  # expired: nothing of ours to release
