"""Integration: experiment assignments in Postgres are frozen (issue 27 item 2), and each night's split is kept."""

from __future__ import annotations

from datetime import date, timedelta

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
    assert again.new == 5000 and again.per_arm == counts.per_arm  # the night's figures, not doubled
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


def test_an_experiment_is_judged_on_the_night_its_label_window_closes(pg_conn, tmp_path):
    """Scores served on night N (the run folder's score file), arms assigned that night, outcomes in
    src.churn_events: on N + CHURN_REALIZED_LAG_DAYS the arms' figures and the uplift land in experiment_results."""
    import numpy as np

    from churn.config import ChurnConfig
    from churn.experiments.realized import evaluate_experiments
    from tests.support.scores import write_scores

    (tmp_path / "experiments.yaml").write_text(
        "experiments:\n  - id: retention-email\n    salt: s\n    start: 2026-11-01\n    arms:\n"
        "      - {name: contacted, weight: 80, model: champion}\n"
        "      - {name: holdout, weight: 20, model: champion, contact: false}\n")
    cfg = ChurnConfig(state_dir=tmp_path / "state", experiments_file=str(tmp_path / "experiments.yaml"),
                      realized_lag_days=30)
    night = date(2026, 11, 20)
    folder = cfg.runs_dir / night.isoformat()
    folder.mkdir(parents=True)
    path = write_scores(folder / "scores.parquet", night.isoformat(), 0, 20_000, seed=5)
    import pyarrow.parquet as pq

    table = pq.read_table(path).to_pydict()
    ids, proba = table["customer_id"], np.array(table["churn_probability"], dtype=float)
    experiment = parse_experiments({"experiments": [{
        "id": "retention-email", "salt": "s", "start": "2026-11-01",
        "arms": [{"name": "contacted", "weight": 80, "model": "champion"},
                 {"name": "holdout", "weight": 20, "model": "champion", "contact": False}]}]}).experiments[0]
    assign(pg_conn, [experiment], ids, night.isoformat(), night)
    arms = stored_arms(pg_conn, experiment.id, ids)
    # outcomes: churn follows the served score, and the contacted churn 30 % less
    rng = np.random.default_rng(1)
    churned = [cid for cid, p in zip(ids, proba)
               if rng.random() < (0.7 * p if arms[cid] == "contacted" else p) * 0.5]
    with pg_conn.cursor() as cur:
        cur.execute("CREATE SCHEMA src; CREATE TABLE src.churn_events (customer_id text, churn_date date)")
        cur.executemany("INSERT INTO src.churn_events VALUES (%s, %s)", [(c, date(2026, 12, 5)) for c in churned])
        cur.execute("INSERT INTO src.churn_events VALUES ('C00000001', '2026-11-01')")  # before the night: not counted
    pg_conn.commit()
    [analysis] = evaluate_experiments(pg_conn, cfg, night + timedelta(days=30))
    assert analysis.withheld is None and [a.arm for a in analysis.arms] == ["contacted", "holdout"]
    assert all(a.roc_auc > 0.55 for a in analysis.arms)
    [comparison] = analysis.comparisons
    assert comparison.uplift.low > 0 and comparison.relative_uplift.covers(0.3)
    with pg_conn.cursor() as cur:
        cur.execute("SELECT scored_on, evaluated_on, customers, withheld, result->'comparisons'->0->>'treated' "
                    "FROM churn.experiment_results")
        assert cur.fetchall() == [(night, night + timedelta(days=30), 20_000, None, "contacted")]
    pg_conn.rollback()
    # a night after the experiment's end is not judged (its holdout may be contacted by then)
    (tmp_path / "experiments.yaml").write_text((tmp_path / "experiments.yaml").read_text().replace(
        "start: 2026-11-01\n", "start: 2026-11-01\n    end: 2026-11-19\n"))
    assert evaluate_experiments(pg_conn, cfg, night + timedelta(days=30)) == []


def test_retention_removes_only_the_assignments_of_experiments_that_ended_before_the_cutoff(pg_conn, tmp_path):
    from churn.config import ChurnConfig
    from churn.retention import purge

    (tmp_path / "experiments.yaml").write_text(
        "experiments:\n"
        "  - id: ended\n    salt: s\n    start: 2026-10-01\n    end: 2026-10-31\n"
        "    arms: [{name: a, weight: 1, model: champion}, {name: b, weight: 1, model: champion}]\n"
        "  - id: running\n    salt: s\n    start: 2026-10-01\n"
        "    arms: [{name: a, weight: 1, model: champion}, {name: b, weight: 1, model: champion}]\n")
    cfg = ChurnConfig(state_dir=tmp_path / "state", experiments_file=str(tmp_path / "experiments.yaml"),
                      retention_days=30, realized_lag_days=30)
    experiments = parse_experiments({"experiments": [
        {"id": i, "salt": "s", "start": "2026-10-01", **({"end": "2026-10-31"} if i == "ended" else {}),
         "arms": [{"name": "a", "weight": 1, "model": "champion"}, {"name": "b", "weight": 1, "model": "champion"}]}
        for i in ("ended", "running")]}).experiments
    ids = [f"C{i:08d}" for i in range(1, 2001)]
    assign(pg_conn, experiments, ids, "2026-10-10", date(2026, 10, 10))
    exp_gone = parse_experiments({"experiments": [
        {"id": "not-in-the-file", "salt": "s", "start": "2026-10-01", "end": "2026-10-02",
         "arms": [{"name": "a", "weight": 1, "model": "champion"}, {"name": "b", "weight": 1, "model": "champion"}]}
    ]}).experiments
    assign(pg_conn, exp_gone, ids, "2026-10-01", date(2026, 10, 1))

    def counts():
        with pg_conn.cursor() as cur:
            cur.execute("SELECT experiment_id, count(*) FROM churn.experiment_assignments GROUP BY 1 ORDER BY 1")
            found = dict(cur.fetchall())
        pg_conn.rollback()
        return found

    # 2026-12-01: cutoff 2026-10-31 (31 days kept): "ended" ended on the cutoff day, its last night not judged
    assert purge(pg_conn, cfg, date(2026, 12, 1)).rows["churn.experiment_assignments"] == 0
    assert counts() == {"ended": 2000, "not-in-the-file": 2000, "running": 2000}
    result = purge(pg_conn, cfg, date(2026, 12, 2))  # cutoff 2026-11-01: ended before it
    assert result.rows["churn.experiment_assignments"] == 2000
    assert counts() == {"not-in-the-file": 2000, "running": 2000}  # a file edit never erases assignments


def test_a_customer_is_never_in_two_experiments_of_a_layer_even_after_a_traffic_edit(pg_conn):
    def layer(spec):
        return parse_experiments({"experiments": [
            {"id": i, "salt": "s", "start": "2026-12-01", "layer": "retention", "traffic": t,
             "arms": [{"name": "a", "weight": 1, "model": "champion"}, {"name": "b", "weight": 1, "model": "champion"}]}
            for i, t in spec]}).experiments

    ids = [f"C{i:08d}" for i in range(1, 20_001)]
    assign(pg_conn, layer([("x", [0, 50])]), ids, "2026-12-01", NIGHT1)
    # x shrinks to [0, 30] and y takes [30, 100]: customers of x's old [30, 50) stay in x only
    counts = assign(pg_conn, layer([("x", [0, 30]), ("y", [30, 100])]), ids, "2026-12-02", NIGHT2)
    with pg_conn.cursor() as cur:
        cur.execute("SELECT customer_id FROM churn.experiment_assignments GROUP BY customer_id HAVING count(*) > 1")
        assert cur.fetchall() == []
        cur.execute("SELECT experiment_id, count(*) FROM churn.experiment_assignments GROUP BY 1 ORDER BY 1")
        sizes = dict(cur.fetchall())
    pg_conn.rollback()
    assert 0.45 < sizes["x"] / 20_000 < 0.55 and 0.45 < sizes["y"] / 20_000 < 0.55  # y: 50 %, not 70 %
    assert [c.experiment_id for c in counts] == ["x", "y"] and counts[0].new == 0


def test_the_database_hash_assigns_every_customer_as_the_published_hash_does(pg_conn, tmp_path):
    """Assignment runs in Postgres (sha256 there): customer by customer it equals arm_of(), also for a layer's
    traffic range and awkward ids, and the test vectors hold; the ids stream from a Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from churn.experiments.assignment import TEST_VECTORS, IdsFile, bucket_sql

    with pg_conn.cursor() as cur:
        for exp_id, salt, customer, expected in TEST_VECTORS:
            cur.execute(f"SELECT {bucket_sql('k')} FROM (SELECT %s::text AS k) t", (f"{exp_id}|{salt}|{customer}",))
            assert cur.fetchone()[0] == expected, (exp_id, salt, customer)
    pg_conn.rollback()
    [exp] = parse_experiments({"experiments": [{
        "id": "sql-hash", "salt": "2027", "start": "2026-12-01", "layer": "retention", "traffic": [12.5, 87.25],
        "arms": [{"name": "a", "weight": 0.45, "model": "champion"}, {"name": "b", "weight": 0.45, "model": "champion"},
                 {"name": "c", "weight": 0.1, "model": "champion", "contact": False}]}]}).experiments
    ids = [f"C{i:08d}" for i in range(20_000)] + ["Ä-ü-€", "x,y", 'q"uote', "tab\there", "7590-VHVEG"]
    path = tmp_path / "ids.parquet"
    pq.write_table(pa.table({"customer_id": ids}), path, row_group_size=7_000)
    [counts] = assign(pg_conn, [exp], IdsFile(str(path), "customer_id", batch_rows=4_000), "2026-12-01", NIGHT1)
    stored = stored_arms(pg_conn, exp.id, ids)
    expected = {cid: arm_of(exp, cid) for cid in ids if arm_of(exp, cid) is not None}
    assert stored == expected and counts.new == len(expected)
    assert 0.70 < len(expected) / len(ids) < 0.80  # the layer's 74.75 % of the traffic
