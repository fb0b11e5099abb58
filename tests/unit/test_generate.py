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


def test_churn_depends_on_contract_and_is_not_deterministic():
    tables = generate(20000, AS_OF, seed=5)
    churned = tables.customers["customer_id"].isin(tables.churn_events["customer_id"])
    by_contract = churned.groupby(tables.customers["contract"].astype(str)).mean()
    assert by_contract["month-to-month"] > by_contract["two_year"] + 0.2
    # not a deterministic function either: some month-to-month customers stay, some two-year ones leave
    assert 0.05 < by_contract["two_year"] < 0.95 and 0.05 < by_contract["month-to-month"] < 0.99
    assert np.isfinite(tables.usage_monthly["minutes"]).all()


def _oracle_with_attributes(tables):
    oracle = tables.oracle.merge(tables.customers, on="customer_id")
    snapshot = oracle["snapshot_date"].iloc[0]
    window = tables.support_contacts[(tables.support_contacts["contact_ts"] < snapshot)
                                     & (tables.support_contacts["contact_ts"] >= snapshot - pd.Timedelta(days=90))
                                     & (tables.support_contacts["kind"] == "complaint")]
    oracle["complaints_90d"] = oracle["customer_id"].map(window.groupby("customer_id").size()).fillna(0)
    oracle["tenure_days"] = (snapshot - oracle["signup_date"]).dt.days
    return oracle


def test_the_documented_non_linear_structure_is_in_the_true_probabilities():
    oracle = _oracle_with_attributes(generate(60000, AS_OF, seed=5))
    p = oracle.groupby(oracle["complaints_90d"].clip(upper=2))["true_probability"].median()
    assert p[2] > 2.5 * p[1] and p[1] < 1.4 * p[0]  # complaints act past a threshold of two
    m2m = oracle[oracle["contract"] == "month-to-month"]
    assert m2m[m2m["tenure_days"] < 180]["true_probability"].median() > \
        2 * m2m[m2m["tenure_days"] > 3 * 365]["true_probability"].median()  # the hazard falls with tenure
    two_year = oracle[oracle["contract"] == "two_year"]
    assert m2m["true_probability"].median() > 3 * two_year["true_probability"].median()
    interaction = oracle.groupby([oracle["senior"], oracle["payment_method"] == "electronic_check"])[
        "true_probability"].median()
    assert interaction[(True, True)] / interaction[(False, True)] > 1.8 > interaction[(True, False)] / \
        interaction[(False, False)]  # senior x electronic check


def test_the_oracle_is_calibrated_and_covers_exactly_the_training_population():
    tables = generate(60000, AS_OF, seed=6)
    oracle = tables.oracle
    snapshot = oracle["snapshot_date"].iloc[0]
    assert snapshot == pd.Timestamp(AS_OF) - pd.Timedelta(days=30)
    customers = tables.customers.merge(tables.churn_events, on="customer_id", how="left")
    population = customers[(customers["signup_date"] <= snapshot)
                           & ~(customers["churn_date"] <= snapshot)]  # NaT (no churn) compares False
    assert set(oracle["customer_id"]) == set(population["customer_id"])
    in_window = population["churn_date"].between(snapshot + pd.Timedelta(days=1), pd.Timestamp(AS_OF))
    labels = oracle.set_index("customer_id")["churned"].reindex(population["customer_id"]).to_numpy()
    assert (labels == in_window.to_numpy().astype(int)).all()  # the oracle's outcome is the label the query reads
    expected, seen = oracle["true_probability"].mean(), oracle["churned"].mean()
    standard_error = np.sqrt(expected * (1 - expected) / len(oracle))
    assert abs(seen - expected) < 4 * standard_error  # the probabilities are the ones churn was drawn from
    assert 0.02 < seen < 0.15


def test_the_oracle_is_no_source_table():
    from churn.data.generate import SOURCE_DDL, TABLE_ORDER

    tables = generate(500, AS_OF, seed=1)
    assert "oracle" not in TABLE_ORDER and set(tables.row_counts()) == set(TABLE_ORDER)
    assert "true_probability" not in SOURCE_DDL
    for name in TABLE_ORDER:
        assert "true_probability" not in getattr(tables, name).columns
