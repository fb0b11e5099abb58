"""Model registry: versioned artifacts on disk, metadata and the champion pointer in Postgres.

Artifacts are verified by sha256 before they are unpickled, so a tampered or
truncated file is refused. Rollback: ``python -m churn.model.registry rollback VERSION``. Every champion
change is recorded in the append-only ``churn.promotions``; making champion a version the gate refused
(or one that was never champion) is an override: ``--force --reason "..."``.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any


from churn.db import SchemaNotMigrated, ensure_schema, tables_present, to_jsonb
from churn.model.features import ModelSignature
from churn.fileio import atomic_path, file_sha256  # noqa: F401 - file_sha256 is part of this module's API

if TYPE_CHECKING:
    from churn.db import PgConnection, PgCursor

if TYPE_CHECKING:  # pandas/joblib are imported where used: `python -m churn.model.registry` starts fast
    import pandas as pd

log = logging.getLogger(__name__)

REFERENCE_FILE = "reference.parquet"
_RECORD_COLUMNS = """version, run_key, model_name, status, reason, metrics, signature, artifact_path,
                     artifact_sha256, formats"""


class ArtifactIntegrityError(RuntimeError):
    """The artifact on disk does not match the sha256 recorded at registration."""


class RegistryError(RuntimeError):
    """A registry operation is impossible (unknown version, no champion ...)."""


class OverrideRequired(RegistryError):
    """The version was refused by the gate or never champion: making it champion needs force and a reason."""


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
    formats: list[str] = field(default_factory=lambda: ["joblib"])

    @property
    def folder(self) -> Path:
        """The version's artifact folder (``model.joblib``, ``reference.parquet``, optional ``model.onnx``)."""
        return Path(self.artifact_path).parent

    @property
    def reference_path(self) -> Path:
        """Training feature sample saved at registration, read by the drift check."""
        return self.folder / REFERENCE_FILE


def version_name(run_key: str, model_name: str, attempt: str) -> str:
    """A version's name: ``<run key>-<model>-<attempt>``, unique to one training attempt of one run."""
    return f"{run_key}-{model_name}-{attempt}"


def code_version() -> str:
    """Git commit of the code that trained the model, or 'unknown' outside a checkout."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def save_artifact(model: Any, signature: ModelSignature, models_dir: str | Path, version: str,
                  folder_name: str | None = None) -> tuple[str, str]:
    """Dump the fitted pipeline (with its preprocessing and signature) atomically; returns (path, sha256)."""
    import joblib

    folder = Path(models_dir) / (folder_name or version)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.joblib"
    with atomic_path(path) as tmp:
        joblib.dump({"model": model, "signature": signature.as_dict(), "version": version}, tmp)
    return str(path), file_sha256(path)


def save_reference(frame: pd.DataFrame, signature: ModelSignature, models_dir: str | Path, version: str,
                   max_rows: int = 50_000, random_state: int = 0) -> tuple[str, int]:
    """Write ``<models_dir>/<version>/reference.parquet``: up to ``max_rows`` training rows (id + features)."""
    folder = Path(models_dir) / version
    folder.mkdir(parents=True, exist_ok=True)
    sample = frame[[signature.id_column, *signature.feature_columns]]
    if len(sample) > max_rows:
        sample = sample.sample(n=max_rows, random_state=random_state)
    sample = sample.sort_values(signature.id_column, kind="stable").reset_index(drop=True)
    path = folder / REFERENCE_FILE
    with atomic_path(path) as tmp:  # the drift stage never sees a half-written reference
        sample.to_parquet(tmp, index=False)
    return str(path), len(sample)


@dataclass
class Package:
    """Everything written to a version's folder at registration."""

    artifact_path: str
    artifact_sha256: str
    formats: list[str]
    reference_path: str
    reference_rows: int
    onnx: dict
    pmml: dict = field(default_factory=dict)


def package(model: Any, signature: ModelSignature, models_dir: str | Path, version: str, *,
            train_rows: pd.DataFrame, test_rows: pd.DataFrame, reference_rows: int = 50_000,
            onnx_tolerance: float = 1e-5, pmml: bool = True, pmml_tolerance: float = 1e-6,
            random_state: int = 0) -> Package:
    """Write a version's folder: verified joblib artifact, reference sample, ONNX and PMML where convertible.

    ``formats`` lists only files that exist and passed their check: ``joblib`` always,
    ``onnx`` when skl2onnx converts the pipeline and its probabilities on ``test_rows`` match
    scikit-learn's within ``onnx_tolerance``, ``pmml`` when JPMML-SkLearn converts it and the JPMML
    evaluator matches within ``pmml_tolerance`` (skipped when ``pmml`` is false). The folder is written under a staging name and
    renamed into place, so ``<models_dir>/<version>`` appears whole or not at all. Call it only
    for a version that has no registry row: a folder left by a crashed, never-registered attempt
    is replaced, a registered version's folder is never touched (``register`` skips packaging).
    """
    import shutil
    import uuid

    from churn.model.export import ONNX_FILE, OnnxExportError, export_onnx

    root = Path(models_dir)
    final = root / version
    staging_name = f".{version}.staging-{uuid.uuid4().hex[:8]}"
    staging = root / staging_name
    try:
        _, sha = save_artifact(model, signature, root, version, staging_name)
        _, ref_rows = save_reference(train_rows, signature, root, staging_name, reference_rows, random_state)
        formats = ["joblib"]
        try:
            exported = export_onnx(model, signature, staging, test_rows, onnx_tolerance)
        except Exception as exc:  # noqa: BLE001 - an optional format never fails the run: it is left out, with why
            if not isinstance(exc, OnnxExportError):
                log.warning("version %s: ONNX export failed unexpectedly (%s: %s); left out of formats", version,
                            type(exc).__name__, exc)
            (staging / ONNX_FILE).unlink(missing_ok=True)
            log.info("version %s: no ONNX export (%s)", version, exc)
            onnx = {"exported": False, "error": str(exc)[:500]}
        else:
            formats.append("onnx")
            onnx = {"exported": True, "path": str(final / ONNX_FILE), "sha256": file_sha256(exported.path),
                    "parity_max_abs_diff": exported.max_abs_diff, "parity_rows": exported.rows_checked,
                    "parity_tolerance": onnx_tolerance}
        pmml_result = _package_pmml(model, signature, staging, final, test_rows, pmml_tolerance, random_state) \
            if pmml else {"exported": False, "error": "PMML export is off (CHURN_EXPORT_PMML=false)"}
        if pmml_result["exported"]:
            formats.append("pmml")
        if final.exists():
            log.warning("version %s: replacing the folder of an attempt that never reached the registry", version)
            shutil.rmtree(final)
        os.rename(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # only left when something above failed
    return Package(str(final / "model.joblib"), sha, formats, str(final / REFERENCE_FILE), ref_rows, onnx,
                   pmml_result)


def _package_pmml(model: Any, signature: ModelSignature, staging: Path, final: Path, test_rows: pd.DataFrame,
                  tolerance: float, random_state: int) -> dict:
    """PMML into the staging folder when it converts and passes parity; what happened, for the train result."""
    from churn.model.pmml import PMML_FILE, PmmlExportError, export_pmml

    started = time.monotonic()
    try:
        exported = export_pmml(model, signature, staging, test_rows, tolerance, random_state=random_state)
    except Exception as exc:  # noqa: BLE001 - an optional format never fails the run: it is left out, with why
        if not isinstance(exc, PmmlExportError):
            log.warning("version %s: PMML export failed unexpectedly (%s: %s); left out of formats", final.name,
                        type(exc).__name__, exc)
        (staging / PMML_FILE).unlink(missing_ok=True)
        log.info("version %s: no PMML export (%s)", final.name, exc)
        return {"exported": False, "error": str(exc)[:500], "seconds": round(time.monotonic() - started, 1)}
    return {"exported": True, "path": str(final / PMML_FILE), "sha256": file_sha256(exported.path),
            "parity_max_abs_diff": exported.max_abs_diff, "parity_rows": exported.rows_checked,
            "parity_tolerance": tolerance, "seconds": round(time.monotonic() - started, 1)}


def verified_bytes(path: str | Path, expected_sha256: str) -> bytes:
    """The bytes of ``path`` if they hash to ``expected_sha256``; ArtifactIntegrityError (with the fix) otherwise."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise ArtifactIntegrityError(f"model artifact {path} is missing; restore it or roll back to another "
                                     "version") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise ArtifactIntegrityError(
            f"model artifact {path} has sha256 {actual[:12]}..., expected {expected_sha256[:12]}...: "
            "the file was changed or truncated; it is refused (it does not match its recorded hash). "
            "Roll back to another version or retrain."
        )
    return data


def read_verified(path: str | Path, expected_sha256: str) -> Any:
    """Unpickle ``path`` only if its bytes hash to ``expected_sha256``, hashing and loading the same bytes.

    Reading the file once closes the window in which a file swapped between the check and the load
    would be unpickled unverified.
    """
    import io

    import joblib

    return joblib.load(io.BytesIO(verified_bytes(path, expected_sha256)))


def load_verified(path: str | Path, expected_sha256: str) -> tuple[Any, ModelSignature]:
    """Load a registered artifact only if its sha256 matches the registry: never unpickle an unverified file."""
    payload = read_verified(path, expected_sha256)
    return payload["model"], ModelSignature.from_dict(payload["signature"])


class VersionConflict(RegistryError):
    """A version is already registered with other bytes: registered artifacts are immutable."""


def register(conn: PgConnection, *, version: str, run_key: str, model_name: str, status: str, reason: str, metrics: dict,
             params: dict, signature: ModelSignature, artifact_path: str, artifact_sha256: str,
             data_fingerprint: str, formats: list[str] | None = None) -> bool:
    """Insert one registry row; True if inserted, False if this exact artifact was already registered.

    A registered version is immutable: its row (status aside, which only ``promote`` moves) and
    its files are never rewritten. Registering the same version with the same sha256 again (a
    re-run of the same training attempt) is a no-op; with another sha256 it is refused.
    """
    ensure_schema(conn)
    with conn.cursor() as cur:
        cur.execute(
            """
            INSERT INTO churn.model_registry (version, run_key, model_name, status, reason, metrics, params, signature,
                artifact_path, artifact_sha256, formats, data_fingerprint, code_version)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (version) DO NOTHING
            RETURNING version
            """,
            (version, run_key, model_name, status, reason, to_jsonb(metrics), to_jsonb(params),
             to_jsonb(signature.as_dict()), artifact_path, artifact_sha256, formats or ["joblib"],
             data_fingerprint, code_version()),
        )
        inserted = cur.fetchone() is not None
        if not inserted:
            cur.execute("SELECT artifact_sha256 FROM churn.model_registry WHERE version = %s", (version,))
            existing_sha = cur.fetchone()[0]
    conn.commit()
    if not inserted and existing_sha != artifact_sha256:
        raise VersionConflict(
            f"model version {version!r} is already registered with artifact sha256 {existing_sha[:12]}..., "
            f"not {artifact_sha256[:12]}...: registered versions are immutable. Register the new model "
            "under a new version (each training attempt names its own)."
        )
    return inserted


def find(conn: PgConnection, version: str) -> ModelRecord | None:
    """One version's record, or None if it was never registered."""
    try:
        return get(conn, version)
    except RegistryError:
        return None


def champion(conn: PgConnection) -> ModelRecord | None:
    """The current champion's record, or None before the first promotion (read-only: no DDL)."""
    if not tables_present(conn, "churn.model_registry", "churn.model_champion"):
        return None
    with conn.cursor() as cur:
        cur.execute(
            f"""SELECT {_RECORD_COLUMNS} FROM churn.model_registry
               WHERE version = (SELECT version FROM churn.model_champion)"""
        )
        row = cur.fetchone()
    conn.commit()
    return ModelRecord(*row) if row else None


def onnx_export(conn: PgConnection, version: str) -> dict | None:
    """The version's ONNX export (``path``, ``sha256``, parity figures) if registration listed it, else None.

    A version lists ``onnx`` among its formats only when the export ran in onnxruntime and matched
    scikit-learn within the parity tolerance on the test rows.
    """
    with conn.cursor() as cur:
        cur.execute("SELECT params->'onnx' FROM churn.model_registry WHERE version = %s AND 'onnx' = ANY(formats)",
                    (version,))
        row = cur.fetchone()
    conn.commit()
    exported = row[0] if row else None
    return exported if isinstance(exported, dict) and exported.get("path") and exported.get("sha256") else None


def get(conn: PgConnection, version: str) -> ModelRecord:
    """One version's record; RegistryError if unknown (read-only: no DDL)."""
    if not tables_present(conn, "churn.model_registry"):
        raise RegistryError(f"model version {version!r} is not in churn.model_registry (no model registered yet)")
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT {_RECORD_COLUMNS} FROM churn.model_registry WHERE version = %s",
            (version,),
        )
        row = cur.fetchone()
    conn.commit()
    if row is None:
        raise RegistryError(f"model version {version!r} is not in churn.model_registry")
    return ModelRecord(*row)


def promote(conn: PgConnection, version: str, reason: str, *, kind: str | None = None, actor: str | None = None,
            force: bool = False) -> bool:
    """Move the champion pointer to ``version`` and record it in ``churn.promotions``, in one transaction.

    ``kind`` is ``gate`` (the nightly gate promoting the challenger it approved), ``rollback``, or
    ``experiment`` (a person promoting an experiment arm's model on its realized results on live customers:
    that evidence stands in for the gate's, so no override is needed; ``actor`` and ``reason`` are required); by
    default ``gate`` for a version whose status is ``challenger`` (approved, awaiting its promotion),
    else ``rollback``. A version the gate refused, or one that was never champion (or only by
    override), is made champion only with ``force=True`` and a non-empty ``reason``: the row then says
    ``kind='override'``, ``forced=true``. The old champion becomes 'retired'; ``actor`` defaults to the
    database role. Promoting the current champion changes nothing (returns False; True when it moved).
    """
    if kind not in (None, "gate", "rollback", "experiment"):
        raise RegistryError(f"promotion kind {kind!r} is not one of 'gate', 'rollback', 'experiment' (an override "
                            "is 'rollback' with force=True)")
    if kind == "experiment" and not (actor and (reason or "").strip()):
        raise RegistryError("a promotion decided on an experiment names who decided (actor) and why (reason)")
    record = get(conn, version)  # a registered version means the registry tables exist
    load_verified(record.artifact_path, record.artifact_sha256)  # never point readers at a broken artifact
    if not tables_present(conn, "churn.promotions"):  # a schema from before the history: migrate it first
        try:
            ensure_schema(conn)
        except SchemaNotMigrated as exc:
            raise RegistryError(f"no champion change without its history: {exc}") from exc
    try:
        with conn.cursor() as cur:
            # Locked in this transaction: concurrent promotions serialize, the checks see what is written.
            cur.execute("SELECT status FROM churn.model_registry WHERE version = %s FOR UPDATE", (version,))
            status = cur.fetchone()[0]
            cur.execute("SELECT version FROM churn.model_champion FOR UPDATE")
            previous = (cur.fetchone() or (None,))[0]
            if previous == version:
                conn.rollback()
                log.info("%s is already the champion: nothing changed", version)
                return False
            kind = kind or ("gate" if status == "challenger" else "rollback")
            if kind == "gate" and status != "challenger":
                raise RegistryError(f"the gate promotes only the challenger it approved; {version} is {status!r}")
            # an experiment's decision rests on realized results on live customers, not on the gate's split
            why_override = _override_needed(cur, version, status) if kind == "rollback" else None
            if why_override and not force:
                raise OverrideRequired(
                    f"{version} {why_override}: making it champion overrides the gate. Pass force=True and a "
                    f"reason (CLI: python -m churn.model.registry rollback {version} --force --reason \"why\"); "
                    "the override is recorded in churn.promotions")
            if why_override and not (reason or "").strip():
                raise OverrideRequired(f"overriding the gate for {version} needs a reason: --force --reason \"why\"")
            forced = bool(why_override)
            kind = "override" if forced else kind
            cur.execute("UPDATE churn.model_registry SET status = 'retired' "
                        "WHERE status = 'champion' AND version <> %s", (version,))
            cur.execute("UPDATE churn.model_registry SET status = 'champion', reason = %s WHERE version = %s",
                        (reason, version))
            cur.execute(
                """INSERT INTO churn.model_champion (singleton, version, reason) VALUES (true, %s, %s)
                   ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version, reason = EXCLUDED.reason,
                   promoted_at = now()""",
                (version, reason),
            )
            cur.execute("INSERT INTO churn.promotions (version, previous_champion, actor, reason, kind, forced) "
                        "VALUES (%s, %s, coalesce(%s, session_user), %s, %s, %s)",
                        (version, previous, actor, reason, kind, forced))
        conn.commit()
    except BaseException:
        conn.rollback()  # nothing of a refused change stays
        raise
    if forced:
        log.warning("champion is now %s by override (%s; was %s), by %s: %s", version, why_override, previous,
                    actor or "the database role", reason)
    else:
        log.info("champion is now %s (%s; was %s): %s", version, kind, previous, reason)
    return True


def override_needed(conn: PgConnection, version: str) -> str | None:
    """Why making ``version`` champion by hand would override the gate (None: a plain rollback); read-only."""
    record = get(conn, version)
    if record.status == "champion" or (record.status == "retired" and not tables_present(conn, "churn.promotions")):
        return None  # the champion, or a former one from before the history
    with conn.cursor() as cur:
        why = _override_needed(cur, version, record.status)
    conn.commit()
    return why


def _override_needed(cur: PgCursor, version: str, status: str) -> str | None:
    """Why making ``version`` champion by hand overrides the gate, or None when it is a plain rollback."""
    if status == "refused":
        return "was refused by the gate"
    if status != "retired":  # only a former champion is 'retired'
        return f"was never champion (status {status!r})"
    cur.execute("SELECT bool_or(NOT forced), count(*) FROM churn.promotions WHERE version = %s", (version,))
    unforced, rows = cur.fetchone()
    if rows and not unforced:  # champion only ever by override: the gate's refusal still stands
        return "was champion only by override of the gate"
    return None  # a former champion (rows from before the history count: it was 'retired', so it was champion)


def history(conn: PgConnection, limit: int = 50) -> list[dict]:
    """The newest ``limit`` champion changes from ``churn.promotions`` (read-only: no DDL)."""
    if not tables_present(conn, "churn.promotions"):
        return []
    with conn.cursor() as cur:
        cur.execute("SELECT id, at, version, previous_champion, actor, reason, kind, forced FROM churn.promotions "
                    "ORDER BY id DESC LIMIT %s", (limit,))
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, row)) for row in cur.fetchall()]
    conn.commit()
    return rows


def build_parser() -> argparse.ArgumentParser:
    """The CLI's parser (also read by the docs' CLI reference)."""
    parser = argparse.ArgumentParser(prog="python -m churn.model.registry",
                                     description="Model registry (Postgres churn.model_registry / model_champion).")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="every version, oldest first")
    show = sub.add_parser("show", help="one version's record as JSON")
    show.add_argument("version")
    rollback = sub.add_parser("rollback", aliases=["promote"],
                              help="make VERSION the champion (its artifact is verified first; recorded in "
                                   "churn.promotions)")
    rollback.add_argument("version")
    rollback.add_argument("--force", action="store_true",
                          help="override the gate: a version it refused, or one that was never champion")
    rollback.add_argument("--reason", default="", help="why (required with --force; recorded in the history)")
    rollback.add_argument("--actor", default=None,
                          help="who, for the history (default: your OS user name)")
    sub.add_parser("history", help="champion changes, newest first (churn.promotions)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI: ``list`` versions, ``show VERSION``, ``history`` of champion changes, or ``rollback VERSION``."""
    import json

    from churn.connections import Resources

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.action == "promote":
        args.action = "rollback"
    if args.action == "rollback" and args.force and not args.reason.strip():
        parser.error('--force needs --reason "why" (recorded in churn.promotions with your name)')
    import psycopg2

    try:
        conn = Resources.from_airflow().pg()  # resolved as the tasks and the Churn page resolve it
    except psycopg2.OperationalError as exc:
        print(f"error: cannot reach the registry's Postgres ({str(exc).strip().splitlines()[0]}): start the "
              "embedded servers (make services) or set CHURN_POSTGRES_URL / the churn_postgres connection",
              file=sys.stderr)
        return 2
    try:
        if args.action == "rollback":
            import getpass

            before = champion(conn)
            was = f" (was {before.version})" if before else ""
            changed = promote(conn, args.version, args.reason.strip() or f"manual rollback to {args.version}{was}",
                              kind="rollback", actor=args.actor or f"cli:{getpass.getuser()}", force=args.force)
            print(f"champion is now {args.version}{was}" if changed else f"{args.version} is already the champion")
            return 0
        if args.action == "history":
            print("id\tat\tversion\tprevious_champion\tactor\tkind\tforced\treason")
            for row in history(conn):
                print("\t".join(str(row[k]) for k in ("id", "at", "version", "previous_champion", "actor", "kind",
                                                     "forced", "reason")))
            return 0
        if args.action == "show":
            print(json.dumps(get(conn, args.version).__dict__, indent=2, default=str))
            return 0
        if not tables_present(conn, "churn.model_registry"):
            print("no model registered yet: churn_nightly creates the registry on its first run")
            return 0
        with conn.cursor() as cur:
            cur.execute("SELECT version, status, model_name, metrics->>'roc_auc', array_to_string(formats, ','), "
                        "created_at, reason FROM churn.model_registry ORDER BY created_at, version")
            print("version\tstatus\tmodel\ttest_roc_auc\tformats\tcreated_at\treason")
            for row in cur.fetchall():
                print("\t".join(str(v) for v in row))
        return 0
    except (RegistryError, ArtifactIntegrityError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
