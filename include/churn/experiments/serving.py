"""Per-arm serving: which model each experiment arm is served, and tonight's served arm of every enrolled customer.

The nightly batch scores the whole population with every model an active arm names (the champion first) and
serves each customer the score of its arm's model. A customer enrolled in several experiments is labelled with
the one that chooses its model (at most one can: :func:`churn.experiments.definitions.parse_experiments`), else
with the first of the file that enrolled it.

Model references in the file: ``champion`` (the champion pinned for tonight's batch), an exact registered
version, or a model name (``hist_gradient_boosting``, ``logistic_baseline``, ``tpot``): the newest version of
that name registered by the experiment's first night, frozen for the experiment (:func:`resolve_model`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Iterable

from churn.experiments.definitions import CHAMPION, Experiment, ExperimentsError

log = logging.getLogger(__name__)

ARMS_SCHEMA_FIELDS = ("customer_id", "experiment", "arm", "model")  # model: index into the plan's models


@dataclass(frozen=True)
class ServedModel:
    """One model the batch scores with: the registry's version, its verified artifact, its optional ONNX export."""

    version: str
    artifact_path: str
    artifact_sha256: str
    onnx_path: str | None = None
    onnx_sha256: str | None = None

    def as_dict(self) -> dict:
        """JSON-able (an XCom value)."""
        return dict(self.__dict__)


def resolve_model(conn, reference: str, champion, start: date | None = None) -> object:
    """The registry record an arm's ``model`` names (``champion``, a version or a model name), or an error with the fix.

    A model name is frozen for the experiment: the newest version of that name registered by its first night
    (``start``), or, when none was yet, the first registered after it. A nightly retraining therefore never
    changes what an arm is served in the middle of an experiment (name a version to choose another).
    """
    from churn.model import registry

    if reference == CHAMPION:
        return champion
    record = registry.find(conn, reference)
    if record is not None:
        return record
    with conn.cursor() as cur:
        first_night = (start or date.max).isoformat()
        # by the first night: the latest night's (a back-filled older night never displaces it); else the first after
        cur.execute("SELECT version FROM churn.model_registry WHERE model_name = %s ORDER BY run_key <= %s DESC, "
                    "CASE WHEN run_key <= %s THEN run_key END DESC, CASE WHEN run_key <= %s THEN created_at END "
                    "DESC, run_key, created_at, version LIMIT 1", (reference, first_night, first_night, first_night))
        row = cur.fetchone()
    conn.commit()
    if row is None:
        raise ExperimentsError(
            f"an arm names model {reference!r}, which is neither 'champion', a registered version nor the name of a "
            "registered model (e.g. logistic_baseline, hist_gradient_boosting); fix the arm's model in "
            "CHURN_EXPERIMENTS_FILE (python -m churn.model.registry history lists the versions)")
    return registry.get(conn, row[0])


def served_models(conn, experiments: Iterable[Experiment], champion) -> tuple[list[ServedModel], dict[tuple[str, str], int]]:
    """The models tonight's batch scores with (the champion first) and each ``(experiment, arm)``'s index among them."""
    from churn.model import registry

    def served(record) -> ServedModel:
        onnx = registry.onnx_export(conn, record.version) or {}
        return ServedModel(record.version, record.artifact_path, record.artifact_sha256, onnx.get("path"),
                           onnx.get("sha256"))

    models = [served(champion)]
    index = {champion.version: 0}
    arms: dict[tuple[str, str], int] = {}
    def columns(record) -> tuple:
        sig = record.signature
        return sig.get("id_column"), list(sig.get("numeric", [])), list(sig.get("boolean", [])), sorted(
            sig.get("categorical", {}))

    for experiment in experiments:
        for arm in experiment.arms:
            record = resolve_model(conn, arm.model, champion, experiment.start)
            if columns(record) != columns(champion):
                # every model scores the rows the champion's signature checked: they must read the same columns
                raise ExperimentsError(
                    f"experiment {experiment.id}, arm {arm.name}: model {record.version} was trained on other columns "
                    f"than the champion {champion.version}; name a model trained on the same dataset spec (e.g. a "
                    "candidate of a recent run) in CHURN_EXPERIMENTS_FILE")
            if record.version not in index:
                index[record.version] = len(models)
                models.append(served(record))
            arms[(experiment.id, arm.name)] = index[record.version]
    return models, arms


def priority(experiments: list[Experiment]) -> list[Experiment]:
    """Which experiment labels a customer enrolled in several: the one choosing the model first, then file order."""
    return sorted(experiments, key=lambda e: (not e.varies_model, experiments.index(e)))


def write_served_arms(conn, experiments: list[Experiment], arm_models: dict[tuple[str, str], int], out_path: str | Path,
                      partitions: int, chunk_rows: int = 500_000) -> int:
    """Write every enrolled customer's served ``(experiment, arm, model index)`` to ``out_path``; returns the rows.

    The file is written in the scoring plan's CRC-32 hash partitions (one row group per partition), so a
    scoring partition reads only its share. Rows stream from Postgres (``COPY ... TO STDOUT``) through a
    spooled file: memory stays a chunk whatever the number of assignments.
    """
    import tempfile

    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from churn.data.partitions import PartitionedWriter

    ordered = priority(experiments)
    out_path = Path(out_path)
    tmp = out_path.with_name(out_path.name + ".tmp")
    schema = pa.schema([("customer_id", pa.string()), ("experiment", pa.string()), ("arm", pa.string()),
                        ("model", pa.int16())])
    if not ordered:
        pq.write_table(schema.empty_table(), out_path)
        return 0
    ranks = ", ".join(["(%s, %s)"] * len(ordered))
    models = ", ".join(["(%s, %s, %s)"] * len(arm_models))
    query_params = [x for i, e in enumerate(ordered) for x in (e.id, i)]
    query_params += [x for (exp, arm), m in arm_models.items() for x in (exp, arm, m)]
    rows = 0
    with tempfile.SpooledTemporaryFile(max_size=64 << 20, dir=out_path.parent) as spool:
        with conn.cursor() as cur:
            query = cur.mogrify(
                f"SELECT DISTINCT ON (a.customer_id) a.customer_id, a.experiment_id, a.arm, m.model "
                f"FROM churn.experiment_assignments a JOIN (VALUES {ranks}) r(experiment_id, rank) USING (experiment_id) "
                f"JOIN (VALUES {models}) m(experiment_id, arm, model) USING (experiment_id, arm) "
                f"ORDER BY a.customer_id, r.rank", query_params).decode()
            cur.copy_expert(f"COPY ({query}) TO STDOUT WITH (FORMAT csv)", spool)
        conn.rollback()
        spool.seek(0)
        reader = pacsv.open_csv(spool, read_options=pacsv.ReadOptions(column_names=list(ARMS_SCHEMA_FIELDS),
                                                                       block_size=8 << 20),
                                convert_options=pacsv.ConvertOptions(column_types=schema, strings_can_be_null=False,
                                                                     quoted_strings_can_be_null=False))
        writer = PartitionedWriter(pq.ParquetWriter(tmp, schema), "customer_id", partitions)
        try:
            for batch in reader:
                writer.write(pa.Table.from_batches([batch]))
                rows += batch.num_rows
            writer.close()
            tmp.replace(out_path)
        finally:
            tmp.unlink(missing_ok=True)
    log.info("served arms: %s enrolled customers of %s experiment(s) written to %s", rows, len(ordered), out_path)
    return rows


class ArmLookup:
    """One scoring partition's served arms, looked up batch by batch (a hash index built once per partition)."""

    def __init__(self, arms_path: str | Path | None, partition: int, partitions: int) -> None:
        import pandas as pd
        import pyarrow.parquet as pq

        from churn.data.partitions import partition_of, row_groups_of

        self.experiments = self.arms = None
        self.models = None
        if not arms_path:
            self.index = None
            return
        parquet = pq.ParquetFile(arms_path)
        groups = row_groups_of(parquet, partition, partitions) if partitions > 1 else None
        table = parquet.read_row_groups(groups) if groups is not None else parquet.read()
        if groups is None and partitions > 1:
            import numpy as np
            import pyarrow as pa

            table = table.filter(pa.array(partition_of(table.column("customer_id"), partitions) == np.uint32(partition)))
        self.index = pd.Index(table.column("customer_id").to_numpy(zero_copy_only=False))
        self.experiments = table.column("experiment").combine_chunks()
        self.arms = table.column("arm").combine_chunks()
        self.models = table.column("model").to_numpy(zero_copy_only=False)

    def lookup(self, ids) -> tuple:
        """``(model index per row (0 = champion), experiment, arm)`` of ``ids`` (None where not enrolled)."""
        import numpy as np
        import pyarrow as pa

        n = len(ids)
        if self.index is None or len(self.index) == 0:
            return np.zeros(n, dtype=np.int16), pa.nulls(n, pa.string()), pa.nulls(n, pa.string())
        position = self.index.get_indexer(ids)
        found = position >= 0
        take = pa.array(np.where(found, position, 0), mask=~found)
        models = np.where(found, self.models[np.where(found, position, 0)], 0).astype(np.int16)
        return models, self.experiments.take(take), self.arms.take(take)
