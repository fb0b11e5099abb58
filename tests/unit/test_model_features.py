"""Unit: the model's input signature is enforced at scoring, naming the offending column."""

from __future__ import annotations

import numpy as np
import pytest

from churn.model.features import ModelSignature, SignatureMismatch, build_preprocessor, labels, to_model_input
from tests.support.model_frames import frame, signature


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
