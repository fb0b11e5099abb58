"""The test tiers are folders; each test is marked with its folder's tier (markers are registered in pyproject.toml).

tests/unit         no server, no Airflow metadata database: pure Python, pandas, scikit-learn
tests/integration  real Postgres/Redis/SFTP/SMTP started by fixtures; no DAG run
tests/e2e          a DAG run through Airflow (``airflow dags test``)
tests/scheduler    real Airflow components (scheduler, dag-processor, api-server, workers) as processes
tests/browser      the Airflow UI in headless Chromium

Shared helpers live in ``tests/support``; the server fixtures only in the server tiers' conftest files.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "integration", "e2e", "scheduler", "browser")


def tier_of(path: Path) -> str | None:
    """The tier folder ``path`` is in (None outside tests/<tier>/)."""
    try:
        first = Path(path).resolve().relative_to(TESTS).parts[0]
    except (ValueError, IndexError):
        return None
    return first if first in TIERS else None


@pytest.fixture(scope="module")
def churn_ui():
    """plugins/churn_ui.py as a module (no server: the unit and integration tiers both use it)."""
    from tests.support.churn_ui import load_plugin

    return load_plugin("churn_ui_under_test")


@pytest.fixture
def snapshot(tmp_path):
    """A 5,000-row snapshot parquet (two missing tenures) and its frame, for the streamed-access tests."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 5000
    frame = pd.DataFrame({
        "customer_id": [f"C{i:07d}" for i in range(n)],
        "tenure": rng.integers(0, 100, n).astype(float),
        "plan": rng.choice(["basic", "plus", "pro"], n),
        "churned": rng.integers(0, 2, n).astype("int8"),
    })
    frame.loc[[3, 4000], "tenure"] = np.nan
    path = tmp_path / "snap.parquet"
    frame.to_parquet(path, index=False)
    return path, frame


def pytest_collection_modifyitems(config, items) -> None:
    """Mark every test with its folder's tier, so ``-m unit`` (or ``-m 'not browser'``) selects by tier."""
    for item in items:
        tier = tier_of(item.path)
        if tier:
            item.add_marker(getattr(pytest.mark, tier))
