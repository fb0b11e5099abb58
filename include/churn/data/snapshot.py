"""What every source returns: the written snapshot record, and the error a source raises (a leaf module)."""

from __future__ import annotations

from dataclasses import dataclass


class IngestError(RuntimeError):
    """The source could not be read; the message says which table or setting to fix."""


@dataclass(frozen=True)
class Snapshot:
    """A written feature snapshot: where it is and how many rows it has."""

    path: str
    rows: int
    snapshot_date: str
    labelled: bool
    source_files: list[str] | None = None
    """Files read (file sources only), in reading order."""
    ignored_columns: list[str] | None = None
    """Columns the files or the query return that are not in the dataset spec (not read, logged)."""
    max_chunk_rows: int | None = None
    """Largest number of rows held in memory at once while reading (file sources)."""
    sample_fraction: float | None = None
    """Share of the population kept when the run sampled it (trigger parameter ``sample_fraction``)."""
