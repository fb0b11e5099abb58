"""Synthetic, deterministic, vectorized demo population with a learnable churn signal.

Each customer has a latent satisfaction and a monthly churn hazard driven by
contract, charge, payment method, seniority and satisfaction. Churn dates are
drawn from that hazard; usage falls and complaints rise in the weeks before a
customer leaves, so behaviour carries real (but noisy) signal. Everything is
numpy-vectorized: no Python loop runs per customer.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

log = logging.getLogger(__name__)

CONTRACTS = np.array(["month-to-month", "one_year", "two_year"])
PLANS = np.array(["basic", "standard", "premium"])
REGIONS = np.array(["north", "south", "east", "west", "central"])
PAYMENT_METHODS = np.array(["credit_card", "bank_transfer", "electronic_check", "mailed_check"])
CONTACT_KINDS = np.array(["question", "technical", "complaint"])
EPOCH = np.datetime64("1970-01-01", "D")


@dataclass(frozen=True)
class SourceTables:
    """The four source tables as data frames."""

    customers: pd.DataFrame
    churn_events: pd.DataFrame
    usage_monthly: pd.DataFrame
    support_contacts: pd.DataFrame

    def row_counts(self) -> dict[str, int]:
        """Rows per table."""
        return {name: len(getattr(self, name)) for name in ("customers", "churn_events", "usage_monthly", "support_contacts")}


def customer_ids(n: int, start: int = 0) -> pa.Array:
    """Stable string ids ``C00000001`` ... for row positions (Arrow strings: fast to build and take)."""
    numbers = pc.cast(pa.array(np.arange(start + 1, start + n + 1)), pa.string())
    return pc.binary_join_element_wise("C", pc.utf8_lpad(numbers, 8, "0"), "")


def _labels(categories: np.ndarray, codes: np.ndarray) -> pd.Categorical:
    """Low-cardinality text column from integer codes, without building a string per row."""
    return pd.Categorical.from_codes(codes, categories=pd.Index(categories, dtype="str"))


def _take(ids: pa.Array, positions: np.ndarray) -> pd.Series:
    return ids.take(pa.array(positions)).to_pandas()


def generate(n_customers: int, as_of: date, seed: int = 7, usage_months: int = 6) -> SourceTables:
    """Generate the source tables as they would look on ``as_of`` (nothing dated after it)."""
    if n_customers <= 0:
        raise ValueError("n_customers must be positive")
    rng = np.random.default_rng(seed)
    n = n_customers
    as_of_day = np.datetime64(as_of, "D")

    # --- static attributes ---------------------------------------------------
    contract_idx = rng.choice(3, size=n, p=[0.55, 0.25, 0.20])
    plan_idx = rng.choice(3, size=n, p=[0.4, 0.4, 0.2])
    region_idx = rng.integers(0, len(REGIONS), size=n)
    pay_idx = rng.choice(4, size=n, p=[0.3, 0.25, 0.3, 0.15])
    senior = rng.random(n) < 0.16
    paperless = rng.random(n) < 0.6
    num_lines = 1 + rng.poisson(0.6, size=n)
    base_charge = np.array([29.0, 59.0, 99.0])[plan_idx] + 12.0 * (num_lines - 1)
    monthly_charge = np.round(base_charge * rng.lognormal(0.0, 0.12, size=n), 2)
    satisfaction = rng.normal(0.0, 1.0, size=n)  # latent: never written, only its effects are
    signup_offset = (rng.random(n) ** 1.3 * 6 * 365).astype(np.int64)  # more recent signups than old ones
    signup = as_of_day - signup_offset - 1

    # --- churn hazard -> churn dates ------------------------------------------
    logit = (
        -3.9
        + np.array([1.1, -0.3, -1.3])[contract_idx]
        + 0.012 * (monthly_charge - 60.0)
        + np.array([0.0, -0.1, 0.55, 0.1])[pay_idx]
        + 0.35 * senior
        + 0.2 * paperless
        - 0.75 * satisfaction
    )
    monthly_hazard = 1.0 / (1.0 + np.exp(-logit))
    days_to_churn = rng.exponential(30.0 / monthly_hazard).astype(np.int64) + 1
    churn_day = signup + days_to_churn
    churned = churn_day <= as_of_day

    ids = customer_ids(n)
    customers = pd.DataFrame(
        {
            "customer_id": ids.to_pandas(),
            "signup_date": signup.astype("datetime64[s]"),
            "contract": _labels(CONTRACTS, contract_idx),
            "plan": _labels(PLANS, plan_idx),
            "monthly_charge": monthly_charge,
            "region": _labels(REGIONS, region_idx),
            "payment_method": _labels(PAYMENT_METHODS, pay_idx),
            "paperless_billing": paperless,
            "senior": senior,
            "num_lines": num_lines.astype(np.int16),
            "email": pc.binary_join_element_wise(pc.utf8_lower(ids), "@example.com", "").to_pandas(),
        }
    )
    churn_events = pd.DataFrame(
        {"customer_id": _take(ids, np.flatnonzero(churned)), "churn_date": churn_day[churned].astype("datetime64[s]")}
    )

    # --- monthly usage for the last `usage_months` complete months -----------------
    this_month = np.datetime64(as_of, "M")
    months = np.array([this_month - k for k in range(usage_months, 0, -1)])  # complete months only
    m_start = months.astype("datetime64[D]")
    m_end = (months + 1).astype("datetime64[D]")
    active = (signup[:, None] < m_end[None, :]) & (churn_day[:, None] > m_start[None, :])
    days_before_churn = (churn_day[:, None] - m_end[None, :]).astype(np.int64)
    decline = np.where((days_before_churn >= 0) & (days_before_churn < 75), 0.55, 1.0)
    base_minutes = rng.lognormal(5.6, 0.45, size=n) * np.exp(0.15 * satisfaction)
    noise = rng.lognormal(0.0, 0.2, size=(n, usage_months))
    minutes = base_minutes[:, None] * decline * noise
    data_gb = (np.array([4.0, 12.0, 30.0])[plan_idx][:, None] * decline * rng.lognormal(0.0, 0.3, size=(n, usage_months)))
    dropped = rng.poisson(np.clip(1.5 - 0.5 * satisfaction, 0.1, None)[:, None], size=(n, usage_months))
    row_idx, col_idx = np.nonzero(active)
    usage = pd.DataFrame(
        {
            "customer_id": _take(ids, row_idx),
            "month": m_start[col_idx].astype("datetime64[s]"),
            "minutes": np.round(minutes[row_idx, col_idx], 1),
            "data_gb": np.round(data_gb[row_idx, col_idx], 2),
            "dropped_calls": dropped[row_idx, col_idx].astype(np.int32),
        }
    )

    # --- support contacts over the last 365 days ---------------------------------
    window_start = as_of_day - 365
    start = np.maximum(signup, window_start)
    end = np.minimum(churn_day, as_of_day)
    active_days = np.clip((end - start).astype(np.int64), 0, None)
    rate_per_day = 0.25 / 30.0 * np.exp(-0.6 * satisfaction)
    counts = rng.poisson(rate_per_day * active_days)
    # extra contacts in the 45 days before churn, for churners inside the window
    pre_churn = churned & (churn_day > window_start)
    extra = np.where(pre_churn, rng.poisson(1.2, size=n), 0)
    owner = np.repeat(np.arange(n), counts)
    offsets = (rng.random(owner.size) * active_days[owner]).astype(np.int64)
    contact_day = start[owner] + offsets
    owner_extra = np.repeat(np.arange(n), extra)
    extra_day = churn_day[owner_extra] - 1 - (rng.random(owner_extra.size) * 45).astype(np.int64)
    all_owner = np.concatenate([owner, owner_extra])
    all_day = np.concatenate([contact_day, extra_day])
    keep = (all_day >= start[all_owner]) & (all_day < as_of_day)
    all_owner, all_day = all_owner[keep], all_day[keep]
    complaint_p = np.concatenate([np.full(owner.size, 0.25), np.full(owner_extra.size, 0.7)])[keep]
    kind_draw = rng.random(all_owner.size)
    kind_idx = np.where(kind_draw < complaint_p, 2, np.where(kind_draw < complaint_p + (1 - complaint_p) / 2, 1, 0))
    seconds = rng.integers(8 * 3600, 20 * 3600, size=all_owner.size)
    contact_ts = all_day.astype("datetime64[s]") + seconds.astype("timedelta64[s]")
    order = np.lexsort((contact_ts, all_owner))
    support = pd.DataFrame(
        {
            "customer_id": _take(ids, all_owner[order]),
            "contact_ts": contact_ts[order],
            "kind": _labels(CONTACT_KINDS, kind_idx[order]),
            "resolved": (rng.random(all_owner.size) < 0.8)[order],
        }
    )
    return SourceTables(customers, churn_events, usage, support)


SOURCE_DDL = """
CREATE SCHEMA IF NOT EXISTS src;
CREATE TABLE IF NOT EXISTS src.customers (
    customer_id text PRIMARY KEY,
    signup_date date NOT NULL,
    contract text NOT NULL,
    plan text NOT NULL,
    monthly_charge double precision NOT NULL,
    region text NOT NULL,
    payment_method text NOT NULL,
    paperless_billing boolean NOT NULL,
    senior boolean NOT NULL,
    num_lines smallint NOT NULL,
    email text
);
CREATE TABLE IF NOT EXISTS src.churn_events (
    customer_id text PRIMARY KEY,
    churn_date date NOT NULL
);
CREATE TABLE IF NOT EXISTS src.usage_monthly (
    customer_id text NOT NULL,
    month date NOT NULL,
    minutes double precision,
    data_gb double precision,
    dropped_calls integer,
    PRIMARY KEY (customer_id, month)
);
CREATE TABLE IF NOT EXISTS src.support_contacts (
    customer_id text NOT NULL,
    contact_ts timestamp NOT NULL,
    kind text NOT NULL,
    resolved boolean NOT NULL
);
CREATE INDEX IF NOT EXISTS support_contacts_customer_ts ON src.support_contacts (customer_id, contact_ts);
"""

TABLE_ORDER = ("customers", "churn_events", "usage_monthly", "support_contacts")


def copy_frame(cur, table: str, frame: pd.DataFrame, chunk_rows: int = 500_000) -> int:
    """COPY a data frame into an existing table in chunks (CSV over the wire); returns rows copied."""
    columns = ", ".join(frame.columns)
    for begin in range(0, len(frame), chunk_rows):
        buf = io.StringIO()
        frame.iloc[begin : begin + chunk_rows].to_csv(buf, index=False, header=False)
        buf.seek(0)
        cur.copy_expert(f"COPY {table} ({columns}) FROM STDIN WITH (FORMAT csv)", buf)
    return len(frame)


def load_source_tables(conn, tables: SourceTables) -> dict[str, int]:
    """Replace the src.* tables with ``tables`` in one transaction (readers see old or new).

    A bulk replacement is no event: the re-score outbox triggers (``churn.data.outbox``) stay silent for it.
    """
    with conn.cursor() as cur:
        cur.execute("SET LOCAL churn.suppress_outbox = 'on'")
        cur.execute(SOURCE_DDL)
        cur.execute("TRUNCATE " + ", ".join(f"src.{t}" for t in TABLE_ORDER))
        counts = {t: copy_frame(cur, f"src.{t}", getattr(tables, t)) for t in TABLE_ORDER}
        cur.execute("ANALYZE src.customers; ANALYZE src.churn_events; ANALYZE src.usage_monthly; ANALYZE src.support_contacts")
    conn.commit()
    log.info("loaded source tables: %s", counts)
    return counts
