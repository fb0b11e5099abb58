"""Unit tests for the synthetic generator: determinism, schema, nothing from the future, signal."""

from datetime import date

import numpy as np
import pandas as pd

from churn.data.generate import generate

AS_OF = date(2026, 11, 20)


def test_same_seed_same_data_other_seed_other_data():
    first, second, other = generate(2000, AS_OF, seed=3), generate(2000, AS_OF, seed=3), generate(2000, AS_OF, seed=4)
    for name in ("customers", "churn_events", "usage_monthly", "support_contacts"):
        pd.testing.assert_frame_equal(getattr(first, name), getattr(second, name))
    assert not first.customers["monthly_charge"].equals(other.customers["monthly_charge"])


def test_schema_and_keys():
    tables = generate(3000, AS_OF, seed=1)
    customers = tables.customers
    assert list(customers.columns) == [
        "customer_id", "signup_date", "contract", "plan", "monthly_charge", "region", "payment_method",
        "paperless_billing", "senior", "num_lines", "email",
    ]
    assert customers["customer_id"].is_unique and customers["customer_id"].iloc[0] == "C00000001"
    assert set(customers["contract"]) <= {"month-to-month", "one_year", "two_year"}
    assert (customers["monthly_charge"] > 0).all()
    assert set(tables.churn_events["customer_id"]) <= set(customers["customer_id"])
    assert not tables.usage_monthly.duplicated(["customer_id", "month"]).any()


def test_nothing_is_dated_after_as_of():
    tables = generate(3000, AS_OF, seed=2)
    limit = pd.Timestamp(AS_OF)
    assert (tables.customers["signup_date"] < limit).all()
    assert (tables.churn_events["churn_date"] <= limit).all()
    assert (tables.support_contacts["contact_ts"] < limit).all()
    assert (tables.usage_monthly["month"] < limit).all()


def test_churn_depends_on_behaviour_and_contract():
    tables = generate(20000, AS_OF, seed=5)
    churned = tables.customers["customer_id"].isin(tables.churn_events["customer_id"])
    by_contract = churned.groupby(tables.customers["contract"].astype(str)).mean()
    assert by_contract["month-to-month"] > by_contract["two_year"] + 0.2
    # complaints per active day in the last year: customers who left in it complained more than those who stay
    complaints = tables.support_contacts[tables.support_contacts["kind"] == "complaint"]
    per_customer = complaints.groupby("customer_id").size()
    window_start = pd.Timestamp(AS_OF) - pd.Timedelta(days=365)
    events = tables.churn_events.set_index("customer_id")["churn_date"]
    recent = events[events > window_start]
    leavers_days = (recent - np.maximum(window_start, tables.customers.set_index("customer_id")
                                        .loc[recent.index, "signup_date"])).dt.days.clip(lower=1)
    leavers_rate = per_customer.reindex(recent.index, fill_value=0).sum() / leavers_days.sum()
    stayers = tables.customers.loc[~churned.to_numpy()].set_index("customer_id")
    stayer_days = (pd.Timestamp(AS_OF) - np.maximum(window_start, stayers["signup_date"])).dt.days.clip(lower=1)
    stayers_rate = per_customer.reindex(stayers.index, fill_value=0).sum() / stayer_days.sum()
    assert leavers_rate > 1.5 * stayers_rate
    # not a deterministic function either: some month-to-month customers stay, some two-year ones leave
    assert 0.05 < by_contract["two_year"] < 0.95 and 0.05 < by_contract["month-to-month"] < 0.99
    assert np.isfinite(tables.usage_monthly["minutes"]).all()
