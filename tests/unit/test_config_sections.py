"""Configuration in sections, with names that say what they drive (issue 22 item 5)."""

from __future__ import annotations

import pytest

from churn.config import RENAMED, ChurnConfig, ConfigError, DevSettings, SourceSettings


def test_every_setting_is_in_exactly_one_section():
    sections = ChurnConfig.sections()
    assert list(sections) == ["platform", "source", "train", "publish", "rescore", "monitoring", "export", "experiments",
                             "dev"]
    names = [n for fields in sections.values() for n in fields]
    assert sorted(names) == sorted(ChurnConfig.model_fields) and len(names) == len(set(names))
    # the embedded default's ports, local workers and demo data live apart from the product's settings
    assert {"postgres_port", "redis_port", "airflow_port", "celery_workers", "dask_workers", "demo_customers"} \
        <= set(sections["dev"]) == set(DevSettings.model_fields)
    assert "dask_scheduler_address" in sections["train"]  # a production setting: the shared Dask cluster


def test_renamed_settings_accept_the_old_and_the_new_name():
    new = {name: f"value_{name}" for name in RENAMED}
    from_new_env = ChurnConfig.from_env({f"CHURN_{name.upper()}": value for name, value in new.items()})
    from_old_env = ChurnConfig.from_env({f"CHURN_{old.upper()}": new[name] for name, old in RENAMED.items()})
    from_old_kwargs = ChurnConfig(**{old: new[name] for name, old in RENAMED.items()})
    for cfg in (from_new_env, from_old_env, from_old_kwargs, ChurnConfig(**new)):
        assert {name: getattr(cfg, name) for name in RENAMED} == new
    assert set(RENAMED) <= set(SourceSettings.model_fields)  # they drive the SQL source too, not only files


def test_a_bad_old_name_is_reported_under_the_name_used():
    with pytest.raises(ConfigError, match="CHURN_FILE_ID_COLUMN=.*not a valid str"):
        ChurnConfig(file_id_column=["a", "list"])


def test_per_run_overrides_take_old_names_too():
    cfg = ChurnConfig(id_column="cust").replace(file_label_column="Exited")
    assert (cfg.id_column, cfg.label_column) == ("cust", "Exited")


def test_only_churn_variables_are_read():
    cfg = ChurnConfig.from_env({"SUITE": "ci", "ID_COLUMN": "x", "FILE_ID_COLUMN": "y", "CHURN_ID_COLUMN": "acct"})
    assert (cfg.id_column, cfg.suite) == ("acct", ChurnConfig().suite)


def test_old_and_new_names_that_disagree_are_refused():
    with pytest.raises(ConfigError, match="CHURN_NUMERIC_COLUMNS=''.*CHURN_FILE_NUMERIC_COLUMNS='a,b' disagree"):
        ChurnConfig.from_env({"CHURN_NUMERIC_COLUMNS": "", "CHURN_FILE_NUMERIC_COLUMNS": "a,b"})
    with pytest.raises(ConfigError, match="disagree"):
        ChurnConfig().replace(label_column="a", file_label_column="b")
    assert ChurnConfig.from_env({"CHURN_SUITE": "s", "CHURN_FILE_SUITE": "s"}).suite == "s"  # agreeing is fine


def test_a_per_run_override_leaves_the_other_settings_unset():
    """Settings left at their defaults stay so after a trigger-form override (the CSV format is then detected)."""
    cfg = ChurnConfig.from_env({"CHURN_SOURCE": "file", "CHURN_FILE_PATH": "x.csv"})
    again = cfg.replace(train_budget_minutes=1.0)
    assert again.model_fields_set == {"source", "file_path", "train_budget_minutes"}
    assert "file_delimiter" not in again.model_fields_set and again.file_delimiter == ","
