"""A team's own database for the SQL source: a crm schema nothing like the demo's, its data, and the
point-in-time feature query that reads it."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg2
from psycopg2.extras import execute_values

RUN_DATE = date(2026, 11, 20)
WINDOW = 30  # label window (days) of the team's query

CRM_DDL = """
CREATE SCHEMA crm;
CREATE TABLE crm.accounts (acct_no text PRIMARY KEY, opened_on date NOT NULL, tier text NOT NULL,
                           monthly_fee numeric(8,2) NOT NULL, autopay boolean NOT NULL, region_code text NOT NULL,
                           email text NOT NULL UNIQUE);
CREATE TABLE crm.tickets (ticket_no serial PRIMARY KEY, acct_no text NOT NULL REFERENCES crm.accounts,
                          opened_at timestamptz NOT NULL, severity smallint NOT NULL);
CREATE TABLE crm.status_changes (change_id bigserial PRIMARY KEY, acct_no text NOT NULL REFERENCES crm.accounts,
                                 new_status text NOT NULL, changed_at timestamp NOT NULL);
"""

# The point-in-time pattern (README "Bring your own data"): every table read is bounded by %(as_of)s,
# and only the label looks at the window after it.
CORRECT_QUERY = """
-- features of open accounts as of %(as_of)s; label: closed within %(label_window_days)s days after it
SELECT a.acct_no, a.tier, a.region_code, a.autopay, a.monthly_fee::float8 AS monthly_fee, a.email,
       (%(as_of)s::date - a.opened_on)::float8 AS tenure_days,
       coalesce(t.tickets_60d, 0)::float8 AS tickets_60d,
       coalesce(t.worst_severity, 0)::float8 AS worst_severity,
       EXISTS (SELECT 1 FROM crm.status_changes s WHERE s.acct_no = a.acct_no AND s.new_status = 'closed'
               AND s.changed_at >= %(as_of)s::date
               AND s.changed_at < %(as_of)s::date + %(label_window_days)s::int)::int AS closed
FROM crm.accounts a
LEFT JOIN (SELECT acct_no, count(*) AS tickets_60d, max(severity) AS worst_severity
           FROM crm.tickets
           WHERE opened_at < %(as_of)s::date AND opened_at >= %(as_of)s::date - 60
           GROUP BY acct_no) t USING (acct_no)
WHERE a.opened_on < %(as_of)s::date
  AND NOT EXISTS (SELECT 1 FROM crm.status_changes s WHERE s.acct_no = a.acct_no AND s.new_status = 'closed'
                  AND s.changed_at < %(as_of)s::date);
"""


def crm_tables(accounts: int = 4000, seed: int = 5) -> dict[str, list[tuple]]:
    """Accounts, tickets and status changes up to RUN_DATE; closing accounts file tickets before they leave."""
    rng = np.random.default_rng(seed)
    opened = [RUN_DATE - timedelta(days=int(d)) for d in rng.integers(60, 1100, accounts)]
    tier = rng.choice(["basic", "plus", "pro"], accounts, p=[0.5, 0.3, 0.2])
    autopay = rng.random(accounts) < 0.6
    fee = np.round(np.select([tier == "basic", tier == "plus"], [19.0, 39.0], 69.0) + rng.normal(0, 4, accounts), 2)
    closing = rng.random(accounts) < np.clip(0.25 + 0.25 * (tier == "basic") - 0.2 * autopay, 0.02, 0.9)
    close_on = [RUN_DATE + timedelta(days=int(d)) for d in rng.integers(-120, 120, accounts)]
    rows_accounts, rows_tickets, rows_status = [], [], []
    for i in range(accounts):
        acct = f"A{i:06d}"
        rows_accounts.append((acct, opened[i], str(tier[i]), float(fee[i]), bool(autopay[i]),
                              f"R{int(rng.integers(1, 6))}", f"user{i}@example.com"))
        rows_status.append((acct, "active", pd.Timestamp(opened[i]).to_pydatetime()))
        life_days = (RUN_DATE - opened[i]).days
        for _ in range(rng.poisson(life_days / 150)):
            when = pd.Timestamp(opened[i]) + pd.Timedelta(minutes=int(rng.integers(0, life_days * 1440)))
            rows_tickets.append((acct, when.tz_localize("UTC").to_pydatetime(), int(rng.integers(1, 3))))
        closes = closing[i] and opened[i] + timedelta(days=45) < close_on[i] < RUN_DATE
        if closes:
            for _ in range(1 + rng.poisson(3)):  # the complaints that come before a closure
                when = pd.Timestamp(close_on[i]) - pd.Timedelta(minutes=int(rng.integers(1440, 45 * 1440)))
                rows_tickets.append((acct, when.tz_localize("UTC").to_pydatetime(), int(rng.integers(2, 5))))
            rows_status.append((acct, "closed", pd.Timestamp(close_on[i]).to_pydatetime()))
    return {"accounts": rows_accounts, "tickets": rows_tickets, "status_changes": rows_status}


def load_team_database(url: str) -> None:
    """The crm schema and its data in the (empty) database at ``url``: the team's database, not the platform's."""
    tables = crm_tables()
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute(CRM_DDL)
        execute_values(cur, "INSERT INTO crm.accounts VALUES %s", tables["accounts"])
        execute_values(cur, "INSERT INTO crm.tickets (acct_no, opened_at, severity) VALUES %s", tables["tickets"])
        execute_values(cur, "INSERT INTO crm.status_changes (acct_no, new_status, changed_at) VALUES %s",
                       tables["status_changes"])
    conn.commit()
    conn.close()


def write_query(folder: Path, text: str, name: str = "features.sql") -> Path:
    """A query file as the team would keep it."""
    path = folder / name
    path.write_text(text)
    return path
