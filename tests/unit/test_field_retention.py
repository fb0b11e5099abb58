"""Bounded in space (issue 26 item 16): how long rows are kept (the purge on real Postgres:
tests/integration/test_field_retention.py)."""

from __future__ import annotations

from churn.retention import keep_days


def test_monitoring_horizon_wins_over_a_shorter_retention():
    assert keep_days(7, 30) == 31 and keep_days(90, 30) == 90
