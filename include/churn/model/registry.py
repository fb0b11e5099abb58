"""Model registry: versioned artifacts on disk, metadata and the champion pointer in Postgres.

Artifacts are verified by sha256 before they are unpickled, so a tampered or
truncated file is refused. Rollback: ``python -m churn.model.registry rollback VERSION``.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib

from churn.db import ensure_schema, to_jsonb
from churn.model.features import ModelSignature

log = logging.getLogger(__name__)


class ArtifactIntegrityError(RuntimeError):
    """The artifact on disk does not match the sha256 recorded at registration."""


class RegistryError(RuntimeError):
    """A registry operation is impossible (unknown version, no champion ...)."""


@dataclass
class ModelRecord:
    """One registry row."""

    version: str
    run_key: str
    model_name: str
    status: str
    reason: str
    metrics: dict
    signature: dict
    artifact_path: str
    artifact_sha256: str


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def code_version() -> str:
    """Git commit of the code that trained the model, or 'unknown' outside a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def save_artifact(model: Any, signature: ModelSignature, models_dir: str | Path, version: str) -> tuple[str, str]:
    """Dump the fitted pipeline (with its preprocessing and signature) atomically; returns (path, sha256)."""
    folder = Path(models_dir) / version
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.joblib"
    tmp = path.with_suffix(".tmp")
    joblib.dump({"model": model, "signature": signature.as_dict(), "version": version}, tmp)
    os.replace(tmp, path)
    return str(path), file_sha256(path)


def load_verified(path: str | Path, expected_sha256: str) -> tuple[Any, ModelSignature]:
    """Load an artifact only if its sha256 matches the registry: never unpickle an unverified file."""
    if not Path(path).exists():
        raise ArtifactIntegrityError(f"model artifact {path} is missing; restore it or roll back to another version")
    actual = file_sha256(path)
    if actual != expected_sha256:
        raise ArtifactIntegrityError(
            f"model artifact {path} has sha256 {actual[:12]}..., registry expects {expected_sha256[:12]}...: "
            "the file was changed or truncated; it is refused. Roll back to another version or retrain."
        )
    payload = joblib.load(path)
    return payload["model"], ModelSignature.from_dict(payload["signature"])


def register(conn, *, version: str, run_key: str, model_name: str, status: str, reason: str, metrics: dict,
             params: dict, signature: ModelSignature, artifact_path: str, artifact_sha256: str,
             data_fingerprint: str, formats: list[str] | None = None) -> None:
    """Insert or replace one registry row (re-running a run's registration is idempotent)."""
    ensure_schema(conn)
    with conn.cursor() as cur:
        cur.execute(
            """
            INSERT INTO churn.model_registry (version, run_key, model_name, status, reason, metrics, params, signature,
                artifact_path, artifact_sha256, formats, data_fingerprint, code_version)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (version) DO UPDATE SET status = EXCLUDED.status, reason = EXCLUDED.reason,
                metrics = EXCLUDED.metrics, params = EXCLUDED.params, signature = EXCLUDED.signature,
                artifact_path = EXCLUDED.artifact_path, artifact_sha256 = EXCLUDED.artifact_sha256,
                formats = EXCLUDED.formats, data_fingerprint = EXCLUDED.data_fingerprint,
                code_version = EXCLUDED.code_version
            """,
            (version, run_key, model_name, status, reason, to_jsonb(metrics), to_jsonb(params),
             to_jsonb(signature.as_dict()), artifact_path, artifact_sha256, formats or ["joblib"],
             data_fingerprint, code_version()),
        )
    conn.commit()


def champion(conn) -> ModelRecord | None:
    """The current champion's record, or None before the first promotion."""
    ensure_schema(conn)
    with conn.cursor() as cur:
        cur.execute(
            """SELECT r.version, r.run_key, r.model_name, r.status, r.reason, r.metrics, r.signature,
                      r.artifact_path, r.artifact_sha256
               FROM churn.model_champion c JOIN churn.model_registry r USING (version)"""
        )
        row = cur.fetchone()
    conn.commit()
    return ModelRecord(*row) if row else None


def get(conn, version: str) -> ModelRecord:
    """One version's record; RegistryError if unknown."""
    with conn.cursor() as cur:
        cur.execute(
            """SELECT version, run_key, model_name, status, reason, metrics, signature, artifact_path,
                      artifact_sha256 FROM churn.model_registry WHERE version = %s""",
            (version,),
        )
        row = cur.fetchone()
    conn.commit()
    if row is None:
        raise RegistryError(f"model version {version!r} is not in churn.model_registry")
    return ModelRecord(*row)


def promote(conn, version: str, reason: str) -> None:
    """Move the champion pointer to ``version`` (one transaction; the old champion is 'retired')."""
    ensure_schema(conn)
    record = get(conn, version)
    load_verified(record.artifact_path, record.artifact_sha256)  # never point readers at a broken artifact
    with conn.cursor() as cur:
        cur.execute("UPDATE churn.model_registry SET status = 'retired' WHERE status = 'champion' AND version <> %s",
                    (version,))
        cur.execute("UPDATE churn.model_registry SET status = 'champion', reason = %s WHERE version = %s",
                    (reason, version))
        cur.execute(
            """INSERT INTO churn.model_champion (singleton, version, reason) VALUES (true, %s, %s)
               ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version, reason = EXCLUDED.reason,
               promoted_at = now()""",
            (version, reason),
        )
    conn.commit()
    log.info("champion is now %s: %s", version, reason)


def main(argv: list[str] | None = None) -> int:
    """CLI: ``list`` versions or ``rollback VERSION`` (moves the champion pointer)."""
    import psycopg2

    from churn.connections import postgres_url

    parser = argparse.ArgumentParser(prog="python -m churn.model.registry")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list")
    rollback = sub.add_parser("rollback")
    rollback.add_argument("version")
    args = parser.parse_args(argv)
    conn = psycopg2.connect(postgres_url())
    if args.action == "rollback":
        promote(conn, args.version, f"manual rollback to {args.version}")
        print(f"champion is now {args.version}")
        return 0
    with conn.cursor() as cur:
        cur.execute("SELECT version, status, model_name, metrics->>'roc_auc', reason FROM churn.model_registry "
                    "ORDER BY created_at")
        for row in cur.fetchall():
            print("\t".join(str(v) for v in row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
