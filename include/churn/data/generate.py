"""Synthetic, deterministic, vectorized demo population whose churn has real-world structure and a known ceiling.

The world runs forward: behaviour is generated first, churn follows from it, and nothing a customer does is
drawn from their future. Each customer has static attributes, a latent baseline satisfaction (it shapes usage
and how often they call, never the hazard directly) and, for about a third, a service incident ("shock") in
the last year after which usage drops and complaints triple. The monthly churn hazard is non-linear in what
the data shows, the way real churn data is (documented in docs/concepts/nightly-dag.md):

- month-to-month customers churn early and their hazard falls with tenure (``1.8 * exp(-tenure_months / 6)``);
  one- and two-year contracts are flat and low;
- complaints act past a threshold: 0 or 1 complaint in the last 90 days barely matter, 2 or more add +1.4 logit;
- price sensitivity differs by plan: the markup over the plan's list price counts for basic plans
  (+6 logit per +100 %), less for standard (+2), not for premium;
- interactions: senior customers paying by electronic check (+0.9), paperless month-to-month (+0.3);
- an incident in the last 120 days adds +0.8; each extra line makes a customer stickier (-0.25).

Churn before the training snapshot is simulated in 30-day periods with that hazard. For the label window
(``label_window_days`` after the training snapshot ``as_of - label_window_days``) the hazard is fixed at the
snapshot, so every customer's **true probability of churning within the window** is known exactly:
:attr:`SourceTables.oracle` holds it. It is a benchmark-only table: :func:`load_source_tables` never writes
it, so no pipeline stage can read it as a feature; benchmarks report its ROC AUC as the ceiling no model can
pass. Everything is numpy-vectorized: no Python loop runs per customer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import io
import logging
from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from churn.db import PgConnection, PgCursor

log = logging.getLogger(__name__)

CONTRACTS = np.array(["month-to-month", "one_year", "two_year"])
PLANS = np.array(["basic", "standard", "premium"])
REGIONS = np.array(["north", "south", "east", "west", "central"])
PAYMENT_METHODS = np.array(["credit_card", "bank_transfer", "electronic_check", "mailed_check"])
CONTACT_KINDS = np.array(["question", "technical", "complaint"])
EPOCH = np.datetime64("1970-01-01", "D")
PERIOD_DAYS = 30
HISTORY_DAYS = 365  # support contacts are kept for the last year
INCIDENT_EFFECT_DAYS = 120
NEVER = np.iinfo(np.int64).max // 4  # "no such day" (no incident, no churn): later than any date, no overflow


@dataclass(frozen=True)
class SourceTables:
    """The four source tables as data frames, plus the benchmark-only oracle (never loaded into a source table)."""

    customers: pd.DataFrame
    churn_events: pd.DataFrame
    usage_monthly: pd.DataFrame
    support_contacts: pd.DataFrame
    oracle: pd.DataFrame | None = None
    """Per customer of the training snapshot: ``customer_id``, ``snapshot_date``, ``true_probability`` (of churning
    within the label window) and ``churned`` (what happened); for benchmarks only."""

    def row_counts(self) -> dict[str, int]:
        """Rows per source table."""
        return {name: len(getattr(self, name)) for name in TABLE_ORDER}


def customer_ids(n: int, start: int = 0) -> pa.Array:
    """Stable string ids ``C00000001`` ... for row positions (Arrow strings: fast to build and take)."""
    numbers = pc.cast(pa.array(np.arange(start + 1, start + n + 1)), pa.string())
    return pc.binary_join_element_wise("C", pc.utf8_lpad(numbers, 8, "0"), "")


def _labels(categories: np.ndarray, codes: np.ndarray) -> pd.Categorical:
    """Low-cardinality text column from integer codes, without building a string per row."""
    return pd.Categorical.from_codes(codes, categories=pd.Index(categories, dtype="str"))


def _take(ids: pa.Array, positions: np.ndarray) -> pd.Series:
    return ids.take(pa.array(positions)).to_pandas()


@dataclass(frozen=True)
class _Static:
    """The hazard's inputs that do not change over time, per customer."""

    contract: np.ndarray
    plan: np.ndarray
    pay: np.ndarray
    senior: np.ndarray
    paperless: np.ndarray
    num_lines: np.ndarray
    markup: np.ndarray
    signup: np.ndarray
    incident: np.ndarray

    def logit(self, day: np.ndarray | int, complaints_90d: np.ndarray) -> np.ndarray:
        """Monthly churn logit on ``day`` (days since epoch) given the complaints of the 90 days before it."""
        tenure_months = np.maximum(day - self.signup, 0) / 30.4
        m2m = self.contract == 0
        since_incident = day - self.incident
        return (
            -3.2
            + np.where(m2m, 0.3 + 1.8 * np.exp(-tenure_months / 6.0), np.where(self.contract == 1, -0.6, -1.6))
            + np.array([6.0, 2.0, 0.0])[self.plan] * self.markup
            + 0.35 * (self.pay == 2)
            + 0.9 * (self.senior & (self.pay == 2))
            + 0.3 * (self.paperless & m2m)
            - 0.25 * (self.num_lines - 1)
            + np.where(complaints_90d >= 2, 1.4, 0.15 * complaints_90d)
            + 0.8 * ((since_incident >= 0) & (since_incident < INCIDENT_EFFECT_DAYS))
        )


def daily_hazard(logit: np.ndarray) -> np.ndarray:
    """Daily churn hazard from a monthly churn-probability logit."""
    monthly = 1.0 / (1.0 + np.exp(-logit))
    return -np.log1p(-monthly) / 30.4


def _count_before(keys: np.ndarray, owner: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Per customer: events with day in [start, end) among ``keys`` = owner * 2**32 + day (sorted)."""
    base = owner.astype(np.int64) << 32
    return np.searchsorted(keys, base + end) - np.searchsorted(keys, base + start)


def generate(n_customers: int, as_of: date, seed: int = 7, usage_months: int = 6,
             label_window_days: int = 30) -> SourceTables:
    """Generate the source tables as they would look on ``as_of`` (nothing dated after it), and the oracle."""
    if n_customers <= 0:
        raise ValueError("n_customers must be positive")
    rng = np.random.default_rng(seed)
    n = n_customers
    today = int((np.datetime64(as_of, "D") - EPOCH).astype(np.int64))  # days since epoch: plain integers below
    snapshot = today - label_window_days

    # --- static attributes ---------------------------------------------------
    contract_idx = rng.choice(3, size=n, p=[0.55, 0.25, 0.20])
    plan_idx = rng.choice(3, size=n, p=[0.4, 0.4, 0.2])
    region_idx = rng.integers(0, len(REGIONS), size=n)
    pay_idx = rng.choice(4, size=n, p=[0.3, 0.25, 0.3, 0.15])
    senior = rng.random(n) < 0.16
    paperless = rng.random(n) < 0.6
    num_lines = 1 + rng.poisson(0.6, size=n)
    list_price = np.array([29.0, 59.0, 99.0])[plan_idx] + 12.0 * (num_lines - 1)
    monthly_charge = np.round(list_price * rng.lognormal(0.0, 0.12, size=n), 2)
    satisfaction = rng.normal(0.0, 1.0, size=n)  # latent: never written, only its effects on behaviour are
    signup = today - (rng.random(n) ** 1.3 * 6 * 365).astype(np.int64) - 1  # more recent signups than old ones
    has_incident = rng.random(n) < 0.35
    incident = np.where(has_incident, today - 1 - rng.integers(0, HISTORY_DAYS, size=n), NEVER)
    incident = np.where(incident > signup, incident, NEVER)
    static = _Static(contract_idx, plan_idx, pay_idx, senior, paperless, num_lines,
                     monthly_charge / list_price - 1.0, signup, incident)

    # --- support contacts over the last year (before churn is known; cut at churn below) ----
    window_start = today - HISTORY_DAYS
    start = np.maximum(signup, window_start)
    split = np.clip(incident, start, today)  # contacts triple after the incident
    rate = 0.2 / 30.0 * np.exp(-0.5 * satisfaction)
    before = rng.poisson(rate * (split - start))
    after = rng.poisson(3.0 * rate * (today - split))
    owner = np.concatenate([np.repeat(np.arange(n), before), np.repeat(np.arange(n), after)])
    seg_start = np.concatenate([np.repeat(start, before), np.repeat(split, after)])
    seg_len = np.concatenate([np.repeat(split - start, before), np.repeat(today - split, after)])
    contact_day = seg_start + (rng.random(owner.size) * seg_len).astype(np.int64)
    post = contact_day >= incident[owner]
    complaint = rng.random(owner.size) < np.where(post, 0.5, 0.25)
    complaint_keys = np.sort((owner[complaint].astype(np.int64) << 32) + contact_day[complaint])
    everyone = np.arange(n)

    def complaints_90d(day: int) -> np.ndarray:
        return _count_before(complaint_keys, everyone, np.full(n, day - 90), np.full(n, day))

    # --- churn before the snapshot: 30-day periods with the hazard at each period's start ----------
    churn_day = np.full(n, NEVER, dtype=np.int64)
    first = int(signup.min())
    for period_start in range(snapshot - ((snapshot - first) // PERIOD_DAYS + 1) * PERIOD_DAYS, snapshot,
                              PERIOD_DAYS):
        length = min(PERIOD_DAYS, snapshot - period_start)
        at_risk = (signup <= period_start) & (churn_day == NEVER)
        if not at_risk.any():
            continue
        counts = complaints_90d(period_start) if period_start > window_start else np.zeros(n, dtype=np.int64)
        hazard = daily_hazard(static.logit(period_start, counts))
        leaves = at_risk & (rng.random(n) < -np.expm1(-hazard * length))
        churn_day[leaves] = period_start + 1 + rng.integers(0, length, size=int(leaves.sum()))

    # --- the label window: hazard fixed at the snapshot, so each customer's probability is exact -------------
    population = (signup <= snapshot) & (churn_day == NEVER)
    hazard = daily_hazard(static.logit(snapshot, complaints_90d(snapshot)))
    true_probability = -np.expm1(-hazard * label_window_days)
    draw = rng.random(n)
    in_window = population & (draw < true_probability)
    wait = np.ceil(-np.log1p(-draw[in_window]) / hazard[in_window]).astype(np.int64)
    churn_day[in_window] = snapshot + np.clip(wait, 1, label_window_days)
    churned = churn_day <= today

    ids = customer_ids(n)
    oracle_rows = np.flatnonzero(population)
    oracle = pd.DataFrame({
        "customer_id": _take(ids, oracle_rows),
        "snapshot_date": pd.Timestamp(EPOCH + snapshot),
        "true_probability": true_probability[oracle_rows],
        "churned": in_window[oracle_rows].astype(np.int8),
    })
    customers = pd.DataFrame(
        {
            "customer_id": ids.to_pandas(),
            "signup_date": (EPOCH + signup).astype("datetime64[s]"),
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
    churn_events = pd.DataFrame({"customer_id": _take(ids, np.flatnonzero(churned)),
                                 "churn_date": (EPOCH + churn_day[churned]).astype("datetime64[s]")})

    # --- monthly usage for the last `usage_months` complete months -----------------
    this_month = np.datetime64(as_of, "M")
    months = np.array([this_month - k for k in range(usage_months, 0, -1)])  # complete months only
    m_start = (months.astype("datetime64[D]") - EPOCH).astype(np.int64)
    m_end = ((months + 1).astype("datetime64[D]") - EPOCH).astype(np.int64)
    active = (signup[:, None] < m_end[None, :]) & (churn_day[:, None] > m_start[None, :])
    after_incident = np.clip((m_end[None, :] - incident[:, None]) / (m_end - m_start)[None, :], 0.0, 1.0)
    level = 1.0 - 0.45 * after_incident  # usage drops after an incident
    base_minutes = rng.lognormal(5.6, 0.45, size=n) * np.exp(0.15 * satisfaction)
    minutes = base_minutes[:, None] * level * rng.lognormal(0.0, 0.2, size=(n, usage_months))
    data_gb = (np.array([4.0, 12.0, 30.0])[plan_idx][:, None] * (1.0 - 0.3 * after_incident)
               * rng.lognormal(0.0, 0.3, size=(n, usage_months)))
    dropped = rng.poisson(np.clip(1.5 - 0.5 * satisfaction, 0.1, None)[:, None] * (1.0 + after_incident),
                          size=(n, usage_months))
    row_idx, col_idx = np.nonzero(active)
    usage = pd.DataFrame(
        {
            "customer_id": _take(ids, row_idx),
            "month": (EPOCH + m_start[col_idx]).astype("datetime64[s]"),
            "minutes": np.round(minutes[row_idx, col_idx], 1),
            "data_gb": np.round(data_gb[row_idx, col_idx], 2),
            "dropped_calls": dropped[row_idx, col_idx].astype(np.int32),
        }
    )

    # --- support contacts: only those before the customer left ---------------------------------
    keep = contact_day < churn_day[owner]
    owner, contact_day, complaint, post = owner[keep], contact_day[keep], complaint[keep], post[keep]
    kind_idx = np.where(complaint, 2, np.where(rng.random(owner.size) < 0.5, 1, 0))
    seconds = rng.integers(8 * 3600, 20 * 3600, size=owner.size)
    contact_ts = (EPOCH + contact_day).astype("datetime64[s]") + seconds.astype("timedelta64[s]")
    order = np.lexsort((contact_ts, owner))
    support = pd.DataFrame(
        {
            "customer_id": _take(ids, owner[order]),
            "contact_ts": contact_ts[order],
            "kind": _labels(CONTACT_KINDS, kind_idx[order]),
            "resolved": (rng.random(owner.size) < np.where(post, 0.65, 0.85))[order],
        }
    )
    return SourceTables(customers, churn_events, usage, support, oracle)


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


def copy_frame(cur: PgCursor, table: str, frame: pd.DataFrame, chunk_rows: int = 500_000) -> int:
    """COPY a data frame into an existing table in chunks (CSV over the wire); returns rows copied."""
    columns = ", ".join(frame.columns)
    for begin in range(0, len(frame), chunk_rows):
        buf = io.StringIO()
        frame.iloc[begin : begin + chunk_rows].to_csv(buf, index=False, header=False)
        buf.seek(0)
        cur.copy_expert(f"COPY {table} ({columns}) FROM STDIN WITH (FORMAT csv)", buf)
    return len(frame)


def load_source_tables(conn: PgConnection, tables: SourceTables) -> dict[str, int]:
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
