"""The trigger form: churn_nightly's Params validate values (real Airflow DagBag) before any task runs."""

from __future__ import annotations

import json

import pytest

from tests.support.airflow_env import run_probe

# Each case: (param, value, should_be_accepted). Resolved by Airflow's own Param.resolve (JSON schema).
CASES = [
    ("retrain", True, True), ("retrain", "yes", False),
    ("train_budget_minutes", None, True), ("train_budget_minutes", 0.5, True),
    ("train_budget_minutes", 0, False), ("train_budget_minutes", 500, False), ("train_budget_minutes", "ten", False),
    ("max_eval_minutes", 0.1, True), ("max_eval_minutes", 0.01, False),
    ("sample_fraction", 1.0, True), ("sample_fraction", 0.25, True),
    ("sample_fraction", 0, False), ("sample_fraction", 1.5, False), ("sample_fraction", -0.1, False),
    ("dry_run", False, True), ("dry_run", 1, False),
    ("min_roc_auc", 0.7, True), ("min_roc_auc", 1.2, False),
    ("note", "weekly check", True), ("note", "x" * 201, False),
]

_PROBE = r"""
import json, os, sys
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk.exceptions import ParamValidationError
bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
dag = bag.dags["churn_nightly"]
out = {"descriptions": {k: dag.params.get_param(k).description for k in dag.params.keys()},
       "defaults": {k: dag.params.get_param(k).resolve() for k in dag.params.keys()}, "cases": []}
for name, value, _ in json.loads(sys.argv[1]):
    try:
        dag.params.get_param(name).resolve(value)
        out["cases"].append([name, value, True, ""])
    except ParamValidationError as exc:
        out["cases"].append([name, value, False, str(exc)])
print("JSON" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def resolved(tmp_path_factory):
    return run_probe(_PROBE, tmp_path_factory.mktemp("params"), json.dumps(CASES))


def test_every_param_has_a_description_and_a_valid_default(resolved):
    assert set(resolved["descriptions"]) >= {"retrain", "train_budget_minutes", "sample_fraction", "dry_run"}
    for name, description in resolved["descriptions"].items():
        assert description and len(description) > 15, f"{name} has no useful description"
    assert resolved["defaults"]["dry_run"] is False and resolved["defaults"]["sample_fraction"] == 1.0


@pytest.mark.parametrize("index", range(len(CASES)))
def test_form_accepts_good_and_rejects_bad_values(resolved, index):
    name, value, expected = CASES[index]
    got_name, got_value, accepted, message = resolved["cases"][index]
    assert (got_name, got_value) == (name, value)
    assert accepted is expected, f"{name}={value!r}: accepted={accepted} ({message})"
    if not expected:
        assert message, "a rejected value must come with a message"


def test_dry_run_publishes_nothing_and_sampling_is_deterministic(tmp_path):
    import pandas as pd

    from churn.stages import data as data_stages, publish as publish_stages
    from churn.config import ChurnConfig
    from churn.connections import Resources

    def unreachable():
        raise AssertionError("a dry run must not open a connection to publish")

    res = Resources(pg=unreachable, redis=unreachable)
    run = {"run_key": "2026-11-20", "run_dir": str(tmp_path), "params": {"dry_run": True}}
    cfg = ChurnConfig(state_dir=tmp_path)
    scored = {"path": "unused.parquet", "model_version": "v", "rows": 10}
    pg = publish_stages.publish_postgres(cfg, res, run, scored)
    assert pg["skipped"] and pg["rows"] == 0 and "dry run" in pg["reason"]
    assert publish_stages.publish_redis(cfg, res, run, scored, pg)["skipped"]
    assert publish_stages.export(cfg, res, run, scored, pg)["path"] is None

    frame = pd.DataFrame({"customer_id": [f"C{i:08d}" for i in range(4000)], "x": range(4000)})
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    frame.to_parquet(first, index=False)
    frame.iloc[::-1].to_parquet(second, index=False)
    kept = data_stages.sample_snapshot(str(first), 0.25, 42)
    assert 850 < kept < 1150 and data_stages.sample_snapshot(str(second), 0.25, 42) == kept
    assert set(pd.read_parquet(first)["customer_id"]) == set(pd.read_parquet(second)["customer_id"])
