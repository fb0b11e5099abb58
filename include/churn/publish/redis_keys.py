"""Redis score contracts: key names, layouts, the served-batch marker, and the readers' lookup."""

from __future__ import annotations

import json
import time
import weakref
import zlib
from dataclasses import dataclass


LAYOUTS = ("json", "hash", "compact")
DEFAULT_BUCKETS = 65_536
DELETE_BATCH = 10_000
# Runs whose details a ``compact`` value can point at: the value's last digit names one of these slots.
SLOTS = 10
# Band names by index, as churn.model.score names them (``compact`` values carry the index).
BAND_NAMES = ("low", "medium", "high", "very_high", "critical")
# Seconds a reader trusts its copy of ``churn:meta`` (compact layout) before reading it again.
META_TTL_SECONDS = 30.0


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
    buckets: int | None = None


def score_key(customer_id: str, prefix: str = "churn") -> str:
    """The documented lookup key of one customer (``json`` layout)."""
    return f"{prefix}:score:{customer_id}"


def bucket_of(customer_id: str, buckets: int = DEFAULT_BUCKETS) -> int:
    """Hash bucket of a customer (``hash`` layout): crc32 of the UTF-8 id modulo the bucket count."""
    return zlib.crc32(customer_id.encode()) % buckets


def bucket_key(customer_id: str, prefix: str = "churn", buckets: int = DEFAULT_BUCKETS) -> str:
    """The documented lookup key of one customer (``hash`` layout): ``HGET <key> <customer_id>``."""
    return f"{prefix}:h:{bucket_of(customer_id, buckets)}"


def compact_key(customer_id: str, prefix: str = "churn", buckets: int = DEFAULT_BUCKETS, groups: int = 0) -> str:
    """The documented lookup key of one customer (``compact`` layout): ``HGET <key> <customer_id>``.

    The bucket count is part of the key, so a re-bucketed batch is written beside the served one and the
    old keys are removed only after the marker moved. On a Redis Cluster (``groups`` > 0, the marker's
    ``groups``) the key carries the hash tag of the bucket's group: ``churn:c:{B}:{{g}}:{bucket}``.
    """
    bucket = bucket_of(customer_id, buckets)
    if groups:
        return f"{prefix}:c:{buckets}:{{{group_of(bucket, buckets, groups)}}}:{bucket}"
    return f"{prefix}:c:{buckets}:{bucket}"


def group_of(bucket: int, buckets: int, groups: int) -> int:
    """The cluster group (hash tag) of a bucket: contiguous ranges of buckets, ``bucket * groups // buckets``."""
    return bucket * groups // buckets


def cluster_groups(buckets: int) -> int:
    """How many hash-tag groups a cluster publish spreads ``buckets`` buckets over (a power of two when B is).

    About 128 buckets (~8,000 customers at the sized fill) per group, so that one group is one write
    transaction of a publish; at least 16 groups (spread over the primaries) and at most 16,384 (the
    cluster's slot count).
    """
    return max(1, min(buckets, max(16, buckets // 128), 16_384))


def fence_key(prefix: str, group: int) -> str:
    """The fence of one cluster group: the lease holder's token, in the same slot as the group's buckets."""
    return f"{prefix}:fence:{{{group}}}"


def is_cluster(client) -> bool:
    """True for a redis-py ``RedisCluster`` client (a ``redis+cluster://`` URL)."""
    from redis.cluster import RedisCluster

    return isinstance(client, RedisCluster)


def node_client(client, key: str):
    """A plain client of the node serving ``key`` (the client itself when it is not a cluster client).

    A transaction (WATCH/MULTI/EXEC) must run on one connection to the node holding its keys' slot.
    """
    if not is_cluster(client):
        return client
    return client.get_node_from_key(key).redis_connection


def decode_compact(value: int) -> tuple[float, int, int, int]:
    """``(probability, decile, band index, slot)`` of a ``compact`` value ``p*1000 + (decile-1)*100 + band*10 + slot``.

    ``p`` is the probability in millionths (0..1,000,000): the value is an integer below 2^31, which Redis
    keeps in 5 bytes inside a bucket.
    """
    micro, rest = divmod(int(value), 1000)
    return micro / 1_000_000, rest // 100 + 1, rest // 10 % 10, rest % 10


def bucket_count(customers: int, max_entries: int, fill: float = 0.6) -> int:
    """The power of two of buckets that keeps the mean bucket at most ``fill`` x the server's compact limit."""
    per_bucket = max(1.0, max_entries * fill)
    buckets = 1
    while customers / buckets > per_bucket:
        buckets *= 2
    return buckets


def meta_key(prefix: str = "churn") -> str:
    """Hash describing the batch currently served."""
    return f"{prefix}:meta"


def lock_key(prefix: str = "churn", cluster: bool = False) -> str:
    """The publish lease: one publish at a time writes records and moves the marker.

    On a cluster its name carries the marker's hash tag, so that both live in one slot (the switch WATCHes both).
    """
    return f"{{{prefix}:meta}}:publish_lock" if cluster else f"{prefix}:publish_lock"


def runs_key(prefix: str = "churn") -> str:
    """Hash ``run_id -> {"model_version", "scored_at"}`` for the runs referenced by compact records."""
    return f"{prefix}:runs"


def as_text(value) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


_RUN_INFO_CACHE: dict[tuple[int, str, str], dict] = {}
_META_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _served_layout(client, prefix: str, fresh: bool = False) -> dict[str, str]:
    """The marker as this process last read it (at most ``META_TTL_SECONDS`` old, or read now if ``fresh``)."""
    per_client = _META_CACHE.setdefault(client, {})
    cached = per_client.get(prefix)
    if fresh or cached is None or time.monotonic() - cached[0] > META_TTL_SECONDS:
        cached = (time.monotonic(), served_meta(client, prefix))
        per_client[prefix] = cached
    return cached[1]


def _event_record(customer_id: str, fields: list[str]) -> dict:
    proba, decile, band, run_id, version, scored_at, event_at = fields[:7]
    record = {"customer_id": customer_id, "churn_probability": float(proba), "risk_band": band,
              "risk_decile": int(decile), "model_version": version, "run_id": run_id, "scored_at": scored_at,
              "source": "event", "event_at": event_at}
    return _with_arm(record, fields[7:9])


def _with_arm(record: dict, arm: list[str]) -> dict:
    """The record with the experiment and arm that served it (``[experiment, arm]``, absent or empty: none)."""
    if len(arm) == 2 and arm[0]:
        record.update(experiment=arm[0], arm=arm[1])
    return record


def _slot_served(meta: dict[str, str], slot: int) -> bool:
    """True when ``slot`` is one of the served or the publishing run's (``slots``/``slots_writing`` lists, or the
    single ``slot``/``slot_writing`` of a marker without them)."""
    for listed, single in (("slots", "slot"), ("slots_writing", "slot_writing")):
        digits = (meta.get(listed) or meta.get(single) or "").split(",")
        if str(slot) in digits:
            return True
    return False


def _compact_record(customer_id: str, raw, meta: dict[str, str], strict: bool) -> dict | None:
    """The record of a ``compact`` value, or None when ``strict`` and the value's slot is neither the served
    nor the publishing one in ``meta`` (an older copy of the marker: read it again)."""
    text = as_text(raw)
    if "|" in text:  # an event refresh carries its own details (churn.publish.refresh)
        return _event_record(customer_id, text.split("|"))
    proba, decile, band, slot = decode_compact(int(text))
    if strict and not _slot_served(meta, slot):
        return None
    info = meta.get(f"slot_{slot}")
    if not info:
        return None
    run_id, version, scored_at, bands, *arm = info.split("|")
    return _with_arm({"customer_id": customer_id, "churn_probability": proba, "risk_band": bands.split(",")[band],
                      "risk_decile": decile, "model_version": version, "run_id": run_id, "scored_at": scored_at}, arm)


def lookup_score(client, customer_id: str, prefix: str = "churn", layout: str | None = None,
                 buckets: int | None = None) -> dict | None:
    """Reference client: one round trip (GET or HGET); None when the customer has no score.

    With ``layout=None`` the layout and bucket count are those of ``churn:meta``, read once and again every
    ``META_TTL_SECONDS``, on a miss, or when a ``compact`` value names a run slot that the copy says is
    neither served nor being published (a newer batch). The ``hash`` layout's per-run details are read once
    per run id and cached.
    """
    if layout is None:
        meta = _served_layout(client, prefix)
        raw = _fetch(client, customer_id, prefix, meta)
        if raw is None:  # a customer without a score, or a newer batch / bucket count: read the marker again
            fresh = _served_layout(client, prefix, fresh=True)
            if fresh == meta:
                return None
            meta, raw = fresh, _fetch(client, customer_id, prefix, fresh)
            if raw is None:
                return None
        return _decode(client, customer_id, prefix, meta, raw)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown Redis layout {layout!r}; use one of {LAYOUTS}")
    pinned = {"layout": layout, "buckets": str(buckets or DEFAULT_BUCKETS)}
    # a compact value's run details are in the marker's slots, whatever layout the caller pins
    meta = {**_served_layout(client, prefix), **pinned} if layout == "compact" else pinned
    raw = _fetch(client, customer_id, prefix, meta)
    return None if raw is None else _decode(client, customer_id, prefix, meta, raw)


def record_key(customer_id: str, meta: dict[str, str], prefix: str = "churn") -> tuple[str, str] | None:
    """``(command, key)`` holding ``customer_id``'s record under ``meta``'s layout: ``("GET", key)`` or
    ``("HGET", bucket key)`` (the customer id is the field); None when nothing is served."""
    layout = meta.get("layout")
    buckets = int(meta.get("buckets") or DEFAULT_BUCKETS)
    if layout == "compact":
        return "HGET", compact_key(customer_id, prefix, buckets, int(meta.get("groups") or 0))
    if layout == "hash":
        return "HGET", bucket_key(customer_id, prefix, buckets)
    if layout == "json":
        return "GET", score_key(customer_id, prefix)
    return None


def lookup_command(client, customer_id: str, prefix: str = "churn") -> str:
    """The one command a lookup of ``customer_id`` sends under the served layout (for display)."""
    command, key = record_key(customer_id, _served_layout(client, prefix), prefix) or (
        "GET", score_key(customer_id, prefix))
    return f"{command} {key}" + (f" {customer_id}" if command == "HGET" else "")


def _fetch(client, customer_id: str, prefix: str, meta: dict[str, str]):
    """The one round trip of a lookup under ``meta``'s layout (None: no such record, or nothing served)."""
    where = record_key(customer_id, meta, prefix)
    if where is None:
        return None
    command, key = where
    return client.get(key) if command == "GET" else client.hget(key, customer_id)


def _decode(client, customer_id: str, prefix: str, meta: dict[str, str], raw) -> dict | None:
    layout = meta["layout"]
    if layout == "compact":
        record = _compact_record(customer_id, raw, meta, strict=True)
        if record is None:
            record = _compact_record(customer_id, raw, _served_layout(client, prefix, fresh=True), strict=False)
        return record
    if layout == "json":
        return json.loads(raw)
    return _hash_record(client, customer_id, prefix, raw)


def _hash_record(client, customer_id: str, prefix: str, raw) -> dict:
    fields = as_text(raw).split("|")
    if len(fields) in (7, 9):  # an event refresh carries its own details (churn.publish.refresh)
        return _event_record(customer_id, fields)
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


