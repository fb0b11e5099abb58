"""Unit tests for the typed config."""

from pathlib import Path

import pytest

from churn.config import ChurnConfig, ConfigError


def test_defaults_work_without_environment():
    cfg = ChurnConfig.from_env({})
    assert cfg.postgres_conn_id == "churn_postgres"
    assert cfg.band_cuts == (0.3, 0.6)
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
