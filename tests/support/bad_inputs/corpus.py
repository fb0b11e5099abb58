"""Generate the bad-input corpus: a clean Telco-shaped export plus one file per kind of damage.

Files are generated (deterministically) rather than checked in so that the corpus
stays small in the repo and every kind is documented next to the code that makes it.
``KINDS`` lists them; ``write_corpus(folder)`` writes ``<kind>.csv`` for each.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ["customerID", "gender", "SeniorCitizen", "Partner", "Dependents", "tenure", "PhoneService",
           "MultipleLines", "InternetService", "OnlineSecurity", "OnlineBackup", "DeviceProtection", "TechSupport",
           "StreamingTV", "StreamingMovies", "Contract", "PaperlessBilling", "PaymentMethod", "MonthlyCharges",
           "TotalCharges", "Churn"]
USUAL_ROWS = 200

# Configuration (CHURN_* variables) for the corpus: the Telco file-source settings.
TELCO_ENV = {
    "CHURN_SOURCE": "file",
    "CHURN_ID_COLUMN": "customerID",
    "CHURN_LABEL_COLUMN": "Churn",
    "CHURN_LABEL_VALUES": "Yes:1,No:0",
    "CHURN_NUMERIC_COLUMNS": "tenure,MonthlyCharges,TotalCharges",
    "CHURN_BOOLEAN_COLUMNS": "SeniorCitizen,Partner,Dependents,PhoneService,PaperlessBilling",
    "CHURN_CATEGORICAL_COLUMNS": "gender,MultipleLines,InternetService,OnlineSecurity,OnlineBackup,"
                                      "DeviceProtection,TechSupport,StreamingTV,StreamingMovies,Contract,PaymentMethod",
    "CHURN_SUITE": "telco_churn",
    "CHURN_RISK_BAND_CUTS": "0.3,0.6",  # 26 % churn: the defaults (0.1,0.2) fit a ~5 % rate
}


def clean_frame(rows: int = USUAL_ROWS, seed: int = 3, start: int = 0) -> pd.DataFrame:
    """A valid Telco-shaped export of ``rows`` customers (ids C000000, C000001, ...)."""
    rng = np.random.default_rng(seed)
    yes_no = np.array(["Yes", "No"])
    inet = np.array(["Yes", "No", "No internet service"])
    tenure = rng.integers(1, 73, rows)
    monthly = rng.uniform(18, 119, rows).round(2)
    frame = pd.DataFrame({
        "customerID": [f"C{start + i:06d}" for i in range(rows)],
        "gender": rng.choice(["Female", "Male"], rows),
        "SeniorCitizen": rng.choice(["0", "1"], rows),
        "Partner": rng.choice(yes_no, rows), "Dependents": rng.choice(yes_no, rows),
        "tenure": tenure.astype(str),
        "PhoneService": rng.choice(yes_no, rows),
        "MultipleLines": rng.choice(["Yes", "No", "No phone service"], rows),
        "InternetService": rng.choice(["DSL", "Fiber optic", "No"], rows),
        **{c: rng.choice(inet, rows) for c in ["OnlineSecurity", "OnlineBackup", "DeviceProtection", "TechSupport",
                                               "StreamingTV", "StreamingMovies"]},
        "Contract": rng.choice(["Month-to-month", "One year", "Two year"], rows),
        "PaperlessBilling": rng.choice(yes_no, rows),
        "PaymentMethod": rng.choice(["Electronic check", "Mailed check", "Bank transfer (automatic)",
                                     "Credit card (automatic)"], rows),
        "MonthlyCharges": monthly.astype(str),
        "TotalCharges": (monthly * tenure).round(2).astype(str),
        "Churn": rng.choice(yes_no, rows, p=[0.3, 0.7]),
    })
    return frame[COLUMNS]


def _csv(frame: pd.DataFrame, path: Path, **kwargs) -> Path:
    frame.to_csv(path, index=False, **kwargs)
    return path


def write_corpus(folder: str | Path) -> dict[str, Path]:
    """Write every kind of bad input (plus ``clean``) into ``folder``; returns kind -> path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = clean_frame()
    out: dict[str, Path] = {"clean": _csv(base, folder / "clean.csv")}

    (folder / "empty.csv").write_bytes(b"")
    out["empty"] = folder / "empty.csv"
    out["header_only"] = _csv(base.iloc[:0], folder / "header_only.csv")
    out["missing_column"] = _csv(base.drop(columns=["MonthlyCharges"]), folder / "missing_column.csv")
    out["extra_columns"] = _csv(base.assign(loyalty_tier="gold", notes="n/a"), folder / "extra_columns.csv")
    out["wrong_delimiter"] = _csv(base, folder / "wrong_delimiter.csv", sep=";")

    latin = base.copy()
    latin.loc[5, "gender"] = "Fémale"  # written as latin-1: the byte 0xE9 is not valid UTF-8
    latin.to_csv(folder / "non_utf8.csv", index=False, encoding="latin-1")
    out["non_utf8"] = folder / "non_utf8.csv"

    (folder / "bom.csv").write_bytes(b"\xef\xbb\xbf" + base.to_csv(index=False).encode("utf-8"))
    out["bom"] = folder / "bom.csv"

    text = base.copy()
    text.loc[[1, 2], "TotalCharges"] = " "      # blanks, as in the real Telco file: missing, not bad
    text.loc[3, "TotalCharges"] = "abc"         # text that is no number: quarantined
    text.loc[4, "MonthlyCharges"] = "1,234.5"   # thousands separator: not a number either
    out["numbers_as_text"] = _csv(text, folder / "numbers_as_text.csv", quoting=1)  # every value quoted

    negative = base.copy()
    negative.loc[[7, 8], "tenure"] = "-3"
    out["negative_tenure"] = _csv(negative, folder / "negative_tenure.csv")

    unknown = base.copy()
    unknown.loc[9, "Contract"] = "Three year"
    out["unknown_category"] = _csv(unknown, folder / "unknown_category.csv")

    dupes = base.copy()
    dupes.loc[11, "customerID"] = dupes.loc[10, "customerID"]
    out["duplicate_ids"] = _csv(dupes, folder / "duplicate_ids.csv")

    null_ids = base.copy()
    null_ids.loc[[12, 13], "customerID"] = ""
    out["null_ids"] = _csv(null_ids, folder / "null_ids.csv")

    labels = base.copy()
    labels.loc[14, "Churn"] = "Maybe"
    labels.loc[15, "Churn"] = ""
    out["label_outside_set"] = _csv(labels, folder / "label_outside_set.csv")

    mostly_bad = base.copy()
    mostly_bad.loc[: USUAL_ROWS // 4, "Contract"] = "Lifetime"  # 25% bad rows: above the 5% threshold
    out["too_many_bad_rows"] = _csv(mostly_bad, folder / "too_many_bad_rows.csv")
    return out


def write_big(path: str | Path, factor: int = 1000, rows: int = USUAL_ROWS) -> int:
    """Write a file ``factor`` times the usual size (unique ids), appending block by block; returns rows."""
    path = Path(path)
    block = clean_frame(rows)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        for i in range(factor):
            block["customerID"] = [f"B{i:05d}{j:04d}" for j in range(rows)]
            block.to_csv(handle, index=False, header=i == 0)
    return factor * rows
