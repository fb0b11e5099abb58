"""Scores in Redis for front-end lookups: one documented key per customer, bulk-written.

Key contract (layout ``json``, the default)::

    GET churn:score:{customer_id}
    -> {"customer_id": "C00000042", "churn_probability": 0.8123, "risk_band": "high",
        "risk_decile": 10, "model_version": "2026-11-20-tpot", "run_id": "2026-11-20",
        "scored_at": "2026-11-20T02:14:03Z"}

    HGETALL churn:meta   -> run_id, model_version, customers, published_at of the served batch

Publishing overwrites each key in place (SET is atomic per key), so every
existing customer's lookup returns a complete record, old or new, during the
whole publish. The ``churn:meta`` marker moves to the new run only after every
record is written; customers absent from the new batch are deleted after that.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow.parquet as pq

log = logging.getLogger(__name__)


class RedisPublishError(RuntimeError):
    """Publishing to Redis failed; the marker was not moved, so readers keep the previous batch."""


@dataclass
class RedisPublish:
    """Outcome of a Redis publish."""

    rows: int
    stale_deleted: int
    seconds: float


def score_key(customer_id: str, prefix: str = "churn") -> str:
    """The documented lookup key for one customer."""
    return f"{prefix}:score:{customer_id}"


def meta_key(prefix: str = "churn") -> str:
    """Hash describing the batch currently served."""
    return f"{prefix}:meta"


def lookup_score(client, customer_id: str, prefix: str = "churn") -> dict | None:
    """Reference client: one GET round trip; None when the customer has no score."""
    raw = client.get(score_key(customer_id, prefix))
    return None if raw is None else json.loads(raw)


def _records(scores_path: str | Path, batch_rows: int) -> Iterator[dict[str, bytes]]:
    """Key -> JSON value mappings, one per Parquet batch."""
    parquet = pq.ParquetFile(scores_path)
    for batch in parquet.iter_batches(batch_size=batch_rows):
        columns = batch.to_pydict()
        yield columns  # type: ignore[misc]


def encode_batch(columns: dict, prefix: str) -> dict[str, str]:
    """JSON value per key for one batch of score columns."""
    out: dict[str, str] = {}
    for cid, proba, band, decile, model, run, scored in zip(
        columns["customer_id"], columns["churn_probability"], columns["risk_band"], columns["risk_decile"],
        columns["model_version"], columns["run_id"], columns["scored_at"],
    ):
        out[f"{prefix}:score:{cid}"] = json.dumps(
            {"customer_id": cid, "churn_probability": round(float(proba), 6), "risk_band": band,
             "risk_decile": int(decile), "model_version": model, "run_id": run,
             "scored_at": scored.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")},
            separators=(",", ":"),
        )
    return out


def publish_scores(
    client,
    scores_path: str | Path,
    run_id: str,
    model_version: str,
    stale_ids: Iterable[str] | None = None,
    prefix: str = "churn",
    batch_rows: int = 10_000,
) -> RedisPublish:
    """Write every score with batched MSET, then move the marker, then delete customers no longer scored.

    ``stale_ids`` lists customers of the previous batch that are not in this one
    (the caller computes it, e.g. from Postgres run tables); they are deleted only
    after the marker has moved.
    """
    import redis

    started = time.monotonic()
    rows = 0
    try:
        for columns in _records(scores_path, batch_rows):
            mapping = encode_batch(columns, prefix)
            client.mset(mapping)  # one round trip per batch, atomic per batch
            rows += len(mapping)
        client.hset(
            meta_key(prefix),
            mapping={"run_id": run_id, "model_version": model_version, "customers": rows,
                     "published_at": datetime.now(timezone.utc).isoformat()},
        )
        deleted = 0
        if stale_ids is not None:
            pipe = client.pipeline(transaction=False)
            pending = 0
            for cid in stale_ids:
                pipe.delete(score_key(cid, prefix))
                pending += 1
                if pending >= batch_rows:
                    deleted += sum(pipe.execute())
                    pending = 0
            if pending:
                deleted += sum(pipe.execute())
    except redis.RedisError as exc:
        raise RedisPublishError(
            f"Redis publish of run {run_id} failed after {rows} records: {exc}. "
            "The batch marker was not moved if this happened before it; the task retry rewrites every record."
        ) from exc
    elapsed = time.monotonic() - started
    log.info("published %s scores to Redis (%s stale removed) in %.2f s", rows, deleted, elapsed)
    return RedisPublish(rows, deleted, elapsed)


def served_run(client, prefix: str = "churn") -> str | None:
    """run_id of the batch the marker points at."""
    raw = client.hget(meta_key(prefix), "run_id")
    return raw.decode() if isinstance(raw, bytes) else raw
