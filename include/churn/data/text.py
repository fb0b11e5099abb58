"""Text parsing shared by every source: yes/no words, missing-value markers, regional numbers, bounded heads.

A leaf module (nothing else of ``churn.data`` is imported here) so the file source, the SQL source,
inference and the event deltas all parse text the same way.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from churn.data.snapshot import IngestError

TRUE_TEXT = {"1", "true", "t", "yes", "y"}
FALSE_TEXT = {"0", "false", "f", "no", "n"}
DEFAULT_MISSING = "?,NA,N/A,-,null,NaN,#N/A"  # CHURN_FILE_MISSING_VALUES' default
HEAD_MAX_BYTES = 4 << 20  # the header (and the format sniffer's lines) must lie within the first 4 MiB


class FileSourceError(IngestError):
    """A source file cannot be read as configured; the message names the file and the setting to fix."""


def parse_missing(value: str) -> frozenset[str]:
    """``"?,NA,-"`` -> the lower-cased missing-value markers (CHURN_FILE_MISSING_VALUES)."""
    return frozenset(part.strip().lower() for part in value.split(",") if part.strip())


def missing_mask(text: pd.Series, missing: frozenset[str] = frozenset()) -> pd.Series:
    """True where a cell is null, blank or one of the ``missing`` markers (compared lower-cased, stripped)."""
    stripped = text.astype("str").str.strip()
    mask = text.isna() | (stripped == "")
    if missing:
        mask |= stripped.str.lower().isin(missing)
    return mask


def plain_numbers(text: pd.Series, decimal: str = ".", thousands: str = "") -> pd.Series:
    """Number texts in the configured regional convention rewritten as plain ``1234.5`` for parsing."""
    if thousands:
        text = text.str.replace(thousands, "", regex=False)
    if decimal != ".":
        # With a decimal comma, a '.' left after removing the thousands separator is no decimal point:
        # the value is reported as unreadable rather than guessed.
        text = text.mask(text.str.contains(".", regex=False, na=False), "unreadable")
        text = text.str.replace(decimal, ".", regex=False)
    return text


def text_codec(encoding: str) -> str:
    """The Python codec for CHURN_FILE_ENCODING: UTF-8 also drops a byte-order mark."""
    return "utf-8-sig" if encoding.lower().replace("_", "-") in {"utf-8", "utf8"} else encoding


COMPRESSED_SUFFIXES = {".gz": "gzip", ".bz2": "bz2"}  # decompressed on the fly (Arrow infers it too)


def open_binary(path: Path):
    """The file's bytes, decompressed when its name ends in .gz or .bz2."""
    kind = COMPRESSED_SUFFIXES.get(path.suffix.lower())
    if kind == "gzip":
        import gzip

        return gzip.open(path, "rb")
    if kind == "bz2":
        import bz2

        return bz2.open(path, "rb")
    return open(path, "rb")


def read_head(path: Path, encoding: str, max_lines: int, max_bytes: int = HEAD_MAX_BYTES) -> list[str]:
    """The first ``max_lines`` lines of a CSV, reading at most ``max_bytes`` (LF, CRLF or CR-only line ends).

    A file without any line break in its first ``max_bytes`` is refused rather than read whole.
    """
    codec = text_codec(encoding)
    with open_binary(path) as handle:
        head = handle.read(max_bytes + 1)
    complete = len(head) <= max_bytes
    head = head[:max_bytes]
    try:
        text = head.decode(codec)
    except UnicodeDecodeError as exc:
        if complete or exc.start < len(head) - 4:  # not just a multi-byte character cut at the read limit
            shown = "UTF-8" if codec == "utf-8-sig" else encoding
            raise FileSourceError(f"{path}: the first lines are not valid {shown} ({exc}); set "
                                  "CHURN_FILE_ENCODING to the file's encoding, e.g. latin-1 or cp1252") from exc
        text = head[:exc.start].decode(codec)
    lines = text.splitlines()
    if not complete:
        if len(lines) <= 1:
            raise FileSourceError(f"{path}: no line break in the first {max_bytes >> 20} MiB: this is not a CSV "
                                  "with a header line; check the export")
        lines = lines[:-1]  # the last line may be cut at the read limit
    return lines[:max_lines]
