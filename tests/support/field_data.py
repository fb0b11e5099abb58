"""Files as users deliver them: a bank-churn export with dirty cells, a spreadsheet export with spaced headers.

The bank file has the columns of the public 10,000-row "Churn_Modelling.csv" (``RowNumber``, a numeric
``CustomerId``, ``Surname`` ...; label ``Exited`` as 0/1) with the churn signal of that data (age, activity,
products, country); values are generated (seeded), the shape and the dirt are the real file's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from churn.data.sources import parse_missing

# Cells replaced by '?' in the bank file: (column, how many), as issue 26 reproduced them.
BANK_DIRT = (("CreditScore", 1), ("EstimatedSalary", 2), ("NumOfProducts", 3), ("Tenure", 1), ("HasCrCard", 1),
             ("Exited", 1))


def bank_churn(rows: int = 10_000, seed: int = 0, first_id: int = 15_565_701, dirty: bool = True) -> pd.DataFrame:
    """A bank-churn table (every cell as text) with a learnable ``Exited`` and, if ``dirty``, ``?`` cells."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, rows)
    active = rng.integers(0, 2, rows)
    products = rng.choice([1, 2, 3, 4], rows, p=[0.5, 0.45, 0.04, 0.01])
    geography = rng.choice(["France", "Spain", "Germany"], rows, p=[0.5, 0.25, 0.25])
    balance = np.where(rng.random(rows) < 0.35, 0.0, rng.normal(120_000, 30_000, rows).round(2))
    logit = -3.2 + 0.06 * (age - 38) - 0.9 * active + 1.6 * (products >= 3) + 0.7 * (geography == "Germany")
    exited = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    frame = pd.DataFrame({
        "RowNumber": np.arange(1, rows + 1),
        "CustomerId": rng.permutation(np.arange(first_id, first_id + 4 * rows))[:rows],
        "Surname": rng.choice([f"Name{i}" for i in range(2_900)], rows),
        "CreditScore": rng.integers(350, 851, rows),
        "Geography": geography,
        "Gender": rng.choice(["Female", "Male"], rows),
        "Age": age,
        "Tenure": rng.integers(0, 11, rows),
        "Balance": balance,
        "NumOfProducts": products,
        "HasCrCard": rng.integers(0, 2, rows),
        "IsActiveMember": active,
        "EstimatedSalary": rng.uniform(11.58, 199_992.48, rows).round(2),
        "Exited": exited,
    }).astype(str)
    if dirty:
        spots = rng.choice(np.arange(10, rows), sum(n for _, n in BANK_DIRT), replace=False)
        at = 0
        for column, count in BANK_DIRT:
            frame.loc[spots[at:at + count], column] = "?"
            at += count
    return frame


def write_csv(frame: pd.DataFrame, path: Path, *, sep: str = ",", line_end: str = "\n") -> Path:
    """Write ``frame`` as CSV text with the given delimiter and line ending."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(frame.to_csv(index=False, sep=sep, lineterminator=line_end))
    return path


def spreadsheet_churn(rows: int = 3_000, seed: int = 0) -> pd.DataFrame:
    """A spreadsheet export: headers with spaces, punctuation, non-ASCII and a leading digit; ``yes``/``no`` label."""
    rng = np.random.default_rng(seed)
    day = rng.normal(180, 50, rows).clip(0).round(1)
    calls = rng.poisson(1.5, rows)
    plan = rng.choice(["yes", "no"], rows, p=[0.1, 0.9])
    logit = -2.6 + 0.012 * (day - 180) + 0.55 * (calls - 1.5) + 1.2 * (plan == "yes")
    churn = np.where(rng.random(rows) < 1 / (1 + np.exp(-logit)), "yes", "no")
    return pd.DataFrame({
        "Phone number": [f"{rng.integers(300, 999)}-{i:07d}" for i in range(rows)],
        "Account length": rng.integers(1, 240, rows),
        "Total day minutes": day,
        "Total day-minutes": (day * 0.17).round(2),  # collides with the previous one once cleaned
        "Customer service calls": calls,
        "International plan": plan,
        "Région": rng.choice(["Île-de-France", "Bretagne", "Occitanie"], rows),
        "2nd line": rng.choice(["yes", "no"], rows),
        "Churn?": churn,
    }).astype(str)


# The missing-value markers the field files use ("?" in the bank file).
MISSING = parse_missing("?,NA,N/A,-,null,NaN,#N/A")


def bank_env(path: Path, state: Path, **extra: str) -> dict[str, str]:
    """The four settings a new user sets for the bank file (plus test-speed ones)."""
    return {"CHURN_SOURCE": "file", "CHURN_FILE_PATH": str(path), "CHURN_ID_COLUMN": "CustomerId",
            "CHURN_LABEL_COLUMN": "Exited", "CHURN_STATE_DIR": str(state), "CHURN_TRAIN_TPOT": "false",
            "CHURN_EXPORT_PMML": "false", **extra}
