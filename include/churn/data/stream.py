"""Bounded-memory access to Parquet snapshots: chunks with global row numbers, deterministic id samples.

Every stage after ingest reads snapshots through these helpers, so its peak memory depends on the
chunk size and the sample size, not on the population. Samples are keyed by a hash of the customer
id (and a seed): the same customers are picked on every run and in every process, and a sampled
snapshot keeps each label's share in expectation.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

DEFAULT_CHUNK_ROWS = 250_000


def parquet_rows(path: str | Path) -> int:
    """Row count from the Parquet footer (no data read)."""
    return pq.ParquetFile(path).metadata.num_rows


def iter_frames(path: str | Path, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                columns: list[str] | None = None) -> Iterator[pd.DataFrame]:
    """The snapshot as pandas chunks whose index is the global row number (0-based, file order)."""
    offset = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows, columns=columns):
        frame = batch.to_pandas()
        frame.index = pd.RangeIndex(offset, offset + len(frame))
        offset += len(frame)
        yield frame


def id_hash(ids: pd.Series, seed: int = 0) -> np.ndarray:
    """A 64-bit hash of each id (as text), stable across processes and runs for a given seed."""
    key = f"churn{seed:011d}"[:16].encode()
    return pd.util.hash_array(ids.astype("str").to_numpy(dtype=object), hash_key=key.decode())


def keep_mask(ids: pd.Series, fraction: float, seed: int = 0) -> np.ndarray:
    """Boolean mask keeping about ``fraction`` of the ids, the same ids for the same seed."""
    if fraction >= 1.0:
        return np.ones(len(ids), dtype=bool)
    limit = np.uint64(min(int(fraction * 2.0**64), 2**64 - 1))
    return id_hash(ids, seed) < limit


def sample_frame(path: str | Path, max_rows: int, id_column: str, seed: int = 0,
                 columns: list[str] | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> tuple[pd.DataFrame, int]:
    """About ``max_rows`` rows of the snapshot chosen by id hash (all rows when it is smaller), and the total.

    Memory: one chunk plus the sample, whatever the snapshot's size.
    """
    total = parquet_rows(path)
    fraction = 1.0 if total <= max_rows else max_rows / total
    kept = [frame[keep_mask(frame[id_column], fraction, seed)]
            for frame in iter_frames(path, chunk_rows, columns)]
    if not kept:
        table = pq.ParquetFile(path).schema_arrow
        names = columns or table.names
        return pa.schema([table.field(n) for n in names]).empty_table().to_pandas(), total
    sample = pd.concat(kept) if len(kept) > 1 else kept[0]
    return sample, total


def write_sample(path: str | Path, fraction: float, id_column: str, seed: int = 0,
                 chunk_rows: int = DEFAULT_CHUNK_ROWS) -> int:
    """Replace ``path`` by about ``fraction`` of its rows (chosen by id hash), atomically; returns rows kept."""
    path = Path(path)
    tmp = path.with_name(path.name + ".sampling")
    parquet = pq.ParquetFile(path)
    kept = 0
    try:
        with pq.ParquetWriter(tmp, parquet.schema_arrow) as writer:
            for batch in parquet.iter_batches(batch_size=chunk_rows):
                ids = batch.column(batch.schema.get_field_index(id_column)).to_pandas()
                mask = keep_mask(ids, fraction, seed)
                kept += int(mask.sum())
                writer.write_batch(batch.filter(pa.array(mask)))
        os.replace(tmp, path)  # readers see the full or the sampled file, never half of one
    finally:
        tmp.unlink(missing_ok=True)
    return kept


def duplicated_ids(path: str | Path, id_column: str, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> set[str]:
    """Ids that occur more than once anywhere in the snapshot.

    One pass keeps 8 bytes per row (a 64-bit hash of each id); a second pass confirms the
    candidates by their text, so a hash collision never marks a unique id as duplicated.
    """
    hashes = [id_hash(frame[id_column].dropna()) for frame in iter_frames(path, chunk_rows, [id_column])]
    if not hashes:
        return set()
    everything = np.sort(np.concatenate(hashes))
    repeated = everything[1:][everything[1:] == everything[:-1]]
    if not len(repeated):
        return set()
    candidates = np.unique(repeated)
    counts: dict[str, int] = {}
    for frame in iter_frames(path, chunk_rows, [id_column]):
        ids = frame[id_column].dropna()
        hit = ids[np.isin(id_hash(ids), candidates)].astype("str")
        for value in hit:
            counts[value] = counts.get(value, 0) + 1
    return {value for value, n in counts.items() if n > 1}
