"""Scores in Redis for front-end lookups: one documented key per lookup, bulk-written.

Three layouts, chosen with ``CHURN_REDIS_LAYOUT`` (the reference client
:func:`lookup_score` reads the served one from ``churn:meta``). Each lookup is ONE round trip for a client
that has read ``churn:meta`` once (docs/reference/redis.md).

``compact`` (default, ~20 bytes per customer)::

    bucket = crc32(utf8(customer_id)) % B        # B = HGET churn:meta buckets (sized by the population)
    HGET churn:c:{B}:{bucket} {customer_id}
    -> "812346923"                                # micro*1000 + (decile-1)*100 + band*10 + slot
    HGET churn:meta slot_3 -> "run_id|model_version|scored_at|band names"   # read with the marker

``json`` (one key per customer)::

    GET churn:score:{customer_id}
    -> {"customer_id":"C00000042","churn_probability":0.812346,"risk_band":"high","risk_decile":10,
        "model_version":"2026-11-20-tpot","run_id":"2026-11-20","scored_at":"2026-11-20T02:14:03Z"}

``hash`` (text values in buckets)::

    HGET churn:h:{bucket} {customer_id}
    -> "0.812346|10|high|2026-11-20"              # probability|decile|band|run_id
    HGET churn:runs {run_id}                      # once per run, cacheable: model_version, scored_at (JSON)

``HGETALL churn:meta`` -> run_id, model_version, customers, published_at, layout, buckets of the served batch.

Publish protocol (every layout): records are overwritten **in place** (one
key or one hash field per customer, each write atomic), so during a publish
every existing customer's lookup returns a complete record of the old or the
new run, never nothing; there is never more than one record per customer, so
old versions cannot pile up. ``churn:meta`` moves to the new run in one
MULTI/EXEC only after every record is written; customers absent from the new
batch (and a previous layout's keys) are deleted after that. Runs whose keys
may still need cleaning are remembered in ``churn:meta`` (``writing``,
``cleanup_from``) so a publish killed at any point is finished by the retry.

Fencing: one publish at a time holds the lease ``churn:publish_lock`` (a token with a TTL), and every
write of a publish (each record batch, the marker, the cleanup) is one WATCH/MULTI/EXEC transaction
that the server applies only if the lease key still holds this publisher's token and was not touched
since the WATCH; the same transaction renews the lease. A publisher paused past its lease (GC, SIGSTOP)
that resumes after another took over writes nothing and stops with ``LeaseLost``.

Redis Cluster (a ``redis+cluster://`` URL; ``compact`` only): bucket keys carry their group's hash tag
(``churn:c:{B}:{g}:{bucket}``, ``groups`` in the marker), each group's writes are fenced by the group's own
fence key in its slot (claimed with this publisher's token right after the lease is taken), and the lease
lives in the marker's slot (:class:`churn.publish.redis_encoding.Fencing`).

Records are encoded column-wise with Arrow and sent as pre-built RESP
commands (one MSET per batch; for the hash layout, one multi-field HSET per
bucket, a bucket range at a time), and the next batch is encoded in a helper thread while Redis
ingests the current one: that is what puts the project path above the raw
batched-MSET floor.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

from churn.publish.redis_encoding import (
    Encoded, Fencing, batches, check_run, crc32_array, encode_json, encode_json_values, encoded_batches,
    served_combos,
    hash_partitions, scored_at_text,
)
from churn.publish.redis_keys import (
    BAND_NAMES, DEFAULT_BUCKETS, DELETE_BATCH, LAYOUTS, SLOTS, LeaseLost, OlderRunRefused, RedisPublish,
    RedisPublishError, as_text, bucket_count, bucket_key, bucket_of, cleanup_sources, cluster_groups, compact_key,
    decode_compact, group_of, is_cluster, lock_key, lookup_command, lookup_score, meta_key, node_client, record_key,
    runs_key, score_key, served_meta, served_run,
)

log = logging.getLogger(__name__)


def _scan_delete(client, fencing: Fencing, pattern: str) -> int:
    """UNLINK every key matching ``pattern`` (a previous layout's keys), in lease-fenced batches.

    On a cluster every node is scanned and keys are deleted per hash-tag group (one slot per transaction).
    """
    deleted = 0
    pending: dict[int | None, list[bytes]] = {}
    for key in client.scan_iter(match=pattern, count=10_000):
        group = _tag_group(key) if fencing.cluster else None
        batch = pending.setdefault(group, [])
        batch.append(key)
        if len(batch) >= DELETE_BATCH:
            deleted += sum(fencing.run([("UNLINK", *batch)], group=group))
            pending[group] = []
    for group, batch in pending.items():
        if batch:
            deleted += sum(fencing.run([("UNLINK", *batch)], group=group))
    return deleted


def _tag_group(key) -> int:
    """The group number in a cluster bucket key's hash tag (``churn:c:B:{g}:bucket``)."""
    text = as_text(key)
    try:
        return int(text.split("{", 1)[1].split("}", 1)[0])
    except (IndexError, ValueError):
        raise RedisPublishError(f"key {text!r} on the cluster has no group hash tag: it was not written by a "
                                "cluster publish; delete it by hand (the publish does not touch unfenced keys)")


def _delete_stale(fencing: Fencing, ids: Iterable[str], prefix: str, layout: str, buckets: int,
                  batch_rows: int, groups: int = 0) -> int:
    """Delete the records of ``ids``, one lease-fenced transaction per ``batch_rows`` customers (per group)."""
    deleted = 0
    pending: dict[int | None, list[tuple]] = {}
    for cid in ids:
        group = None
        if layout == "json":
            command = ("UNLINK", score_key(cid, prefix))
        elif layout == "compact":
            command = ("HDEL", compact_key(cid, prefix, buckets, groups), cid)
            if groups:
                group = group_of(bucket_of(cid, buckets), buckets, groups)
        else:
            command = ("HDEL", bucket_key(cid, prefix, buckets), cid)
        batch = pending.setdefault(group, [])
        batch.append(command)
        if len(batch) >= batch_rows:
            deleted += sum(fencing.run(batch, group=group))
            pending[group] = []
    for group, batch in pending.items():
        deleted += sum(fencing.run(batch, group=group))
    return deleted


def _layout_pattern(layout_tag: str, prefix: str) -> str:
    """The keys of a layout tag (``json``, ``hash:<B>``, ``compact:<B>``): a compact batch's keys name its B."""
    if layout_tag == "json":
        return f"{prefix}:score:*"
    if layout_tag.startswith("compact:"):
        return f"{prefix}:c:{layout_tag.split(':', 1)[1]}:*"
    return f"{prefix}:h:*"


def _run_slots(meta: dict[str, str], fields: tuple[str, ...]) -> list[int]:
    """The slots the marker's ``fields`` (``slots``/``slot``, or ``slots_writing``/``slot_writing``) name."""
    for field in fields:
        if meta.get(field):
            return [int(s) for s in str(meta[field]).split(",")]
    return []


def _slots_for(meta: dict[str, str], run_id: str, combos: list[tuple[str, str, str]],
               scored_at: str | None = None) -> list[int]:
    """The slot digit of each ``(model_version, experiment, arm)`` of ``run_id``'s values.

    A combination this run already has a digit for (an attempt being retried, or the served run published
    again) keeps it: its details are the same. Any other takes the next digit after the last one taken that
    the served batch does not use: a served digit is never rewritten with other details while readers use it.
    """
    served = set(_run_slots(meta, ("slots", "slot")))
    held: dict[tuple[str, str, str], int] = {}
    for digit in _run_slots(meta, ("slots_writing", "slot_writing")) + sorted(served):
        info = (meta.get(f"slot_{digit}") or "").split("|")
        if info[0] == run_id and len(info) >= 4 and (scored_at is None or info[2] == scored_at):
            held.setdefault((info[1], *(info[4:6] if len(info) >= 6 else ("", ""))), digit)
    chosen = {c: held[c] for c in combos if c in held}
    taken = served | set(chosen.values())
    missing = [c for c in combos if c not in chosen]
    if len(missing) > SLOTS - len(taken):
        raise RedisPublishError(
            f"run {run_id} serves {len(combos)} model/experiment arm combinations and the compact layout has "
            f"{SLOTS - len(taken)} free slots for the {len(missing)} new ones (of {SLOTS}; the served batch keeps "
            f"{len(served)}): end an experiment, use fewer arms, or publish with CHURN_REDIS_LAYOUT=json")
    last = meta.get("slot_last") or meta.get("slot") or ""
    digit = int(last) if last else SLOTS - 1
    for combo in missing:
        digit = (digit + 1) % SLOTS
        while digit in taken:
            digit = (digit + 1) % SLOTS
        chosen[combo] = digit
        taken.add(digit)
    return [chosen[c] for c in combos]


# Mean customers per bucket as a share of the server's compact-encoding limit: a new count is chosen when
# the population leaves [LOW_FILL, HIGH_FILL] of it (hysteresis: a population moving around a power of
# two does not re-bucket every night), aiming at TARGET_FILL.
LOW_FILL, TARGET_FILL, HIGH_FILL = 0.2, 0.6, 0.75


def _sized_buckets(client, scores_path, layout: str, meta: dict[str, str], max_entries: int = 0) -> int:
    """The bucket count for this batch: the served one while it keeps buckets compact, else a new power of two."""
    import pyarrow.parquet as pq

    customers = pq.ParquetFile(scores_path).metadata.num_rows
    limit = max_entries or compact_limit(client)
    served = int(meta.get("buckets") or 0) if meta.get("layout") == layout else 0
    if served and LOW_FILL * limit <= customers / served <= HIGH_FILL * limit:
        return served
    chosen = bucket_count(customers, limit, TARGET_FILL)
    if served and chosen == served:
        return served
    log.info("Redis %s layout: %s buckets for %s customers (the server keeps hashes of up to %s entries "
             "compact%s)", layout, chosen, customers, limit, f"; was {served}" if served else "")
    return chosen


def compact_limit(client) -> int:
    """The server's compact-encoding limit for hashes (``hash-max-listpack-entries``), 128 when unreadable."""
    import redis

    for name in ("hash-max-listpack-entries", "hash-max-ziplist-entries"):
        try:
            value = client.config_get(name).get(name)
        except redis.exceptions.ResponseError as exc:  # NOPERM for a least-privilege user, or unknown name
            log.info("CONFIG GET %s refused (%s): assuming the default of 128 entries", name, exc)
            return 128
        if value:
            return max(1, int(value))
    return 128


# The store module is the public face of the Redis contract: readers and tests import these from here.
__all__ = ["DEFAULT_BUCKETS", "LAYOUTS", "LeaseLost", "OlderRunRefused", "RedisPublish", "RedisPublishError",
           "bucket_count", "bucket_key", "bucket_of", "compact_key", "compact_limit", "crc32_array", "decode_compact",
           "encode_json_values", "lookup_command", "record_key", "lock_key", "lookup_score", "meta_key",
           "publish_scores", "score_key", "served_meta", "served_run"]

StaleIds = Callable[[list[str]], Iterable[str]] | Iterable[str] | None


def publish_scores(
    client,
    scores_path: str | Path,
    run_id: str,
    model_version: str,
    stale_ids: StaleIds = None,
    prefix: str = "churn",
    batch_rows: int = 10_000,
    layout: str = "json",
    buckets: int = DEFAULT_BUCKETS,
    hook: Callable[[str], None] | None = None,
    hash_partition_rows: int = 200_000,
    lock_wait_seconds: float = 900.0,
    lock_lease_seconds: float = 60.0,
    exclude_ids: Callable[[], Iterable[str]] | None = None,
    max_entries: int = 0,
) -> RedisPublish:
    """Write every score in batches, then move the marker, then delete customers no longer scored.

    ``stale_ids`` is either the ids to delete, or a function receiving the runs
    whose customers may still have keys (:func:`cleanup_sources`) and returning
    the ids of those runs that are not in this batch (the pipeline answers it from
    the Postgres run tables). The ``hash`` layout writes one multi-field ``HSET`` per bucket, one
    bucket range of about ``hash_partition_rows`` rows at a time. ``hook(point)`` is called at named points
    (``start``, ``batch``, ``records_written``, ``switched``, ``cleaned``): the
    kill tests use it to stop the process exactly there.

    One publish at a time: a lease (``<prefix>:publish_lock``, renewed every batch, gone
    ``lock_lease_seconds`` after its holder died) is taken before the marker is read, so a second
    publish waits up to ``lock_wait_seconds`` and then reads the marker the first one left (an
    older run is then refused before it writes anything). Every write is a transaction the server
    applies only while the lease is still this publish's (see the module docstring), so a publish
    that lost its lease (a stalled zombie) writes no record and never moves the marker: it raises
    :class:`LeaseLost`.

    ``max_entries``: the server's ``hash-max-listpack-entries`` that a sized bucket count (``buckets=0``) keeps
    buckets under; 0 reads it with ``CONFIG GET`` (128 when refused).

    ``exclude_ids()``, asked once the lease is held, names customers whose record must not be written:
    those with an event refresh newer than this batch (``churn.publish.refresh``), which takes the same lease.
    """
    import redis

    if layout not in LAYOUTS:
        raise RedisPublishError(f"CHURN_REDIS_LAYOUT={layout!r} is not a layout; use one of {LAYOUTS}")
    if buckets < 0:
        raise RedisPublishError(f"CHURN_REDIS_HASH_BUCKETS={buckets} must be 0 (sized by the population) or positive")
    cluster = is_cluster(client)
    if cluster and layout != "compact":
        raise RedisPublishError(
            f"CHURN_REDIS_LAYOUT={layout!r} cannot be published to a Redis Cluster (its writes span slots); use "
            "CHURN_REDIS_LAYOUT=compact, whose bucket keys carry hash tags")
    started = time.monotonic()
    hook = hook or (lambda point: None)
    lease_name = lock_key(prefix, cluster)
    lease = node_client(client, lease_name).lock(lease_name, timeout=lock_lease_seconds,
                                                 blocking_timeout=lock_wait_seconds, thread_local=False)
    try:
        if not lease.acquire():
            raise RedisPublishError(
                f"Redis publish of run {run_id}: another publish held {lease_name} for {lock_wait_seconds:.0f} "
                "s; wait for it to finish (or, if its worker died, for the lease to expire) and retry")
        excluded = sorted(exclude_ids()) if exclude_ids is not None else []
        return _publish_locked(client, scores_path, run_id, model_version, stale_ids, prefix, batch_rows, layout,
                               buckets, hook, hash_partition_rows, lease, started, excluded, max_entries)
    except redis.RedisError as exc:
        raise RedisPublishError(
            f"Redis publish of run {run_id} failed ({type(exc).__name__}: {exc}). Readers still see complete "
            "records of the served run; check that Redis is reachable (CHURN_REDIS_URL / Airflow connection "
            "'churn_redis') and let the task retry: it rewrites every record and finishes the cleanup."
        ) from exc
    finally:
        try:
            lease.release()
        except redis.exceptions.LockError:
            pass  # not acquired, or expired and maybe taken by another publish: nothing of ours to release
        except redis.RedisError as exc:
            log.warning("could not release %s (it expires by itself): %s", lease_name, exc)


def _publish_locked(client, scores_path, run_id, model_version, stale_ids, prefix, batch_rows, layout, buckets,
                    hook, hash_partition_rows, lease, started: float, excluded: list[str],
                    max_entries: int = 0) -> RedisPublish:
    """The publish itself, run while holding the lease ``lease``."""
    import pyarrow as pa
    import redis

    keep = without_ids(pa.array(excluded, pa.string())) if excluded else None
    fencing = Fencing(client, lease.name, lease.local.token, max(1, int(lease.timeout * 1000)), prefix)
    home = fencing.home  # the marker's node (the client itself on one server)
    what = f"Redis publish of run {run_id}"

    rows = 0
    deleted = 0
    previous: str | None = None
    try:
        meta = served_meta(home, prefix)
        if layout != "json" and buckets == 0:
            buckets = _sized_buckets(home, scores_path, layout, meta, max_entries)
        # Cluster: the bucket keys' hash-tag groups; every group this publish may touch (its own, the served
        # batch's, an interrupted cleanup's) gets this publisher's token in its fence before any write.
        groups = cluster_groups(buckets) if fencing.cluster else 0
        if groups:
            fencing.claim(max([groups, int(meta.get("groups") or 0)] + [
                cluster_groups(int(tag.split(":")[1])) for tag in (meta.get("layout_tag"), meta.get("cleanup_layout"))
                if tag and tag.startswith("compact:")]), what)
        layout_tag = layout if layout == "json" else f"{layout}:{buckets}"
        sources = cleanup_sources(meta, run_id)
        previous = meta.get("run_id")
        # Run ids are ISO dates: a later run sorts later. Checked before any record is written, and again
        # atomically at the switch (a cleared task of yesterday must not overwrite today's batch).
        _refuse_older(previous, run_id)
        previous_tag = meta.get("layout_tag") or (previous and "json")  # markers older than layouts: json
        # A layout change whose cleanup was interrupted is still pending after the marker moved.
        old_tag = meta.get("cleanup_layout") or (previous_tag if previous_tag != layout_tag else None)
        if old_tag == layout_tag:
            old_tag = None
        hook("start")
        # Remember this attempt first, so a later run can clean its keys if it is abandoned.
        # (a read-modify-write, safe because only the lease holder changes the marker)
        writing = [r for r in (meta.get("writing") or "").split(",") if r and r != run_id] + [run_id]
        marks: dict[str, str] = {"writing": ",".join(writing)}
        slot = None
        scored_at = None
        if layout != "json":  # the bucket layouts keep the run's scoring time once, not in every value
            first = next(batches(scores_path, 1), None)
            scored_at = scored_at_text(first.column("scored_at")) if first is not None else None
        combos = served_combos(scores_path, model_version)
        if layout == "hash" and len({c[0] for c in combos}) > 1:
            raise RedisPublishError(f"run {run_id} serves several models (an experiment's arms) and the hash layout "
                                    "holds one per run: publish with CHURN_REDIS_LAYOUT=compact or json")
        slots: list[int] = []
        if layout == "compact":
            # The run's constant fields live once, in the marker; each value names them by a slot digit: one per
            # model and experiment arm served (one outside experiments).
            slots = _slots_for(meta, run_id, combos, scored_at or "")
            slot = {"|".join(c): digit for c, digit in zip(combos, slots)} if len(combos) > 1 else slots[0]
            for (version, experiment, arm), digit in zip(combos, slots):
                marks[f"slot_{digit}"] = "|".join([run_id, version, scored_at or "", ",".join(BAND_NAMES)]
                                                  + ([experiment, arm] if experiment else []))
            # the next run allocates after the last digit newly taken here (held ones are not "taken")
            held_before = set(_run_slots(meta, ("slots_writing", "slot_writing"))) | set(_run_slots(meta, ("slots", "slot")))
            fresh = [d for d in slots if d not in held_before]
            marks.update({"slot_writing": str(slots[0]), "slots_writing": ",".join(map(str, slots)),
                          "slot_last": str(fresh[-1]) if fresh else (meta.get("slot_last") or str(slots[-1]))})
        fencing.run([("HSET", meta_key(prefix), *[x for kv in marks.items() for x in kv])], what)
        if layout == "hash":
            fencing.run([("HSET", runs_key(prefix), run_id,
                          json.dumps({"model_version": model_version, "scored_at": scored_at}))], what)
        if layout == "json":
            def source() -> Iterator[Encoded]:
                for batch in batches(scores_path, batch_rows):
                    check_run(batch, run_id, scores_path)  # before this batch is encoded and sent
                    batch = keep(batch) if keep else batch
                    if batch.num_rows:
                        yield encode_json(batch, prefix)
        else:
            def source() -> Iterator[Encoded]:
                return hash_partitions(scores_path, run_id, prefix, buckets, hash_partition_rows, batch_rows,
                                       keep=keep, slot=slot, groups=groups)
        for encoded in encoded_batches(source):
            fencing.send(encoded, what)  # also renews the lease
            rows += encoded.rows
            hook("batch")
        hook("records_written")
        pending_cleanup = ",".join(sources)

        def switch(pipe) -> None:
            # WATCHed compare-and-set: readers see the old or the new marker, never an older run's, and
            # only while this publish still holds the lease.
            _refuse_older(as_text(pipe.hget(meta_key(prefix), "run_id")), run_id)
            if as_text(pipe.get(lease.name)) != as_text(lease.local.token):
                raise RedisPublishError(f"run {run_id}: the publish lease was lost before the switch; the "
                                        "marker was not moved, the task's retry starts over")
            pipe.multi()
            pipe.hset(meta_key(prefix), mapping={
                "run_id": run_id, "model_version": model_version, "customers": rows,
                "published_at": datetime.now(timezone.utc).isoformat(), "layout": layout,
                "buckets": buckets if layout != "json" else "", "layout_tag": layout_tag,
                "cleanup_from": pending_cleanup, "cleanup_layout": old_tag or "",
                "slot": slots[0] if slots else "", "slots": ",".join(map(str, slots)), "groups": groups or "",
            })
            pipe.hdel(meta_key(prefix), "writing", "slot_writing", "slots_writing")

        home.transaction(switch, meta_key(prefix), lease.name)
        hook("switched")
        if callable(stale_ids):
            ids = stale_ids(sources) if sources else ()
        else:
            ids = stale_ids or ()
        deleted += _delete_stale(fencing, ids, prefix, layout, buckets, batch_rows, groups)
        if old_tag:
            # The layout (or bucket count) changed: every key of the old layout is stale now.
            if old_tag.startswith("hash") and layout == "hash":
                log.warning("bucket count changed (%s -> %s): removing the old buckets' fields", old_tag,
                            layout_tag)
                deleted += _rehash_cleanup(client, fencing, prefix, buckets)
            else:
                log.info("layout changed (%s -> %s): removing the old layout's keys", old_tag, layout_tag)
                deleted += _scan_delete(client, fencing, _layout_pattern(old_tag, prefix))
        if layout == "hash":
            old_runs = [r for r in map(as_text, client.hkeys(runs_key(prefix))) if r != run_id]
            tidy = [("HDEL", runs_key(prefix), *old_runs)] if old_runs else []
        else:  # (a cluster never holds the hash layout's runs key, which lives in another slot)
            tidy = [] if fencing.cluster else [("UNLINK", runs_key(prefix))]
        fencing.run(tidy + [("HDEL", meta_key(prefix), "cleanup_from", "cleanup_layout")], what)
        hook("cleaned")
    except redis.RedisError as exc:
        raise RedisPublishError(
            f"Redis publish of run {run_id} failed after {rows} records ({type(exc).__name__}: {exc}). "
            f"Readers still see complete records and the marker says run {previous!r} unless the switch "
            "already happened; check that Redis is reachable (CHURN_REDIS_URL / Airflow connection "
            "'churn_redis') and let the task retry: it rewrites every record and finishes the cleanup."
        ) from exc
    elapsed = time.monotonic() - started
    log.info("published %s scores to Redis (%s layout, %s stale removed, %s newer event refreshes kept) in %.2f s "
             "(%.0f rows/s)", rows, layout, deleted, len(excluded), elapsed, rows / max(elapsed, 1e-9))
    return RedisPublish(rows, deleted, elapsed, layout, previous, buckets if layout != "json" else None)


def without_ids(excluded) -> Callable:
    """A batch filter dropping the rows whose ``customer_id`` is in ``excluded`` (an Arrow string array)."""
    import pyarrow.compute as pc

    def keep(batch):
        return batch.filter(pc.invert(pc.is_in(batch.column("customer_id"), value_set=excluded)))

    return keep


def _refuse_older(served: str | None, run_id: str) -> None:
    """Raise OlderRunRefused when ``served`` is a later run than ``run_id``."""
    if served and served > run_id:
        raise OlderRunRefused(
            f"Redis serves run {served}, newer than {run_id}: an older run never replaces a newer served batch "
            "(a cleared task of an earlier date). Nothing was written; re-run the newest date instead."
        )


def _rehash_cleanup(client, fencing: Fencing, prefix: str, buckets: int) -> int:
    """After a bucket-count change, drop every field that sits in a bucket it no longer hashes to (fenced)."""
    removed = 0
    for key in client.scan_iter(match=f"{prefix}:h:*", count=1000):
        bucket = int(as_text(key).rsplit(":", 1)[1])
        wrong = [f for f in client.hkeys(key) if zlib.crc32(f) % buckets != bucket]
        if wrong:
            removed += sum(fencing.run([("HDEL", key, *wrong)]))
    return removed
