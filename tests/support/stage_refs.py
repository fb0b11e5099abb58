"""Stage results for tests that start a stage in the middle of the DAG: the typed records the earlier stages
would have passed through XCom, serialized the same way (``churn.stages.results``)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from churn.data.validate import ValidationOutcome
from churn.stages.results import PostgresPublishResult, ScoredResult, ValidationResult


def _rows(path: str | Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows


def scored_ref(path: str | Path, model_version: str, rows: int | None = None) -> dict:
    """What ``score`` (the merge) returns for the score file ``path``."""
    return ScoredResult(path=str(path), rows=_rows(path) if rows is None else rows,
                        model_version=model_version).as_dict()


def validated_ref(*, train_clean: str | Path | None = None, score_clean: str | Path | None = None) -> dict:
    """What ``profile_and_validate`` returns when every row of the given clean snapshots passed."""
    def outcome(dataset: str, path: str | Path | None) -> ValidationOutcome:
        path = path or train_clean or score_clean
        return ValidationOutcome(dataset=dataset, success=True, rows_checked=_rows(path), rows_quarantined=0,
                                 clean_path=str(path), result_path="")

    return ValidationResult(train=outcome("train", train_clean), score=outcome("score", score_clean)).as_dict()


def pg_published_ref(table: str, rows: int, is_current: bool = True) -> dict:
    """What ``publish_postgres`` returns after switching ``table`` in."""
    return PostgresPublishResult(table=table, rows=rows, is_current=is_current).as_dict()
