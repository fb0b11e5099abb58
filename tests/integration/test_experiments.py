"""Integration: experiment assignments in Postgres are frozen (issue 27 item 2), and each night's split is kept."""

from __future__ import annotations

from datetime import date

import psycopg2
import pytest

from churn.experiments.assignment import arm_of, assign, record_split, sample_ratio_check, stored_arms
from churn.experiments.definitions import parse_experiments

NIGHT1, NIGHT2, NIGHT3 = date(2026, 12, 1), date(2026, 12, 2), date(2026, 12, 3)


def _experiment(control: int, challenger: int):
    return parse_experiments({"experiments": [{
        "id": "boosting-vs-champion", "salt": "2026-12", "start": "2026-12-01",
        "arms": [{"name": "control", "weight": control, "model": "champion"},
                 {"name": "challenger", "weight": challenger, "model": "hist_gradient_boosting"}]}]}).experiments[0]


def test_assignments_are_frozen_across_weight_changes_absences_and_re_runs(pg_conn):
    fifty = _experiment(50, 50)
    first = [f"C{i:08d}" for i in range(1, 5001)]
    [counts] = assign(pg_conn, [fifty], first, "2026-12-01", NIGHT1)
    assert counts.new == 5000 and sum(counts.per_arm.values()) == 5000
    before = stored_arms(pg_conn, fifty.id, first)
    assert before == {cid: arm_of(fifty, cid) for cid in first}
    # a re-run of the night adds nothing and changes nothing
    [again] = assign(pg_conn, [fifty], first, "2026-12-01", NIGHT1)
    assert again.new == 0 and again.per_arm == counts.per_arm
    # night 2: weights changed to 90/10; 1,000 customers absent; 2,000 new ones
    ninety = _experiment(90, 10)
    second = first[1000:] + [f"C{i:08d}" for i in range(5001, 7001)]
    [counts2] = assign(pg_conn, [ninety], second, "2026-12-02", NIGHT2)
    assert counts2.new == 2000
    newcomers = stored_arms(pg_conn, ninety.id, second[-2000:])
    assert newcomers == {cid: arm_of(ninety, cid) for cid in second[-2000:]}  # new ones: tonight's weights
    assert sum(arm == "control" for arm in newcomers.values()) > 1600
    # night 3: the absent customers are back, with their first arm; nobody's arm ever changed
    assign(pg_conn, [ninety], first, "2026-12-03", NIGHT3)
    assert stored_arms(pg_conn, fifty.id, first) == before
    # ...and the split check says the stored split no longer matches the declared weights
    flagged = sample_ratio_check(ninety, counts2.per_arm)
    assert flagged.flagged
    record_split(pg_conn, ninety, NIGHT2, "2026-12-02", counts2, flagged)
    record_split(pg_conn, ninety, NIGHT2, "2026-12-02", counts2, flagged)  # a re-run replaces its row
    with pg_conn.cursor() as cur:
        cur.execute("SELECT night, counts, new_customers, flagged FROM churn.experiment_splits")
        assert cur.fetchall() == [(NIGHT2, flagged.counts, 2000, True)]
    pg_conn.rollback()


def test_an_assignment_cannot_be_updated_even_by_the_owner(pg_conn):
    exp = _experiment(50, 50)
    assign(pg_conn, [exp], ["C00000001"], "2026-12-01", NIGHT1)
    with pytest.raises(psycopg2.errors.RaiseException, match="never changed"):
        with pg_conn.cursor() as cur:
            cur.execute("UPDATE churn.experiment_assignments SET arm = 'challenger'")
    pg_conn.rollback()
    assert stored_arms(pg_conn, exp.id, ["C00000001"]) == {"C00000001": arm_of(exp, "C00000001")}


def test_an_experiment_outside_its_dates_assigns_nobody(pg_conn):
    exp = parse_experiments({"experiments": [{
        "id": "later", "salt": "s", "start": "2027-01-01", "end": "2027-01-31",
        "arms": [{"name": "a", "weight": 1, "model": "champion"},
                 {"name": "b", "weight": 1, "model": "champion"}]}]}).experiments[0]
    assert assign(pg_conn, [exp], ["C00000001"], "2026-12-01", NIGHT1) == []
    assert assign(pg_conn, [exp], ["C00000001"], "2027-02-01", date(2027, 2, 1)) == []
    assert stored_arms(pg_conn, exp.id, ["C00000001"]) == {}
