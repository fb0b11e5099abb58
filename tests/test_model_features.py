"""Unit: the model's input signature is enforced at scoring, naming the offending column."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from churn.model.features import ModelSignature, SignatureMismatch, build_preprocessor, labels, to_model_input


def frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """A small feature frame with the platform's column kinds (some numeric values missing)."""
    rng = np.random.default_rng(seed)
    out = pd.DataFrame({
        "customer_id": [f"C{i:06d}" for i in range(n)],
        "contract": rng.choice(["monthly", "annual", "two_year"], n),
        "region": rng.choice(["north", "south"], n),
        "senior": rng.random(n) < 0.2,
        "monthly_charge": rng.normal(60, 20, n),
        "tenure_days": rng.integers(0, 2000, n).astype(float),
    })
    out.loc[rng.random(n) < 0.1, "tenure_days"] = np.nan
    logit = (out["contract"] == "monthly") * 1.5 + (out["monthly_charge"] - 60) / 20 - 1
    out["churned"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype("int8")
    return out


def signature(train: pd.DataFrame) -> ModelSignature:
    return ModelSignature.infer(train, "customer_id", "churned", ["monthly_charge", "tenure_days"], ["senior"],
                                ["contract", "region"])


def test_signature_roundtrips_and_lists_categories_seen_in_training():
    sig = signature(frame())
    assert ModelSignature.from_dict(sig.as_dict()) == sig
    assert sig.categorical == {"contract": ["annual", "monthly", "two_year"], "region": ["north", "south"]}
    assert sig.feature_columns == ["monthly_charge", "tenure_days", "senior", "contract", "region"]


def test_missing_column_is_named():
    sig = signature(frame())
    with pytest.raises(SignatureMismatch, match="tenure_days"):
        sig.enforce(frame().drop(columns=["tenure_days"]))


def test_non_numeric_column_is_named():
    sig = signature(frame())
    bad = frame()
    bad["monthly_charge"] = bad["monthly_charge"].astype(str)
    bad.loc[3, "monthly_charge"] = "sixty"
    with pytest.raises(SignatureMismatch, match="'monthly_charge' must be numeric"):
        sig.enforce(bad)


def test_boolean_column_of_text_is_named():
    sig = signature(frame())
    bad = frame()
    bad["senior"] = np.where(bad["senior"], "yes", "no")
    with pytest.raises(SignatureMismatch, match="'senior' must be boolean"):
        sig.enforce(bad)


def test_unseen_category_is_named_with_the_value():
    sig = signature(frame())
    bad = frame()
    bad.loc[5, "region"] = "atlantis"
    with pytest.raises(SignatureMismatch, match=r"'region' has categories \['atlantis'\]"):
        sig.enforce(bad)
    # a tolerated share of unknown categories passes and is one-hot encoded as all zeros
    assert len(sig.enforce(bad, max_unknown_fraction=0.01)) == len(bad)


def test_enforce_keeps_id_and_features_in_training_order_and_ignores_extra_columns():
    sig = signature(frame())
    extra = frame().assign(unrelated=1)[::-1]
    out = sig.enforce(extra)
    assert list(out.columns) == ["customer_id", *sig.feature_columns]
    assert out["monthly_charge"].dtype == float and out["senior"].dtype == float


def test_preprocessing_travels_with_the_model_so_serving_equals_training():
    train = frame(600, seed=1)
    sig = signature(train)
    prep = build_preprocessor(sig)
    fitted = prep.fit_transform(to_model_input(train, sig))
    # scoring path: enforce() on a column-shuffled copy, then the same fitted transform
    served = prep.transform(sig.enforce(train[train.columns[::-1]])[sig.feature_columns])
    np.testing.assert_array_equal(fitted, served)
    # median imputation + a missing flag column for tenure_days, one-hot for 3 + 2 categories
    assert fitted.shape == (600, 2 + 1 + 1 + 3 + 2)
    assert not np.isnan(fitted).any()
    assert set(labels(train, sig)) == {0, 1}
