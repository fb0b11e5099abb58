"""Hash partitions of a snapshot: which customers a scoring partition owns, and Parquet files that say so.

One stable hash everywhere: CRC-32 (IEEE, ``zlib.crc32``) of the customer id's UTF-8 bytes, modulo the
number of partitions (the Redis ``hash`` layout uses the same hash modulo its bucket count). The clean
scoring snapshot is written with every row group holding one partition's rows, and the footer saying
which (``churn.partitions``), so a mapped ``score_partition`` reads only its own row groups instead of
decoding the whole file and throwing most of it away.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

METADATA_KEY = b"churn.partitions"
HASH_NAME = "crc32(utf8 id) mod partitions"


def _crc32_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0xEDB88320), table >> 1).astype(np.uint32)
    return table


_CRC32_TABLE = _crc32_table()


class NullIdError(ValueError):
    """A customer id is null: it has no partition (validation quarantines such rows)."""


def crc32_array(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """``zlib.crc32`` of every string's UTF-8 bytes, vectorized over the array (uint32).

    The table-driven CRC-32 (IEEE) runs one byte position at a time across all strings, so the cost is
    (longest id) numpy steps per batch instead of one Python call per customer.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    values = pc.cast(values, pa.string())
    if values.null_count:
        raise NullIdError("customer ids must not be null (validation quarantines them)")
    n = len(values)
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int32, count=n + 1, offset=values.offset * 4)
    data = np.frombuffer(values.buffers()[2], dtype=np.uint8) if n and offsets[-1] > offsets[0] \
        else np.zeros(0, dtype=np.uint8)
    starts, lengths = offsets[:-1].astype(np.int64), np.diff(offsets).astype(np.int64)
    crc = np.full(n, 0xFFFFFFFF, dtype=np.uint32)
    for position in range(int(lengths.max()) if n else 0):
        live = lengths > position
        rows = np.flatnonzero(live) if not live.all() else slice(None)
        byte = data[starts[rows] + position].astype(np.uint32)
        crc[rows] = _CRC32_TABLE[(crc[rows] ^ byte) & 0xFF] ^ (crc[rows] >> 8)
    return crc ^ np.uint32(0xFFFFFFFF)


def partition_of(ids: pa.Array | pa.ChunkedArray, partitions: int) -> np.ndarray:
    """Partition number (0..partitions-1) of every id."""
    if partitions < 1:
        raise ValueError(f"partitions={partitions} must be at least 1")
    if partitions == 1:
        return np.zeros(len(ids), dtype=np.uint32)
    return crc32_array(ids) % np.uint32(partitions)


@dataclass
class PartitionedWriter:
    """Writes a Parquet file whose row groups each hold one partition's rows, recording the map in the footer.

    ``write(table)`` splits a chunk by partition and writes one row group per non-empty share: memory is
    the chunk, whatever the number of partitions. ``close()`` adds the footer entry and closes the file.
    """

    writer: pq.ParquetWriter
    id_column: str
    partitions: int

    def __post_init__(self) -> None:
        self.row_groups: list[int] = []

    @property
    def schema(self) -> pa.Schema:
        """The file's Arrow schema (every chunk is written with it)."""
        return self.writer.schema

    def write(self, table: pa.Table) -> None:
        """Write one chunk: a row group per partition present in it (one group when unpartitioned)."""
        if self.partitions == 1 or table.num_rows == 0:
            if table.num_rows:
                self.writer.write_table(table, row_group_size=max(table.num_rows, 1))
                self.row_groups.append(0)
            return
        owner = partition_of(table.column(self.id_column), self.partitions)
        order = np.argsort(owner, kind="stable")
        counts = np.bincount(owner, minlength=self.partitions)
        grouped = table.take(pa.array(order))
        start = 0
        for part, count in enumerate(counts):
            if count:
                self.writer.write_table(grouped.slice(start, int(count)), row_group_size=int(count))
                self.row_groups.append(part)
                start += int(count)

    def close(self) -> None:
        """Record which partition each row group holds, then close the file."""
        self.writer.add_key_value_metadata({METADATA_KEY: json.dumps(
            {"partitions": self.partitions, "hash": HASH_NAME, "row_groups": self.row_groups})})
        self.writer.close()


def row_groups_of(parquet: pq.ParquetFile, partition: int, partitions: int) -> list[int] | None:
    """Row groups holding ``partition`` of ``partitions``, or None when the file is not partitioned that way.

    None also when the footer's map does not match the file (a row group count that differs): the caller
    then reads every row group and filters by hash, which is slower but never wrong.
    """
    meta = parquet.metadata.metadata or {}
    raw = meta.get(METADATA_KEY)
    if raw is None:
        return None
    try:
        described = json.loads(raw)
    except ValueError:
        return None
    groups = described.get("row_groups")
    if (described.get("partitions") != partitions or described.get("hash") != HASH_NAME
            or not isinstance(groups, list) or len(groups) != parquet.metadata.num_row_groups):
        return None
    return [i for i, p in enumerate(groups) if p == partition]
