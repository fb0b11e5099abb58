"""Model input signature and the scikit-learn preprocessing saved inside every model.

The preprocessing is fitted in training and travels inside the artifact, so
scoring applies exactly the transform the model was trained with. The signature
(column names, kinds, allowed categories) is saved with the model and enforced
before scoring: a mismatch fails with a message naming the column.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # scikit-learn is imported where it is used: the registry CLI must start fast
    from sklearn.compose import ColumnTransformer


class SignatureMismatch(ValueError):
    """Scoring input does not match the model's training signature."""


@dataclass
class ModelSignature:
    """Columns a model expects, with their kinds and the categories seen in training."""

    id_column: str
    label_column: str
    numeric: list[str]
    boolean: list[str]
    categorical: dict[str, list[str]] = field(default_factory=dict)

    @property
    def feature_columns(self) -> list[str]:
        """All input columns, in the order the preprocessor expects."""
        return [*self.numeric, *self.boolean, *self.categorical]

    def as_dict(self) -> dict:
        """JSON-able form stored in the registry."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelSignature":
        """Inverse of ``as_dict``."""
        return cls(**data)

    @classmethod
    def infer(cls, frame: pd.DataFrame, id_column: str, label_column: str, numeric: list[str], boolean: list[str],
              categorical: list[str]) -> "ModelSignature":
        """Signature of a training frame: categories are the values seen in it."""
        cats = {c: sorted(str(v) for v in frame[c].dropna().unique()) for c in categorical}
        return cls(id_column, label_column, list(numeric), list(boolean), cats)

    def enforce(self, frame: pd.DataFrame, max_unknown_fraction: float = 0.0) -> pd.DataFrame:
        """Check and coerce a scoring frame; raises SignatureMismatch naming the column."""
        missing = [c for c in [self.id_column, *self.feature_columns] if c not in frame.columns]
        if missing:
            raise SignatureMismatch(f"scoring input lacks column(s) {missing} that the model was trained with")
        out = frame[[self.id_column, *self.feature_columns]].copy()
        for column in self.numeric:
            try:
                out[column] = pd.to_numeric(out[column], errors="raise").astype(float)
            except (ValueError, TypeError) as exc:
                raise SignatureMismatch(f"column '{column}' must be numeric: {exc}") from exc
        for column in self.boolean:
            if not (pd.api.types.is_bool_dtype(out[column]) or pd.api.types.is_numeric_dtype(out[column])):
                raise SignatureMismatch(f"column '{column}' must be boolean, got {out[column].dtype}")
            out[column] = out[column].astype(float)
        for column, allowed in self.categorical.items():
            values = out[column].astype("str")
            unknown = ~values.isin(allowed) & out[column].notna()
            if unknown.mean() > max_unknown_fraction:
                examples = sorted(set(values[unknown].head(5)))
                raise SignatureMismatch(
                    f"column '{column}' has categories {examples} unseen in training (allowed: {allowed})"
                )
            out[column] = values.astype(object)
        return out


def build_preprocessor(signature: ModelSignature) -> ColumnTransformer:
    """Median-impute + missing flags + scale numerics, one-hot categoricals (unknown categories ignored)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import MissingIndicator, SimpleImputer
    from sklearn.pipeline import FeatureUnion, Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    # The missing flags are a separate MissingIndicator (not SimpleImputer(add_indicator=True)) because
    # skl2onnx cannot convert add_indicator; churn.model.export registers a converter for MissingIndicator.
    numeric = Pipeline([
        ("impute", FeatureUnion([
            ("median", SimpleImputer(strategy="median")),
            ("missing", MissingIndicator(features="missing-only", error_on_new=False)),
        ])),
        ("scale", StandardScaler()),
    ])
    return ColumnTransformer(
        [
            ("num", numeric, signature.numeric + signature.boolean),
            (
                "cat",
                OneHotEncoder(
                    categories=[signature.categorical[c] for c in signature.categorical],
                    handle_unknown="ignore",
                    sparse_output=False,
                ),
                list(signature.categorical),
            ),
        ],
        sparse_threshold=0.0,
    )


def to_model_input(frame: pd.DataFrame, signature: ModelSignature) -> pd.DataFrame:
    """Feature columns only, numeric/boolean as float, categoricals as plain strings."""
    out = frame[signature.feature_columns].copy()
    for column in signature.numeric + signature.boolean:
        out[column] = out[column].astype(float)
    for column in signature.categorical:
        out[column] = out[column].astype("str").astype(object)
    return out


def labels(frame: pd.DataFrame, signature: ModelSignature) -> np.ndarray:
    """Target vector as 0/1 integers."""
    return frame[signature.label_column].astype(int).to_numpy()
