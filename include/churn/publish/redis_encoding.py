"""Encoding scores for Redis: records as JSON or compact values, pre-built RESP commands (MSET / multi-field
HSET per bucket range), CRC-32 buckets, a helper thread that encodes the next batch while one is sent, and
the lease-fenced send every write of a publish goes through."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import timezone
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from churn.data.partitions import NullIdError
from churn.data.partitions import crc32_array as _crc32_array
from churn.publish.redis_keys import (
    BAND_NAMES, LeaseLost, RedisPublishError, as_text, fence_key, is_cluster, node_client,
)


def scored_at_text(column: pa.ChunkedArray | pa.Array) -> str:
    value = column[0].as_py()
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _needs_escaping(ids: pa.Array) -> bool:
    return pc.any(pc.match_substring_regex(ids, r'["\\\x00-\x1f]')).as_py() or False


def encode_json_values(batch: pa.RecordBatch) -> pa.Array:
    """The JSON record of every row of a score batch, built column-wise (no Python loop per row).

    ``experiment`` and ``arm`` are added for the customers an experiment's arm served (names are validated
    identifiers; model versions come from the registry)."""
    ids = batch.column("customer_id")
    if _needs_escaping(ids):
        raise RedisPublishError("customer ids with quotes, backslashes or control characters cannot be keys; "
                                "fix them at the source (they were not quarantined by validation)")
    run = batch.column("run_id")[0].as_py()
    proba = pc.cast(pc.round(pc.cast(batch.column("churn_probability"), pa.float64()), 6), pa.string())
    tail = json.dumps({"run_id": run, "scored_at": scored_at_text(batch.column("scored_at"))},
                      separators=(",", ":"))[1:-1]
    names = batch.schema.names
    if "experiment" in names and batch.column("experiment").null_count < batch.num_rows:
        arms = pc.fill_null(pc.binary_join_element_wise(',"experiment":"', batch.column("experiment"), '","arm":"',
                                                        batch.column("arm"), '"', ""), "")
    else:
        arms = ""
    return pc.binary_join_element_wise(
        '{"customer_id":"', ids, '","churn_probability":', proba, ',"risk_band":"', batch.column("risk_band"),
        '","risk_decile":', pc.cast(batch.column("risk_decile"), pa.string()), ',"model_version":"',
        batch.column("model_version"), '",', tail, arms, "}", "",
    )


def combo_keys(batch: pa.RecordBatch) -> pa.Array | str:
    """``model_version|experiment|arm`` of every row (empty experiment and arm outside experiments)."""
    if "experiment" not in batch.schema.names:
        return pc.binary_join_element_wise(batch.column("model_version"), "", "", "|")
    return pc.binary_join_element_wise(batch.column("model_version"), pc.fill_null(batch.column("experiment"), ""),
                                       pc.fill_null(batch.column("arm"), ""), "|")


def _one_version_no_experiment(parquet: pq.ParquetFile, model_version: str) -> bool:
    """True when the file's statistics prove every row is ``model_version`` outside experiments (no scan)."""
    meta, names = parquet.metadata, parquet.schema_arrow.names
    version, experiment = names.index("model_version"), names.index("experiment")
    for group in range(meta.num_row_groups):
        rows = meta.row_group(group).num_rows
        v, e = meta.row_group(group).column(version).statistics, meta.row_group(group).column(experiment).statistics
        if (v is None or not v.has_min_max or v.min != model_version or v.max != model_version or e is None
                or not e.has_null_count or e.null_count != rows):
            return False
    return True


def served_combos(scores_path: str | Path, model_version: str, read_rows: int = 1_000_000) -> list[tuple[str, str, str]]:
    """Every ``(model_version, experiment, arm)`` the score file serves: ``model_version`` outside experiments
    first (when present), then sorted (stable across retries)."""
    parquet = pq.ParquetFile(scores_path)
    if "experiment" not in parquet.schema_arrow.names or _one_version_no_experiment(parquet, model_version):
        return [(model_version, "", "")]
    found: set[str] = set()
    for batch in parquet.iter_batches(batch_size=read_rows, columns=["model_version", "experiment", "arm"]):
        found.update(pc.unique(combo_keys(batch)).to_pylist())
    first = f"{model_version}||"
    ordered = ([first] if first in found or not found else []) + sorted(found - {first})
    return [tuple(k.split("|")) for k in ordered]


def encode_compact_values(batch: pa.RecordBatch) -> pa.Array:
    """``probability|decile|band|run_id`` of every row (the ``hash`` layout's value)."""
    proba = pc.cast(pc.round(pc.cast(batch.column("churn_probability"), pa.float64()), 6), pa.string())
    run = batch.column("run_id")[0].as_py()
    return pc.binary_join_element_wise(
        proba, pc.cast(batch.column("risk_decile"), pa.string()), batch.column("risk_band"), run, "|"
    )


def encode_compact_ints(batch: pa.RecordBatch, slot: int | dict[str, int]) -> pa.Array:
    """The ``compact`` layout's value of every row: ``p*1000 + (decile-1)*100 + band*10 + slot`` as integer text.

    ``p`` is the probability in millionths; ``slot`` is the run's slot digit, or (experiments) the slot of each
    ``model_version|experiment|arm`` (:func:`combo_keys`). Redis stores such a value as a 4-5 byte integer inside a bucket
    (the ``hash`` layout's ``probability|decile|band|run_id`` text takes ~25 bytes).
    """
    if batch.num_rows == 0:
        return pa.array([], pa.string())
    micro = pc.cast(pc.round(pc.multiply(pc.cast(batch.column("churn_probability"), pa.float64()), 1_000_000.0)),
                    pa.int64())
    band = pc.index_in(batch.column("risk_band"), value_set=pa.array(BAND_NAMES))
    decile = pc.cast(batch.column("risk_decile"), pa.int64())
    if (pc.any(pc.is_null(band)).as_py() or pc.min(decile).as_py() < 1 or pc.max(decile).as_py() > 10
            or pc.min(micro).as_py() < 0 or pc.max(micro).as_py() > 1_000_000):
        raise RedisPublishError(f"a score row is outside the compact layout's range (bands {BAND_NAMES}, deciles "
                                "1-10, probabilities 0-1); publish with CHURN_REDIS_LAYOUT=json and report it")
    if isinstance(slot, dict):
        keys = list(slot)
        index = pc.index_in(combo_keys(batch), value_set=pa.array(keys, pa.string()))
        if pc.any(pc.is_null(index)).as_py():
            raise RedisPublishError("a score row's model, experiment or arm has no slot in this publish: the score "
                                    "file changed while it was published; re-run the score task")
        slot = pa.array([slot[k] for k in keys], pa.int64()).take(index)
    value = pc.add(pc.add(pc.multiply(micro, 1000), pc.multiply(pc.subtract(decile, 1), 100)),
                   pc.add(pc.multiply(pc.cast(band, pa.int64()), 10), slot))
    return pc.cast(value, pa.string())


def encode_batch(columns: dict, prefix: str) -> dict[str, str]:
    """JSON value per key for one batch of score columns given as Python lists (small batches, tests)."""
    batch = pa.RecordBatch.from_pydict(columns)
    keys = pc.binary_join_element_wise(f"{prefix}:score:", batch.column("customer_id"), "")
    return dict(zip(keys.to_pylist(), encode_json_values(batch).to_pylist()))


def _bulk_strings(*arrays: pa.Array, lead: pa.Array | None = None) -> tuple[int, pa.Buffer | bytes]:
    """RESP bulk strings of the arrays interleaved row by row (``$len\\r\\nvalue\\r\\n`` ...), as one buffer.

    ``lead`` is raw text put in front of each row (a command header, or empty).
    """
    parts: list = [lead] if lead is not None else []
    for array in arrays:
        array = pc.cast(array, pa.string())
        parts += ["$", pc.cast(pc.binary_length(array), pa.string()), "\r\n", array, "\r\n"]
    joined = pc.binary_join_element_wise(*parts, "")
    if isinstance(joined, pa.ChunkedArray):
        joined = joined.combine_chunks()
    if len(joined) == 0:
        return 0, b""
    offsets = np.frombuffer(joined.buffers()[1], dtype=np.int32, count=len(joined) + 1, offset=joined.offset * 4)
    data = joined.buffers()[2]
    return len(joined) * len(arrays), data[int(offsets[0]):int(offsets[-1])]


def _bulk(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return b"$%d\r\n%s\r\n" % (len(raw), raw)


@dataclass
class Encoded:
    """One batch as a ready-to-send RESP buffer: ``replies`` is how many replies it produces."""

    rows: int
    data: list
    replies: int
    group: int | None = None
    """The cluster hash-tag group every key of the batch belongs to (None: not a cluster publish)."""


def encode_json(batch: pa.RecordBatch, prefix: str) -> Encoded:
    """One ``MSET key value ...`` of the batch (one reply)."""
    keys = pc.binary_join_element_wise(f"{prefix}:score:", batch.column("customer_id"), "")
    count, body = _bulk_strings(keys, encode_json_values(batch))
    return Encoded(batch.num_rows, [b"*%d\r\n" % (count + 1) + _bulk("MSET"), body], 1)


def crc32_array(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """``zlib.crc32`` of every id's UTF-8 bytes (:func:`churn.data.partitions.crc32_array`); null ids refused."""
    try:
        return _crc32_array(values)
    except NullIdError as exc:
        raise RedisPublishError(str(exc)) from exc


def _grouped_hset_chunks(table: pa.Table, key_head: str, chunk_rows: int, buckets: int = 0,
                         groups: int = 0) -> Iterator[Encoded]:
    """A partition's grouped ``HSET`` commands in chunks of whole buckets of about ``chunk_rows`` fields.

    Each chunk is sent as one lease-fenced transaction, which the server runs without interleaving other
    clients: bounded chunks keep readers' lookups from waiting for a whole partition. With ``groups``
    (a Redis Cluster) a chunk never spans two hash-tag groups, so that its transaction stays in one slot.
    """
    table = table.take(pc.sort_indices(table, [("bucket", "ascending")]))  # stable: file order within a bucket
    bucket = table.column("bucket").to_numpy()
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    # cut at the first bucket start at or after every chunk_rows-th row
    after = np.searchsorted(starts, np.arange(max(chunk_rows, 1), table.num_rows, max(chunk_rows, 1)))
    cuts = starts[after[after < len(starts)]]
    group = None
    if groups:
        group = bucket.astype(np.int64) * groups // buckets
        cuts = np.r_[cuts, np.flatnonzero(group[1:] != group[:-1]) + 1]
    cuts = np.unique(cuts)
    bounds = [0, *(int(c) for c in cuts if c > 0), table.num_rows]
    for start, end in zip(bounds, bounds[1:]):
        encoded = _encode_grouped_hset(table.slice(start, end - start), key_head, buckets, groups)
        if group is not None:
            encoded.group = int(group[start])
        yield encoded


def _encode_grouped_hset(table: pa.Table, key_head: str, buckets: int = 0, groups: int = 0) -> Encoded:
    """One multi-field ``HSET bucket id1 v1 id2 v2 ...`` per bucket of a bucket-sorted table (one reply per bucket).

    Redis spends ~0.6 µs per field this way against ~2 µs for one ``HSET`` per field (measured), and
    each bucket is still written atomically: a reader sees a field's old or new value, never nothing.
    """
    rows = table.num_rows
    bucket = table.column("bucket").to_numpy()
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    sizes = np.diff(np.r_[starts, rows])
    names = pc.cast(pa.array(bucket[starts]), pa.string())
    if groups:  # cluster: the bucket's hash tag, {group}, before its number
        tags = pc.cast(pa.array(bucket[starts].astype(np.int64) * groups // buckets), pa.string())
        names = pc.binary_join_element_wise("{", tags, "}:", names, "")
    keys = pc.binary_join_element_wise(key_head, names, "")
    headers = pc.binary_join_element_wise(
        "*", pc.cast(pa.array(2 + 2 * sizes), pa.string()), "\r\n$4\r\nHSET\r\n$",
        pc.cast(pc.binary_length(keys), pa.string()), "\r\n", keys, "\r\n", "")
    # the command header goes in front of each bucket's first field; other rows get an empty lead
    lead_index = np.full(rows, len(starts), dtype=np.int64)
    lead_index[starts] = np.arange(len(starts))
    lead = pa.concat_arrays([headers, pa.array([""], pa.string())]).take(pa.array(lead_index))
    _, body = _bulk_strings(table.column("customer_id").combine_chunks(), table.column("value").combine_chunks(),
                            lead=lead)
    return Encoded(rows, [body], len(starts))


_SPILL_SCHEMA = pa.schema([("bucket", pa.int32()), ("customer_id", pa.string()), ("value", pa.string())])


def hash_partitions(scores_path: str | Path, run_id: str, prefix: str, buckets: int,
                     partition_rows: int, read_rows: int, keep: Callable | None = None,
                     slot: int | dict[str, int] | None = None, groups: int = 0) -> Iterator[Encoded]:
    """The ``hash`` (``slot=None``) or ``compact`` layout's writes, grouped per bucket, one bucket range at a time.

    Pass 1 checks every row's run id (so a wrong file is refused before anything is written), computes
    buckets and values, and spills them to one Arrow stream file per bucket range next to the score
    file. Pass 2 reads one range at a time (about ``partition_rows`` rows in memory whatever the
    population) and yields its grouped ``HSET`` commands in chunks of about ``read_rows`` fields. The spill
    folder is removed afterwards and on the next attempt. ``groups`` > 0 (a Redis Cluster): keys carry their
    group's hash tag and each yielded batch stays within one group (``Encoded.group``).
    """
    import math
    import shutil

    path = Path(scores_path)
    key_head = f"{prefix}:h:" if slot is None else f"{prefix}:c:{buckets}:"
    total = pq.ParquetFile(path).metadata.num_rows
    parts = max(1, min(buckets, math.ceil(total / max(partition_rows, 1))))
    spill = path.with_name(f".{path.name}.redis-spill")
    shutil.rmtree(spill, ignore_errors=True)  # left by a killed attempt
    spill.mkdir()
    try:
        files = [spill / f"{i:05d}.arrows" for i in range(parts)]
        writers = [pa.ipc.new_stream(str(f), _SPILL_SCHEMA) for f in files]
        try:
            # wide enough reads that a batch's slice per range is not tiny, still bounded by partition_rows
            for batch in batches(path, max(read_rows, min(partition_rows, parts * 2_000))):
                check_run(batch, run_id, path)
                if keep is not None:  # customers whose newer event refresh stays in place
                    batch = keep(batch)
                ids = batch.column("customer_id")
                bucket = (crc32_array(ids) % np.uint32(buckets)).astype(np.int32)
                part = bucket.astype(np.int64) * parts // buckets
                order = np.argsort(part, kind="stable")
                values = encode_compact_values(batch) if slot is None else encode_compact_ints(batch, slot)
                spilled = pa.record_batch([pa.array(bucket), pc.cast(ids, pa.string()), values],
                                          schema=_SPILL_SCHEMA).take(pa.array(order))
                counts = np.bincount(part, minlength=parts)
                offsets = np.r_[0, np.cumsum(counts)]
                for i in np.flatnonzero(counts):
                    writers[i].write_batch(spilled.slice(int(offsets[i]), int(counts[i])))
        finally:
            for writer in writers:
                writer.close()
        for file in files:
            with pa.ipc.open_stream(str(file)) as reader:
                table = reader.read_all()
            file.unlink()
            if table.num_rows:
                yield from _grouped_hset_chunks(table, key_head, read_rows, buckets, groups)
    finally:
        shutil.rmtree(spill, ignore_errors=True)


def encoded_batches(source: Callable[[], Iterator[Encoded]], depth: int = 2) -> Iterator[Encoded]:
    """Run ``source`` (read + encode) in a helper thread, ``depth`` items ahead of the sender.

    Arrow's kernels release the GIL, so batch k+1 is encoded while Redis ingests batch k: the publish
    costs about max(encode, server) instead of their sum. Memory stays bounded (``depth`` buffers).
    """
    import contextlib
    import queue
    import threading

    done = object()
    buffers: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def hand_over(item: object) -> bool:
        while not stop.is_set():
            try:
                buffers.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            with contextlib.closing(source()) as items:  # closing runs the source's cleanup, also on stop
                for item in items:
                    if not hand_over(item):
                        return
            hand_over(done)
        except BaseException as exc:  # handed to the consumer, which raises it in the publishing thread
            hand_over(exc)

    worker = threading.Thread(target=produce, name="redis-encode", daemon=True)
    worker.start()
    try:
        while True:
            item = buffers.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)


@dataclass(frozen=True)
class Fence:
    """The publish lease a write is conditional on: its key, this publisher's token, the TTL a write renews.

    ``ttl_ms`` 0: a cluster group's fence (no TTL; the lease itself is renewed on the marker's node).
    """

    key: str
    token: bytes | str
    ttl_ms: int


def command(*args) -> bytes:
    """One command as RESP (an array of bulk strings)."""
    return b"*%d\r\n" % len(args) + b"".join(_bulk(a if isinstance(a, (str, bytes)) else str(a)) for a in args)


_MULTI, _EXEC, _UNWATCH = command("MULTI"), command("EXEC"), command("UNWATCH")


def _lease_lost(fence: Fence, what: str, why: str) -> LeaseLost:
    lease = f"its {fence.ttl_ms / 1000:g} s lease" if fence.ttl_ms > 0 else "its lease"  # group fences: no TTL
    return LeaseLost(
        f"{what}: the publish lease {fence.key} is no longer this publisher's ({why}: this publish stalled past "
        f"{lease} and another may have taken over); the server applied nothing of "
        "this write. The task's retry starts over; if workers pause that long routinely, raise "
        "CHURN_PUBLISH_LEASE_SECONDS.")


def send_fenced(client, fence: Fence, encoded: Encoded, what: str = "Redis publish") -> list:
    """Apply one encoded batch (and renew the lease) only while ``fence`` is held, atomically; return its replies.

    WATCH the lease key, check the token, then send MULTI, the batch, PEXPIRE of the lease, EXEC: the
    server runs the batch only if the lease key was neither changed nor expired since the WATCH, so a
    publisher that stalled past its lease (GC pause, SIGSTOP) and resumes after another publish took over
    writes nothing (:class:`LeaseLost`). Two round trips per batch, as the separate renewal took before;
    the server does no extra work per record (a Lua script taking the batch as arguments and checking the
    token measured about twice the server time of the plain MSET, and needs scripting in the ACL).
    """
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_packed_command([command("WATCH", fence.key), command("GET", fence.key)])
        conn.read_response()
        holder = conn.read_response()
        if holder is None or as_text(holder) != as_text(fence.token):
            conn.send_packed_command([_UNWATCH])
            conn.read_response()
            raise _lease_lost(fence, what, "expired" if holder is None else "held by another token")
        renew = [command("PEXPIRE", fence.key, fence.ttl_ms)] if fence.ttl_ms > 0 else []
        conn.send_packed_command([_MULTI, *encoded.data, *renew, _EXEC])
        conn.read_response()  # +OK of MULTI
        # +QUEUED each (an error reply raises; the server then aborts EXEC)
        for _ in range(encoded.replies + len(renew)):
            conn.read_response()
        replies = conn.read_response()
    except LeaseLost:
        raise  # the connection is in a clean state: reused
    except BaseException:
        conn.disconnect()  # unknown protocol state: never reuse this socket
        raise
    finally:
        pool.release(conn)
    if replies is None:  # EXEC refused: the lease key changed (taken over) or lapsed after the WATCH
        raise _lease_lost(fence, what, "it changed hands or lapsed while the write was sent")
    failed = next((r for r in replies if isinstance(r, Exception)), None)
    if failed is not None:
        raise failed
    return replies[:-1] if renew else replies


def run_fenced(client, fence: Fence, commands: list[tuple], what: str = "Redis publish") -> list:
    """Run ``commands`` (tuples of arguments) as one transaction applied only while ``fence`` is held."""
    if not commands:
        return []
    return send_fenced(client, fence, Encoded(len(commands), [command(*c) for c in commands], len(commands)), what)


class Fencing:
    """Every write of one lease holder, each applied by the server only while its fence is this holder's.

    On one server the fence of every write is the lease key itself (each write renews it). On a Redis Cluster a
    transaction must stay in one slot, so each hash-tag group of buckets has its own fence key
    (:func:`fence_key`, no TTL) in the group's slot: right after taking the lease the holder writes its token
    into the fences of every group it may touch (:meth:`claim`), and each bucket write is WATCH fence / check
    token / MULTI ... EXEC on the node serving the group. A holder that stalled past its lease and resumes
    after another took over finds the other's token in every fence and writes nothing (:class:`LeaseLost`).
    The marker and the lease share one slot (their keys carry the marker's tag): marker writes are fenced by
    the lease, which is renewed there (:meth:`renew`) as the batches go.
    """

    def __init__(self, client, lease_key: str, token, ttl_ms: int, prefix: str) -> None:
        self.client = client
        self.cluster = is_cluster(client)
        self.home = node_client(client, lease_key)  # the node holding the lease and the marker
        self.lease = Fence(lease_key, token, ttl_ms)
        self.prefix = prefix
        self.claimed = 0
        self._renewed = time.monotonic()

    def claim(self, groups: int, what: str = "Redis publish") -> None:
        """Cluster: put this holder's token in the fences of groups ``0..groups-1`` (once the lease is checked)."""
        if not self.cluster or groups <= self.claimed:
            return
        self.renew(what, force=True)  # raises LeaseLost if the lease is no longer ours: then claim nothing
        pipe = self.client.pipeline(transaction=False)
        for group in range(groups):
            pipe.set(fence_key(self.prefix, group), self.lease.token)
        pipe.execute()
        # Still ours after the claim? A holder that stalled between its check and these SETs (and so overwrote a
        # newer holder's fences) stops here, before any group write; the newer holder's next write then fails
        # and its task's retry claims again.
        self.renew(what, force=True)
        self.claimed = groups

    def renew(self, what: str = "Redis publish", force: bool = False) -> None:
        """Cluster: renew the lease (and check it is still ours) once a third of its TTL has passed."""
        if self.cluster and (force or time.monotonic() - self._renewed > self.lease.ttl_ms / 3000):
            send_fenced(self.home, self.lease, Encoded(0, [], 0), what)
            self._renewed = time.monotonic()

    def send(self, encoded: Encoded, what: str = "Redis publish") -> list:
        """Apply one encoded batch under its fence: its group's on a cluster, else the lease; return its replies."""
        if encoded.group is None or not self.cluster:
            return send_fenced(self.home, self.lease, encoded, what)
        if encoded.group >= self.claimed:
            raise RedisPublishError(f"{what}: group {encoded.group} was not claimed (only {self.claimed}); this is "
                                    "a bug of the publish, report it")
        key = fence_key(self.prefix, encoded.group)
        replies = send_fenced(node_client(self.client, key), Fence(key, self.lease.token, 0), encoded, what)
        self.renew(what)
        return replies

    def run(self, commands: list[tuple], what: str = "Redis publish", group: int | None = None) -> list:
        """Run ``commands`` as one fenced transaction (in ``group``'s slot on a cluster, else the marker's)."""
        if not commands:
            return []
        return self.send(Encoded(len(commands), [command(*c) for c in commands], len(commands), group), what)


def check_run(batch: pa.RecordBatch, run_id: str, scores_path: str | Path) -> None:
    runs = pc.unique(batch.column("run_id")).to_pylist()
    if runs != [run_id]:
        raise RedisPublishError(f"{scores_path} holds scores of run(s) {runs}, not {run_id!r}: publish the "
                                "score file of this run (nothing was switched)")


def batches(scores_path: str | Path, batch_rows: int) -> Iterator[pa.RecordBatch]:
    yield from pq.ParquetFile(scores_path).iter_batches(batch_size=batch_rows)

