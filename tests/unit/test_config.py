"""Unit tests for the typed config."""

from pathlib import Path

import pytest

from churn.config import ChurnConfig, ConfigError


def test_defaults_work_without_environment():
    cfg = ChurnConfig.from_env({})
    assert cfg.postgres_conn_id == "churn_postgres"
    assert cfg.band_cuts == (0.1, 0.2)
    assert cfg.splits == (0.8, 0.1, 0.1)


def test_environment_overrides_are_typed(tmp_path):
    cfg = ChurnConfig.from_env({
        "CHURN_TRAIN_BUDGET_MINUTES": "0.5", "CHURN_DEMO_CUSTOMERS": "1234", "CHURN_CATCHUP": "yes",
        "CHURN_STATE_DIR": str(tmp_path),
    })
    assert cfg.train_budget_minutes == 0.5 and cfg.demo_customers == 1234 and cfg.catchup is True
    assert cfg.state_dir == Path(tmp_path).resolve()
    assert cfg.runs_dir == Path(tmp_path).resolve() / "runs"


def test_bad_value_names_the_variable():
    with pytest.raises(ConfigError, match="CHURN_DEMO_CUSTOMERS"):
        ChurnConfig.from_env({"CHURN_DEMO_CUSTOMERS": "many"})
    with pytest.raises(ConfigError, match="CHURN_RISK_BAND_CUTS"):
        _ = ChurnConfig.from_env({"CHURN_RISK_BAND_CUTS": "0.7,0.2"}).band_cuts
    with pytest.raises(ConfigError, match="CHURN_SPLIT_FRACTIONS"):
        _ = ChurnConfig.from_env({"CHURN_SPLIT_FRACTIONS": "0.5,0.1"}).splits


@pytest.mark.parametrize("var, raw, message", [
    ("CHURN_REDIS_LAYOUT", "xml", "CHURN_REDIS_LAYOUT='xml' is not allowed; use one of compact, json, hash"),
    ("CHURN_SOURCE", "s3", "use one of postgres, file"),
    ("CHURN_RISK_BAND_CUTS", "high,low", "CHURN_RISK_BAND_CUTS='high,low' must be ascending numbers in (0, 1)"),
    ("CHURN_RISK_BAND_CUTS", "0.6,0.3", "must be ascending"),
    ("CHURN_SPLIT_FRACTIONS", "0.5,0.5", "CHURN_SPLIT_FRACTIONS='0.5,0.5' must be three positive fractions"),
    ("CHURN_SCORE_PARTITIONS", "0", "CHURN_SCORE_PARTITIONS=0 is out of range: it must be between 1 and 256"),
    ("CHURN_MAX_BAD_ROW_FRACTION", "1.5", "CHURN_MAX_BAD_ROW_FRACTION=1.5 is out of range"),
    ("CHURN_POSTGRES_PORT", "70000", "between 1 and 65535"),
    ("CHURN_INGEST_CHUNK_ROWS", "-5", "at least 1"),
])
def test_bad_choices_and_ranges_name_the_variable_and_the_allowed_values(var, raw, message):
    with pytest.raises(ConfigError) as caught:
        ChurnConfig.from_env({var: raw})
    assert message in str(caught.value)


def test_per_run_overrides_are_checked_too():
    with pytest.raises(ConfigError, match="CHURN_SCORE_PARTITIONS=0"):
        ChurnConfig().replace(score_partitions=0)


def test_docs_configuration_reference_is_generated_from_the_config_class():
    import importlib.util

    from churn.config_docs import markdown_table
    from tests.support import REPO_ROOT

    table = markdown_table()
    assert table.count("\n| CHURN_") == len(ChurnConfig.model_fields)  # every field, with its doc
    assert "|  |" not in table  # no field without documentation
    # The docs site's configuration reference is built from the same rows (docs/hooks/generate.py), so it
    # cannot drift: the page holds the hook's marker, and the hook renders every field's default and doc.
    page = (REPO_ROOT / "docs" / "reference" / "configuration.md").read_text()
    assert "<!-- generated: configuration -->" in page
    spec = importlib.util.spec_from_file_location("docs_hook", REPO_ROOT / "docs" / "hooks" / "generate.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    generated = hook.configuration_reference()
    for row in table.splitlines()[2:]:
        var, default, _meaning = row.strip("| ").split(" | ", 2)
        assert f"| `{var}` | {default} |" in generated, f"{var} missing from the configuration reference"
