"""Shared datasets next to the checkout (``../shared/datasets``): the Telco file and its configuration."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import REPO_ROOT
from tests.support.bad_inputs.corpus import TELCO_ENV as CORPUS_TELCO_ENV

TELCO = REPO_ROOT.parent / "shared" / "datasets" / "telco_customer_churn.csv"
# Exactly the variables README's "Data stage" section documents for this file (the corpus's Telco settings).
TELCO_ENV = {**CORPUS_TELCO_ENV, "CHURN_FILE_PATH": "../shared/datasets/telco_customer_churn.csv"}


def require_dataset(path: Path) -> None:
    """Skip a test whose shared dataset is missing, except in CI (``CI=true``), where it is a failure."""
    if path.exists():
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{path} is missing and CI=true: a missing dataset fails the run in CI instead of "
                    "skipping; put ../shared/datasets next to the checkout")
    pytest.skip(f"{path} not present (outside CI the Telco tests are skipped)")
