"""Small file helpers shared by every stage: atomic writes (write beside, then rename) and file hashes."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Iterator


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path``; renamed onto ``path`` when the block succeeds, removed when it fails.

    Readers of ``path`` see the old file or the new one, never a half-written one.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str, mode: int | None = None) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path.

    ``mode`` (e.g. ``0o600`` for a file holding a password) applies from the file's creation on, so its
    content is never readable by others, not even for a moment.
    """
    with atomic_path(path) as tmp:
        if mode is None:
            tmp.write_text(text, encoding="utf-8")
        else:
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w", encoding="utf-8") as out:
                out.write(text)
            os.chmod(tmp, mode)  # an existing leftover keeps its old mode otherwise
    return Path(path)
