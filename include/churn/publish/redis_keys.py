"""Redis score contracts: key names, layouts, the served-batch marker, and the readers' lookup."""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass


LAYOUTS = ("json", "hash")
DEFAULT_BUCKETS = 65_536
DELETE_BATCH = 10_000


class RedisPublishError(RuntimeError):
    """Publishing to Redis failed; the marker was not moved, so readers keep the previous batch."""


class OlderRunRefused(RedisPublishError):
    """The served batch is newer than the run being published: Redis never goes back in time."""


class LeaseLost(RedisPublishError):
    """The publish lease is another publisher's now: the fenced write was refused whole by the server."""


@dataclass
class RedisPublish:
    """Outcome of a Redis publish."""

    rows: int
    stale_deleted: int
    seconds: float
    layout: str = "json"
    previous_run: str | None = None


def score_key(customer_id: str, prefix: str = "churn") -> str:
    """The documented lookup key of one customer (``json`` layout)."""
    return f"{prefix}:score:{customer_id}"


def bucket_of(customer_id: str, buckets: int = DEFAULT_BUCKETS) -> int:
    """Hash bucket of a customer (``hash`` layout): crc32 of the UTF-8 id modulo the bucket count."""
    return zlib.crc32(customer_id.encode()) % buckets


def bucket_key(customer_id: str, prefix: str = "churn", buckets: int = DEFAULT_BUCKETS) -> str:
    """The documented lookup key of one customer (``hash`` layout): ``HGET <key> <customer_id>``."""
    return f"{prefix}:h:{bucket_of(customer_id, buckets)}"


def meta_key(prefix: str = "churn") -> str:
    """Hash describing the batch currently served."""
    return f"{prefix}:meta"


def lock_key(prefix: str = "churn") -> str:
    """The publish lease: one publish at a time writes records and moves the marker."""
    return f"{prefix}:publish_lock"


def runs_key(prefix: str = "churn") -> str:
    """Hash ``run_id -> {"model_version", "scored_at"}`` for the runs referenced by compact records."""
    return f"{prefix}:runs"


def as_text(value) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


_RUN_INFO_CACHE: dict[tuple[int, str, str], dict] = {}


def lookup_score(client, customer_id: str, prefix: str = "churn", layout: str = "json",
                 buckets: int = DEFAULT_BUCKETS) -> dict | None:
    """Reference client: one round trip (GET or HGET); None when the customer has no score.

    The compact layout's per-run details (model version, scoring time) are read
    once per run id and cached in the process.
    """
    if layout == "json":
        raw = client.get(score_key(customer_id, prefix))
        return None if raw is None else json.loads(raw)
    if layout != "hash":
        raise ValueError(f"unknown Redis layout {layout!r}; use one of {LAYOUTS}")
    raw = client.hget(bucket_key(customer_id, prefix, buckets), customer_id)
    if raw is None:
        return None
    fields = as_text(raw).split("|")
    if len(fields) == 7:  # an event refresh carries its own details (churn.publish.refresh)
        proba, decile, band, run_id, version, scored_at, event_at = fields
        return {"customer_id": customer_id, "churn_probability": float(proba), "risk_band": band,
                "risk_decile": int(decile), "model_version": version, "run_id": run_id, "scored_at": scored_at,
                "source": "event", "event_at": event_at}
    proba, decile, band, run_id = fields
    cache_key = (id(client), prefix, run_id)
    info = _RUN_INFO_CACHE.get(cache_key)
    if info is None:
        info_raw = client.hget(runs_key(prefix), run_id)
        info = json.loads(info_raw) if info_raw is not None else {"model_version": None, "scored_at": None}
        if info_raw is not None:
            _RUN_INFO_CACHE[cache_key] = info
    return {"customer_id": customer_id, "churn_probability": float(proba), "risk_band": band,
            "risk_decile": int(decile), "model_version": info["model_version"], "run_id": run_id,
            "scored_at": info["scored_at"]}


def served_run(client, prefix: str = "churn") -> str | None:
    """run_id of the batch the marker points at."""
    return as_text(client.hget(meta_key(prefix), "run_id"))


def served_meta(client, prefix: str = "churn") -> dict[str, str]:
    """The whole marker hash as text (empty before the first publish)."""
    return {as_text(k): as_text(v) for k, v in client.hgetall(meta_key(prefix)).items()}


def cleanup_sources(meta: dict[str, str], run_id: str) -> list[str]:
    """Runs whose customers may still have keys that the publish of ``run_id`` must remove when absent."""
    sources = []
    if meta.get("run_id") and meta["run_id"] != run_id:
        sources.append(meta["run_id"])
    for field in ("cleanup_from", "writing"):
        for run in (meta.get(field) or "").split(","):
            if run and run != run_id and run not in sources:
                sources.append(run)
    return sources


# --- encoding -----------------------------------------------------------------------------


