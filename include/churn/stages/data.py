"""Data stages: ingest (point-in-time snapshots), profile and validate (GX, quarantine), drift, split."""

from __future__ import annotations

import dataclasses
import logging
import time
from datetime import date
from pathlib import Path

from churn.config import ChurnConfig
from churn.connections import Resources
from churn.stages.common import is_dry_run, timed
from churn.stages.results import DriftResult, IngestResult, SplitResult, ValidationResult, parse

log = logging.getLogger(__name__)


def sample_snapshot(path: str, fraction: float, seed: int, id_column: str = "customer_id",
                     chunk_rows: int = 100_000) -> int:
    """Keep about ``fraction`` of a snapshot's rows, chosen by id hash; streamed, written atomically."""
    from churn.data.stream import write_sample

    return write_sample(path, fraction, id_column, seed, chunk_rows)


def ingest(cfg: ChurnConfig, res: Resources, run: dict) -> dict:
    """Point-in-time snapshots (training with labels, scoring) from the configured source, plus its dataset spec.

    SQL sources (the demo's ``postgres`` and your ``sql``): the feature query's result as of
    ``as_of - label_window_days`` with the label "churned within the window" trains, its result as of
    ``as_of`` is scored. File source: the file(s) delivered for the run date are
    that date's snapshot (a file has no time dimension); labelled rows train, and the same rows (or
    ``CHURN_FILE_SCORE_PATH``) are scored. The spec is written to ``<run_dir>/dataset_spec.json``.
    """
    from churn.data.ingest import source_for

    started = time.monotonic()
    as_of = date.fromisoformat(run["as_of"])
    run_dir = Path(run["run_dir"])
    got = source_for(cfg, res).nightly(as_of, run_dir)
    snapshots, spec = {"train": got.train, "score": got.score}, got.spec
    fraction = float(run.get("params", {}).get("sample_fraction") or 1.0)
    if fraction < 1.0:
        # A published batch must cover everyone (publish_redis deletes customers not scored), so the
        # scored population is sampled only in a dry run; training rows are sampled in every run.
        for dataset in ("train", "score") if is_dry_run(run) else ("train",):
            kept = sample_snapshot(snapshots[dataset].path, fraction, cfg.random_state, spec.id_column,
                                   cfg.ingest_chunk_rows)
            snapshots[dataset] = dataclasses.replace(snapshots[dataset], rows=kept, sample_fraction=fraction)
        log.info("sampled %s of the population: %s", fraction, {k: v.rows for k, v in snapshots.items()})
    inferred = ({k: spec.inference[k] for k in ("numeric", "boolean", "categorical", "ignored")}
                if spec.inference else None)
    return timed(run, "ingest", started, IngestResult(
        train=snapshots["train"], score=snapshots["score"], dataset=spec.name,
        detected_format=got.detected_format or None, inferred_kinds=inferred,
        spec_path=str(spec.write(run_dir))))  # a reference: split/train/validate read the spec from here


def profile_and_validate(cfg: ChurnConfig, res: Resources, run: dict, ingested: dict) -> dict:
    """Profile both snapshots, validate them with the dataset's GX suite, quarantine bad rows, build Data Docs."""
    from churn.data.profile import profile_snapshot
    from churn.data.spec import load_run_spec
    from churn.data.validate import validate_snapshot

    started = time.monotonic()
    spec = load_run_spec(run["run_dir"])
    docs_dir = Path(run["run_dir"]) / "data_docs"
    snapshots = parse(IngestResult, ingested)
    outcomes = {}
    with res.pg_session() as conn:
        for dataset in ("train", "score"):
            path = getattr(snapshots, dataset).path
            profile_snapshot(conn, path, run["run_key"], dataset, id_column=spec.id_column,
                             chunk_rows=cfg.ingest_chunk_rows,
                             sample_rows=cfg.profile_sample_rows, seed=cfg.random_state)
            outcome = validate_snapshot(
                conn, path, run["run_key"], dataset, run["run_dir"], cfg.max_bad_row_fraction,
                training=dataset == "train", spec=spec, as_of=date.fromisoformat(run["as_of"]),
                max_row_count_change=cfg.max_row_count_change, max_data_age_days=cfg.max_data_age_days,
                docs_dir=docs_dir, chunk_rows=cfg.ingest_chunk_rows,
                # the scoring rows in the plan's hash partitions: each score_partition task reads only its own
                partitions=max(cfg.score_partitions, 1) if dataset == "score" else 1,
            )
            outcomes[dataset] = outcome
    return timed(run, "profile_and_validate", started, ValidationResult(
        **outcomes, data_docs_path=str(docs_dir / "index.html")))  # HTML per dataset, linked from this index


def drift(cfg: ChurnConfig, res: Resources, run: dict, validated: dict) -> dict:
    """PSI (every feature) and KS (numeric) of the clean scoring snapshot vs the champion's training reference."""
    from churn.data.drift import drift_against_champion
    from churn.model import registry
    from churn.model.features import ModelSignature

    started = time.monotonic()
    with res.pg_session() as conn:
        champ = registry.champion(conn)
        signature = ModelSignature.from_dict(champ.signature) if champ is not None else None
        report = drift_against_champion(conn, champ, signature, parse(ValidationResult, validated).score.clean_path,
                                        run["run_key"], cfg.drift_psi_threshold, cfg.drift_sample_rows)
    return timed(run, "drift", started, DriftResult(**dataclasses.asdict(report)))


def split(cfg: ChurnConfig, res: Resources, run: dict, validated: dict) -> dict:
    """Deterministic id-keyed train/valid/test split of the clean training rows."""
    from churn.data.spec import load_run_spec
    from churn.data.stream import sample_frame
    from churn.model.registry import file_sha256
    from churn.model.train import split_ids

    started = time.monotonic()
    spec = load_run_spec(run["run_dir"])
    LABEL_COLUMN = spec.label_column  # noqa: N806 - the dataset's label column (from its spec)
    # At most about max_train_rows rows, chosen by id hash while streaming (each class keeps its share in
    # expectation): the split's memory does not grow with the population.
    clean_train = parse(ValidationResult, validated).train.clean_path
    frame, available = sample_frame(clean_train, cfg.max_train_rows, spec.id_column,
                                    cfg.random_state, chunk_rows=cfg.ingest_chunk_rows)
    assignment = split_ids(frame[spec.id_column], cfg.splits)
    paths: dict[str, str] = {}
    counts: dict[str, dict] = {}
    for name in ("train", "valid", "test"):
        part = frame[assignment == name]
        if part[LABEL_COLUMN].nunique() < 2:
            raise ValueError(
                f"the {name} split has only one class ({len(part)} rows): the population is too small "
                "or the label window too short; raise CHURN_DEMO_CUSTOMERS or CHURN_LABEL_WINDOW_DAYS"
            )
        path = Path(run["run_dir"]) / f"split_{name}.parquet"
        part.to_parquet(path, index=False)
        paths[name] = str(path)
        counts[name] = {"rows": len(part), "positives": int(part[LABEL_COLUMN].sum())}
    fingerprint = file_sha256(clean_train)  # read in blocks, not whole
    return timed(run, "split", started, SplitResult(paths=paths, counts=counts, data_fingerprint=fingerprint,
                                                    rows_available=available, rows_used=len(frame)))
