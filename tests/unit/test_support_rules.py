"""The test suite's own rules: a missing shared dataset is a failure in CI, a skip elsewhere."""

from __future__ import annotations

import pytest

from tests.support.datasets import require_dataset


def test_missing_dataset_fails_in_ci(monkeypatch, tmp_path):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_dataset(tmp_path / "missing.csv")


def test_missing_dataset_skips_outside_ci(monkeypatch, tmp_path):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not present"):
        require_dataset(tmp_path / "missing.csv")
    present = tmp_path / "there.csv"
    present.write_text("a\n1\n")
    require_dataset(present)  # no exception when the file is there


def test_every_test_has_a_timeout(pytestconfig):
    assert float(pytestconfig.getini("timeout")) > 0, "pytest-timeout must bound every test"
