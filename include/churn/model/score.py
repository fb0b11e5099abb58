"""Chunked batch scoring with peak memory independent of the population size.

Deciles need the whole population's ranks, which is what usually forces a
scorer to keep every probability in memory. Here they come from exact cut
points found with two bounded histograms instead (the "two-pass" choice,
docs/concepts/nightly-dag.md):

1. **score pass** -- read the feature snapshot chunk by chunk, run the model,
   append ``(customer_id, probability)`` to a temporary Parquet file and count
   the probability's float32 bit pattern in a coarse histogram (65,024 bins);
2. **refine pass** -- re-read only the probability column of the temporary file
   and, for the (at most 9) coarse bins that hold a decile boundary, count the
   low bits (16,384 bins each), which pins every boundary to an exact float32;
3. **write pass** -- re-read the temporary file chunk by chunk, derive band and
   decile, and stream the final Parquet file.

Memory is a few chunks plus ~1 MB of histograms, whatever the population. A
positive float32's bit pattern orders like its value, so the histograms are
exact: customer of rank r (1 = lowest) gets decile ceil(10 r / N), except that
customers with *identical* probabilities straddling a boundary share the lower
decile (a rank-``first`` tie-break would split equal scores arbitrarily).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from churn.data.partitions import partition_of, row_groups_of
from churn.model.runtime import Scorer, ScoringError, SklearnScorer  # noqa: F401 - ScoringError: this module's API

if TYPE_CHECKING:  # scikit-learn stays out of processes that only publish
    from churn.model.features import ModelSignature

log = logging.getLogger(__name__)

BAND_NAMES = ("low", "medium", "high", "very_high", "critical")
PROGRESS_SECONDS = 10.0  # a progress line at least this often on long runs
_COARSE_SHIFT = 14  # float32 bits >> 14: 65,024 bins cover [0, 1]
_FINE_BINS = 1 << _COARSE_SHIFT
_COARSE_BINS = (0x3F800000 >> _COARSE_SHIFT) + 1  # bit pattern of 1.0f, shifted, inclusive

SCORE_SCHEMA = pa.schema(
    [
        ("customer_id", pa.string()),
        ("churn_probability", pa.float32()),
        ("risk_band", pa.string()),
        ("risk_decile", pa.int16()),
        ("model_version", pa.string()),
        ("run_id", pa.string()),
        ("scored_at", pa.timestamp("us", tz="UTC")),
        ("experiment", pa.string()),  # the experiment and arm whose model served the score (null: none)
        ("arm", pa.string()),
        ("features_hash", pa.int64()),  # of the features scored (features_hash()): the prediction log's
    ]
)
_RAW_SCHEMA = pa.schema([("customer_id", pa.string()), ("churn_probability", pa.float32()), ("model", pa.int16()),
                         ("experiment", pa.string()), ("arm", pa.string()), ("features_hash", pa.int64())])


def features_hash(frame: pd.DataFrame, signature: ModelSignature) -> np.ndarray:
    """A 64-bit hash of each row's scored features (the enforced frame's feature columns in signature order:
    ``pandas.util.hash_pandas_object(..., index=False)``, as int64): the prediction log says whether a customer's
    features changed between two scores without keeping them."""
    return pd.util.hash_pandas_object(frame[signature.feature_columns], index=False).to_numpy().view(np.int64)


@dataclass
class ScoreResult:
    """Where the scores are, and how long inference vs the rest took."""

    path: str
    rows: int
    inference_seconds: float
    other_seconds: float
    decile_cuts: tuple[float, ...] = ()

    @property
    def rows_per_second(self) -> float:
        """Inference throughput."""
        return self.rows / self.inference_seconds if self.inference_seconds > 0 else float("inf")


def risk_bands(proba: np.ndarray, cuts: tuple[float, ...]) -> np.ndarray:
    """Band name per probability: ``low`` below the first cut, then ``medium``, ``high``, ..."""
    names = np.array(BAND_NAMES[: len(cuts) + 1], dtype=object)
    return names[np.searchsorted(np.asarray(cuts), proba, side="right")]


def _bits(proba: np.ndarray) -> np.ndarray:
    """float32 probabilities in [0, 1] as their (order-preserving) uint32 bit patterns.

    Adding +0.0 turns a ``-0.0`` (which passes the range check, as -0.0 == 0.0) into +0.0: its sign bit
    would otherwise make it the largest pattern of all and break the histograms.
    """
    return (np.asarray(proba, dtype=np.float32) + np.float32(0.0)).view(np.uint32)


class DecileSketch:
    """Exact decile cut points from two fixed-size histograms (memory does not grow with rows)."""

    def __init__(self) -> None:
        self.coarse = np.zeros(_COARSE_BINS, dtype=np.int64)
        self.rows = 0
        self._targets: list[tuple[int, int]] = []  # (rank, coarse bin) per boundary; bin -1 = below all rows
        self._fine: dict[int, np.ndarray] = {}

    def add(self, proba: np.ndarray) -> None:
        """Pass 1: count a chunk of probabilities."""
        self.coarse += np.bincount(_bits(proba) >> _COARSE_SHIFT, minlength=_COARSE_BINS)
        self.rows += len(proba)

    def boundary_bins(self) -> set[int]:
        """Coarse bins holding a decile boundary (the last row of deciles 1..9)."""
        cumulative = np.cumsum(self.coarse)
        self._targets = []
        for k in range(1, 10):
            rank = (k * self.rows) // 10  # 1-based rank of decile k's last row (0: decile k is empty)
            self._targets.append((rank, int(np.searchsorted(cumulative, rank, side="left")) if rank else -1))
        self._fine = {b: np.zeros(_FINE_BINS, dtype=np.int64) for _, b in self._targets if b >= 0}
        return set(self._fine)

    def refine(self, proba: np.ndarray) -> None:
        """Pass 2: count the low bits of rows falling in a boundary bin."""
        bits = _bits(proba)
        coarse = bits >> _COARSE_SHIFT
        for b, hist in self._fine.items():
            hist += np.bincount(bits[coarse == b] & (_FINE_BINS - 1), minlength=_FINE_BINS)

    def cuts(self) -> np.ndarray:
        """float32 value of the last row of deciles 1..9 (after ``refine`` saw every row)."""
        before = np.concatenate([[0], np.cumsum(self.coarse)])
        values = []
        for rank, b in self._targets:
            if b < 0:
                values.append(-np.inf)
                continue
            within = rank - before[b]
            low = int(np.searchsorted(np.cumsum(self._fine[b]), within, side="left"))
            values.append(np.array([(b << _COARSE_SHIFT) | low], dtype=np.uint32).view(np.float32)[0])
        return np.asarray(values, dtype=np.float32)


def deciles_from_cuts(proba: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Decile 1..10: one plus the number of boundaries strictly below the probability."""
    if len(cuts) == 0:
        return np.full(len(proba), 10 if len(proba) else 0, dtype=np.int16)
    return (np.searchsorted(cuts, np.asarray(proba, dtype=np.float32), side="left") + 1).astype(np.int16)


def deciles(proba: np.ndarray) -> np.ndarray:
    """1 (lowest risk) .. 10 (highest) by rank within ``proba`` (in-memory helper, same rule as scoring)."""
    proba = np.asarray(proba, dtype=np.float32)
    if len(proba) == 0:
        return np.zeros(0, dtype=np.int16)
    sketch = DecileSketch()
    sketch.add(proba)
    sketch.boundary_bins()
    sketch.refine(proba)
    return deciles_from_cuts(proba, sketch.cuts())


def partition_mask(ids: pa.Array | pa.ChunkedArray, partition: int, partitions: int) -> np.ndarray:
    """Mask of ids in hash partition ``partition`` of ``partitions``: CRC-32 of the UTF-8 id, modulo.

    The same stable hash as the Redis ``hash`` layout's buckets, computed on the Arrow column, so a
    partition filters rows *before* they are converted to pandas (the conversion is what costs).
    """
    if not 0 <= partition < partitions:
        raise ValueError(f"partition {partition} is outside 0..{partitions - 1}")
    if partitions == 1:
        return np.ones(len(ids), dtype=bool)
    return partition_of(ids, partitions) == np.uint32(partition)


def predict(model, signature: ModelSignature, frame) -> np.ndarray:
    """Churn probabilities (float32) of an enforced frame, checked to be finite and within [0, 1]."""
    return SklearnScorer(model, signature).predict(frame)


@dataclass
class PartitionScores:
    """One hash partition's raw scores (id, probability) and its coarse histogram, ready to merge.

    ``rows_read`` is how many snapshot rows the partition decoded (its own share when the snapshot is
    written in partitions, every row otherwise); ``runtime`` is what scored it (``sklearn`` or
    ``onnxruntime``) and ``runtime_reason`` why.
    """

    path: str
    histogram_path: str
    partition: int
    partitions: int
    rows: int
    inference_seconds: float
    rows_read: int = 0
    runtime: str = "sklearn"
    runtime_reason: str = ""
    cpu_seconds: float = 0.0  # this process's CPU for the partition (read, enforce, infer, write), load excluded

    def as_dict(self) -> dict:
        """JSON-able reference (what a mapped task returns through XCom)."""
        return dict(self.__dict__)


def partition_batches(features_path: str | Path, columns: list[str], id_column: str, partition: int,
                      partitions: int, chunk_rows: int) -> Iterator[tuple[pa.RecordBatch, int]]:
    """The snapshot rows of one hash partition, in batches of at most ``chunk_rows``, each with the rows decoded.

    A snapshot written in the same partitions (:class:`churn.data.partitions.PartitionedWriter`) is read
    row group by row group, only this partition's; any other file is read whole and filtered by hash.
    """
    if not 0 <= partition < partitions:
        raise ValueError(f"partition {partition} is outside 0..{partitions - 1}")
    parquet = pq.ParquetFile(features_path)
    groups = row_groups_of(parquet, partition, partitions) if partitions > 1 else None
    if groups is not None:
        if groups:  # iter_batches(row_groups=[]) would mean "every row group"
            for batch in parquet.iter_batches(batch_size=chunk_rows, columns=columns, row_groups=groups):
                yield batch, batch.num_rows
        return
    if partitions > 1:
        log.info("%s is not written in %s partitions: partition %s reads every row and keeps its share",
                 features_path, partitions, partition)
    for batch in parquet.iter_batches(batch_size=chunk_rows, columns=columns):
        decoded = batch.num_rows
        if partitions > 1:
            batch = batch.filter(pa.array(partition_mask(batch.column(id_column), partition, partitions)))
        yield batch, decoded


def score_partition(
    model,
    signature: ModelSignature,
    features_path: str | Path,
    out_dir: str | Path,
    *,
    partition: int = 0,
    partitions: int = 1,
    chunk_rows: int = 200_000,
    arm_models: list | None = None,
    arms=None,
) -> PartitionScores:
    """Pass 1 for one hash partition: probabilities to ``part-NNNN.raw.parquet`` plus its coarse histogram.

    ``model`` is a :class:`churn.model.runtime.Scorer` (or a scikit-learn estimator, scored as such).
    Experiments: ``arm_models`` are the other models arms are served (index 1, 2, ...; the champion is 0), and
    ``arms`` (:class:`churn.experiments.serving.ArmLookup`) names each enrolled customer's arm and model: each
    model scores the rows its arms serve (the champion scores every row: its score is the reference the
    realized monitoring compares).
    Files are written under temporary names and renamed, so a retried partition replaces
    its own files whole and the merge never reads a half-written one.
    """
    scorer: Scorer = model if hasattr(model, "runtime") else SklearnScorer(model, signature)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    raw_path = out_dir / f"part-{partition:04d}-of-{partitions:04d}.raw.parquet"
    hist_path = raw_path.with_suffix("").with_suffix(".coarse.npy")
    tmp_raw = raw_path.with_name(raw_path.name + ".tmp")
    sketch = DecileSketch()
    inference = 0.0
    done = read = 0
    cpu_started = time.process_time()
    last_progress = time.monotonic()
    try:
        with pq.ParquetWriter(tmp_raw, _RAW_SCHEMA) as raw_writer:
            for batch, decoded in partition_batches(features_path, [signature.id_column, *signature.feature_columns],
                                                    signature.id_column, partition, partitions, chunk_rows):
                read += decoded
                frame = signature.enforce(batch.to_pandas(), max_unknown_fraction=0.0)
                if frame.empty:
                    continue
                ids = frame[signature.id_column].astype("str").to_numpy(dtype=object)
                t0 = time.monotonic()
                proba = scorer.predict(frame)
                if arms is not None:
                    chosen, experiment, arm = arms.lookup(ids)
                    proba = np.array(proba, dtype=np.float32)  # a copy the arms' scores are written into
                    for index, other in enumerate(arm_models or [], start=1):  # each model scores its arms' rows
                        rows = chosen == index
                        if rows.any():
                            proba[rows] = other.predict(frame[rows])
                else:
                    n = len(frame)
                    chosen, experiment, arm = np.zeros(n, np.int16), pa.nulls(n, pa.string()), pa.nulls(n, pa.string())
                inference += time.monotonic() - t0
                sketch.add(proba)
                raw_writer.write_batch(pa.record_batch(
                    [pa.array(ids, pa.string()), pa.array(proba, pa.float32()), pa.array(chosen, pa.int16()),
                     experiment, arm, pa.array(features_hash(frame, signature), pa.int64())], schema=_RAW_SCHEMA))
                done += len(frame)
                if time.monotonic() - last_progress >= PROGRESS_SECONDS:
                    log.info("scoring progress (partition %s of %s): %s rows scored; inference %.1f s (%.0f rows/s)",
                             partition, partitions, done, inference, done / max(inference, 1e-9))
                    last_progress = time.monotonic()
        tmp_hist = hist_path.with_name(hist_path.name + ".tmp.npy")
        np.save(tmp_hist, sketch.coarse)
        os.replace(tmp_raw, raw_path)
        os.replace(tmp_hist, hist_path)
    finally:
        tmp_raw.unlink(missing_ok=True)
    runtime = scorer.runtime if done else "none"
    log.info("partition %s of %s: scored %s customers (%s rows read) with %s, inference %.2f s", partition,
             partitions, done, read, runtime, inference)
    return PartitionScores(str(raw_path), str(hist_path), partition, partitions, done, inference, read, runtime,
                           getattr(scorer, "reason", ""), round(time.process_time() - cpu_started, 3))


def merge_partitions(
    parts: list[PartitionScores],
    out_path: str | Path,
    *,
    model_version: str | list[str],
    run_id: str,
    scored_at: datetime,
    band_cuts: tuple[float, ...],
    chunk_rows: int = 200_000,
) -> ScoreResult:
    """Passes 2 and 3 over every partition: exact *global* decile cuts, then one final score file.

    ``model_version``: the version of every score, or (experiments) the versions by the raw files' model index.

    The partitions' coarse histograms add up to the population's; the refine pass reads only
    the probability column of each partition's raw file. Refuses an incomplete set of partitions.
    """
    started = time.monotonic()
    if not parts:
        raise ScoringError("no scored partitions to merge")
    expected = parts[0].partitions
    indexes = sorted(p.partition for p in parts)
    if indexes != list(range(expected)) or any(p.partitions != expected for p in parts):
        raise ScoringError(f"partitions {indexes} do not cover 0..{expected - 1}: a partition is missing or "
                           "belongs to another plan; re-run the scoring tasks of this run")
    parts = sorted(parts, key=lambda p: p.partition)
    out_path = Path(out_path)
    tmp = out_path.with_name(out_path.name + ".tmp")
    sketch = DecileSketch()
    for part in parts:
        sketch.coarse += np.load(part.histogram_path)
        sketch.rows += part.rows
    if sketch.rows != int(sketch.coarse.sum()):
        raise ScoringError("partition row counts disagree with their histograms: re-run the scoring tasks")
    if sketch.boundary_bins():
        for part in parts:
            for batch in pq.ParquetFile(part.path).iter_batches(batch_size=chunk_rows, columns=["churn_probability"]):
                sketch.refine(batch.column(0).to_numpy(zero_copy_only=False))
    cuts = sketch.cuts()
    scored_us = pd.Timestamp(scored_at).value // 1000
    versions = pa.array([model_version] if isinstance(model_version, str) else list(model_version), pa.string())
    try:
        with pq.ParquetWriter(tmp, SCORE_SCHEMA) as writer:
            for part in parts:
                for batch in pq.ParquetFile(part.path).iter_batches(batch_size=chunk_rows):
                    proba = batch.column(1).to_numpy(zero_copy_only=False)
                    n = len(proba)
                    chosen = batch.column("model").to_numpy(zero_copy_only=False)
                    if len(chosen) and int(chosen.max()) >= len(versions):
                        raise ScoringError(f"{part.path} names model {int(chosen.max())} of a plan with "
                                           f"{len(versions)}: re-run the scoring tasks of this run")
                    writer.write_batch(pa.record_batch(
                        [batch.column(0), batch.column(1),
                         pa.array(risk_bands(proba, band_cuts), pa.string()),
                         pa.array(deciles_from_cuts(proba, cuts), pa.int16()),
                         versions.take(pa.array(chosen)),
                         pa.array(np.full(n, run_id, dtype=object), pa.string()),
                         pa.array(np.full(n, scored_us, dtype=np.int64), pa.timestamp("us", tz="UTC")),
                         batch.column("experiment"), batch.column("arm"), batch.column("features_hash")],
                        schema=SCORE_SCHEMA))
        os.replace(tmp, out_path)  # readers never see a half-written score file
    finally:
        tmp.unlink(missing_ok=True)
    inference = sum(p.inference_seconds for p in parts)
    result = ScoreResult(str(out_path), sketch.rows, inference, time.monotonic() - started,
                         tuple(float(c) for c in cuts))
    log.info("merged %s partitions: %s customers, global deciles, %.2f s", len(parts), result.rows,
             result.other_seconds)
    return result


def score_snapshot(
    model,
    signature: ModelSignature,
    features_path: str | Path,
    out_path: str | Path,
    *,
    model_version: str,
    run_id: str,
    scored_at: datetime,
    band_cuts: tuple[float, ...],
    chunk_rows: int = 200_000,
    partitions: int = 1,
) -> ScoreResult:
    """Score every customer of a feature snapshot into one Parquet file, in ``partitions`` passes.

    The same code path as the DAG's mapped scoring, run in one process: peak memory is bounded by
    ``chunk_rows`` (see the module docstring) and deciles are ranks within the whole population.
    """
    started = time.monotonic()
    out_path = Path(out_path)
    work = out_path.with_name(out_path.name + ".parts")
    try:
        parts = [score_partition(model, signature, features_path, work, partition=p, partitions=partitions,
                                 chunk_rows=chunk_rows) for p in range(partitions)]
        merged = merge_partitions(parts, out_path, model_version=model_version, run_id=run_id,
                                  scored_at=scored_at, band_cuts=band_cuts, chunk_rows=chunk_rows)
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    total = time.monotonic() - started
    result = ScoreResult(merged.path, merged.rows, merged.inference_seconds, total - merged.inference_seconds,
                         merged.decile_cuts)
    log.info(
        "scored %s customers: inference %.2f s (%.0f rows/s), everything else %.2f s",
        result.rows, result.inference_seconds, result.rows_per_second, result.other_seconds,
    )
    return result
