"""Per-arm serving (issue 27 item 3): every customer is served its experiment arm's model, in both stores.

Real Postgres and Redis; the nightly stages run in-process. Night 1 (no experiment) trains the default
candidates and promotes a champion; night 2 declares an experiment whose challenger arm is served the other
default candidate. Every customer's record is then checked against the model of its stored arm, customer by
customer: the score file, ``churn.scores_current``, the Redis compact layout (and the json layout), and an
event re-score between nights.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import psycopg2
import pyarrow.parquet as pq
import pytest
import redis

from churn.config import ChurnConfig
from churn.connections import Resources
from churn.data import outbox
from churn.model import registry
from churn.publish.redis_store import lookup_score, publish_scores
from churn.stages.results import ExperimentsResult, ScoredResult, ValidationResult, parse
from churn.stages.rescore import rescore, start_rescore
from tests.support.nightly import RUN_DATE, complain, run_nightly
from tests.support.servers import fresh_stores, pg_rows

NIGHT2 = RUN_DATE + timedelta(days=1)
EXPERIMENT = "arm-models"


@pytest.fixture(scope="module")
def nights(services, pg_admin_url, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("experiment_serving")
    pg_url, redis_url = fresh_stores(services, pg_admin_url, "experiment_serving", 14, customers=8000,
                                     as_of=NIGHT2, seed=71)
    env = {"CHURN_STATE_DIR": str(tmp / "state"), "CHURN_TRAIN_TPOT": "false", "CHURN_MIN_ROC_AUC": "0.5",
           "CHURN_PG_READER_ROLE": "", "CHURN_SCORE_PARTITIONS": "2"}
    res = Resources.from_urls(pg_url, redis_url)
    first = run_nightly(ChurnConfig.from_env(env), res, RUN_DATE)
    with res.pg_session() as conn:
        champion = registry.champion(conn)
        with conn.cursor() as cur:
            cur.execute("SELECT model_name, version FROM churn.model_registry WHERE model_name <> %s "
                        "ORDER BY version", (champion.model_name,))
            other_name, other_version = cur.fetchall()[-1]
        conn.rollback()
    experiments = tmp / "experiments.yaml"
    experiments.write_text(f"""experiments:
  - id: {EXPERIMENT}
    salt: "s1"
    start: {NIGHT2}
    arms:
      - {{name: control, weight: 45, model: champion}}
      - {{name: challenger, weight: 45, model: {other_name}}}
      - {{name: holdout, weight: 10, model: champion, contact: false}}
""")
    cfg = ChurnConfig.from_env({**env, "CHURN_EXPERIMENTS_FILE": str(experiments)})
    second = run_nightly(cfg, res, NIGHT2)
    with res.pg_session() as conn:
        outbox.install_triggers(conn, outbox.DEMO_TABLES, "customer_id")
    return {"cfg": cfg, "res": res, "pg_url": pg_url, "redis_url": redis_url, "first": first, "second": second,
            "champion": champion.version, "other": other_version, "tmp": tmp}


def _expected(nights) -> pd.DataFrame:
    """Per customer of night 2's snapshot: stored arm, the arm's model version and that model's probability."""
    arms = dict(pg_rows(nights["pg_url"], "SELECT customer_id, arm FROM churn.experiment_assignments "
                                          "WHERE experiment_id = %s", (EXPERIMENT,)))
    features = pd.read_parquet(parse(ValidationResult, nights["second"]["validated"]).score.clean_path)
    with psycopg2.connect(nights["pg_url"]) as conn:
        champion = registry.get(conn, nights["champion"])
        other = registry.get(conn, nights["other"])
    frame = features
    proba = {}
    for record in (champion, other):
        model, signature = registry.load_verified(record.artifact_path, record.artifact_sha256)
        enforced = signature.enforce(frame, max_unknown_fraction=0.0)
        proba[record.version] = model.predict_proba(enforced[signature.feature_columns])[:, 1]
    ids = frame[champion.signature["id_column"]].astype(str)
    arm = ids.map(arms)
    version = np.where(arm == "challenger", nights["other"], nights["champion"])
    served = np.where(arm == "challenger", proba[nights["other"]], proba[nights["champion"]])
    return pd.DataFrame({"customer_id": ids, "arm": arm, "model_version": version, "proba": served}).set_index(
        "customer_id")


def test_every_customer_is_scored_by_its_arms_model_in_the_score_file(nights):
    expected = _expected(nights)
    assigned = parse(ExperimentsResult, nights["second"]["assigned"])
    assert [m["version"] for m in assigned.models] == [nights["champion"], nights["other"]]
    assert assigned.enrolled == len(expected)
    scored = parse(ScoredResult, nights["second"]["scored"])
    assert scored.model_versions == [nights["champion"], nights["other"]]
    scores = pq.read_table(scored.path).to_pandas().set_index("customer_id")
    assert len(scores) == len(expected)
    joined = scores.join(expected, rsuffix="_expected")
    assert (joined["model_version"] == joined["model_version_expected"]).all()
    assert (joined["arm"] == joined["arm_expected"]).all() and (joined["experiment"] == EXPERIMENT).all()
    assert np.allclose(joined["churn_probability"], joined["proba"], atol=1e-6)
    counts = joined["arm"].value_counts()
    assert set(counts.index) == {"control", "challenger", "holdout"} and counts["challenger"] > 0.4 * len(joined)
    # deciles stay global over the served scores: each decile holds a tenth of the population
    assert abs(scores["risk_decile"].value_counts().max() - len(scores) / 10) < len(scores) * 0.02
    # night 1 (no experiment) served one model and no arm
    first = pq.read_table(parse(ScoredResult, nights["first"]["scored"]).path).to_pandas()
    assert first["experiment"].isna().all() and first["model_version"].nunique() == 1


def test_postgres_serves_each_customer_its_arms_model_experiment_and_arm(nights):
    expected = _expected(nights)
    rows = pg_rows(nights["pg_url"], "SELECT customer_id, churn_probability, model_version, experiment, arm "
                                     "FROM churn.scores_current")
    current = pd.DataFrame(rows, columns=["customer_id", "p", "model_version", "experiment", "arm"]).set_index(
        "customer_id").join(expected, rsuffix="_expected")
    assert len(current) == len(expected)
    assert (current["model_version"] == current["model_version_expected"]).all()
    assert (current["arm"] == current["arm_expected"]).all() and (current["experiment"] == EXPERIMENT).all()
    assert np.allclose(current["p"], current["proba"], atol=1e-6)
    # the history keeps night 1 (no arm) and night 2 (arms) side by side
    history = pg_rows(nights["pg_url"], "SELECT run_id, count(*), count(arm) FROM churn.scores_history "
                                        "GROUP BY run_id ORDER BY run_id")
    first_rows = parse(ScoredResult, nights["first"]["scored"]).rows
    assert history == [(str(RUN_DATE), first_rows, 0), (str(NIGHT2), len(expected), len(expected))]


def test_redis_compact_and_json_layouts_serve_each_customer_its_arms_record(nights):
    expected = _expected(nights)
    client = redis.Redis.from_url(nights["redis_url"])
    meta = {k.decode(): v.decode() for k, v in client.hgetall("churn:meta").items()}
    assert meta["layout"] == "compact" and len(meta["slots"].split(",")) == 3  # every customer is in an arm
    scores_path = parse(ScoredResult, nights["second"]["scored"]).path
    publish_scores(client, scores_path, str(NIGHT2), nights["champion"], prefix="churnj", layout="json")
    for prefix in ("churn", "churnj"):
        for cid, row in expected.iterrows():
            record = lookup_score(client, cid, prefix=prefix)
            assert record["model_version"] == row["model_version"], (prefix, cid)
            assert (record["experiment"], record["arm"]) == (EXPERIMENT, row["arm"]), (prefix, cid)
            assert abs(record["churn_probability"] - row["proba"]) < 2e-6, (prefix, cid)


def test_an_event_re_score_keeps_the_customers_arm_and_its_model(nights):
    expected = _expected(nights)
    challengers = expected.index[expected["arm"] == "challenger"][:5].tolist()
    controls = expected.index[expected["arm"] == "control"][:5].tolist()
    complain(nights["pg_url"], challengers + controls)
    totals = rescore(nights["cfg"], nights["res"], start_rescore("experiment-serving", {}))
    assert totals["rescored"] == len(challengers + controls), totals
    current = {r[0]: r[1:] for r in pg_rows(
        nights["pg_url"], "SELECT customer_id, model_version, experiment, arm, source FROM churn.scores_current "
                          "WHERE customer_id = ANY(%s)", (challengers + controls,))}
    client = redis.Redis.from_url(nights["redis_url"])
    for cid in challengers + controls:
        version = nights["other"] if cid in challengers else nights["champion"]
        arm = "challenger" if cid in challengers else "control"
        assert current[cid] == (version, EXPERIMENT, arm, "event"), cid
        record = lookup_score(client, cid)
        assert (record["source"], record["model_version"], record["experiment"], record["arm"]) == (
            "event", version, EXPERIMENT, arm), cid


def test_the_prediction_log_keeps_each_nights_served_score_model_arm_and_features_hash(nights):
    from churn.model.score import features_hash

    expected = _expected(nights)
    rows = pg_rows(nights["pg_url"], "SELECT run_id, customer_id, churn_probability, model_version, experiment, "
                                     "arm, features_hash FROM churn.prediction_log")
    log = pd.DataFrame(rows, columns=["run_id", "customer_id", "p", "model_version", "experiment", "arm", "hash"])
    assert set(log["run_id"]) == {str(RUN_DATE), str(NIGHT2)}  # both nights, beyond nothing
    night2 = log[log["run_id"] == str(NIGHT2)].set_index("customer_id").join(expected[["proba"]])
    assert len(night2) == len(expected)
    assert (night2["model_version"] == expected["model_version"].reindex(night2.index)).all()
    assert (night2["arm"] == expected["arm"].reindex(night2.index)).all()
    assert np.allclose(night2["p"], night2["proba"], atol=1e-6)
    # the features hash is that of the row scored, customer by customer
    features = pd.read_parquet(parse(ValidationResult, nights["second"]["validated"]).score.clean_path)
    with psycopg2.connect(nights["pg_url"]) as conn:
        _, signature = registry.load_verified(*[getattr(registry.get(conn, nights["champion"]), a)
                                                for a in ("artifact_path", "artifact_sha256")])
    enforced = signature.enforce(features, max_unknown_fraction=0.0)
    hashes = pd.Series(features_hash(enforced, signature), index=enforced[signature.id_column].astype(str))
    assert (night2["hash"] == hashes.reindex(night2.index)).all()
    assert hashes.nunique() > 0.99 * len(hashes)  # a hash of the features, not a constant
    night1 = log[log["run_id"] == str(RUN_DATE)]
    assert night1["arm"].isna().all() and night1["hash"].notna().all()


def _result(arms: dict[str, tuple[int, float, float]]) -> str:
    import json

    return json.dumps({"arms": [{"arm": a, "customers": n, "churn_rate": r, "roc_auc": auc, "pr_auc": None,
                                 "brier": 0.1, "reliability": [], "top_k_precision": 0.3}
                                for a, (n, r, auc) in arms.items()],
                       "comparisons": [{"treated": "control", "holdout": "holdout", "qini": 0.01,
                                        "uplift": {"estimate": 0.02, "low": 0.0, "high": 0.04},
                                        "relative_uplift": {"estimate": 0.1, "low": 0.0, "high": 0.2}}]})


def test_a_person_decides_an_experiment_that_reached_its_sample_size_through_the_registry(nights):
    """Last in the module: the promotion changes the champion."""
    from churn.experiments.decisions import EXTEND, PROMOTE, apply_decision, effective, ended_on, ready_for_decision
    from churn.experiments.definitions import ExperimentsError, load_experiments, parse_experiments

    declared = load_experiments(nights["cfg"].experiments_file).experiments[0]
    experiment = parse_experiments({"experiments": [{
        "id": declared.id, "salt": declared.salt, "start": str(declared.start), "minimum_detectable_effect": 0.05,
        "arms": [{"name": a.name, "weight": a.weight, "model": a.model, "contact": a.contact}
                 for a in declared.arms]}]}).experiments
    insert = ("INSERT INTO churn.experiment_results (experiment_id, scored_on, evaluated_on, customers, withheld, "
              "result) VALUES (%s, %s, %s, %s, NULL, %s)")
    pg_rows(nights["pg_url"], insert, (EXPERIMENT, NIGHT2, NIGHT2 + timedelta(days=30), 8000, _result(
        {"control": (3600, 0.10, 0.70), "challenger": (3600, 0.10, 0.78), "holdout": (800, 0.12, 0.70)})))
    conn = psycopg2.connect(nights["pg_url"])
    try:
        request = ready_for_decision(conn, experiment)
        assert request is not None and request.needed_per_arm < 800 < 2 * request.needed_per_arm
        assert (request.winner_arm, request.winner_model, request.champion) == (
            "challenger", nights["other"], nights["champion"])
        assert "| `challenger` | 3,600 |" in request.body and nights["other"] in request.body
        # extend: asked again only once every arm holds twice the sample size
        extended = apply_decision(conn, request.as_dict(), [EXTEND], "ana", NIGHT2 + timedelta(days=30))
        assert extended["decision"] == "extend"
        assert ready_for_decision(conn, experiment) is None
        later, twice = NIGHT2 + timedelta(days=1), 2 * request.needed_per_arm
        pg_rows(nights["pg_url"], insert, (EXPERIMENT, later, later + timedelta(days=30), 9000, _result(
            {"control": (4000, 0.10, 0.70), "challenger": (4000, 0.10, 0.79), "holdout": (twice - 1, 0.12, 0.70)})))
        assert ready_for_decision(conn, experiment) is None  # one short of twice the size
        pg_rows(nights["pg_url"], "DELETE FROM churn.experiment_results WHERE scored_on = %s", (later,))
        pg_rows(nights["pg_url"], insert, (EXPERIMENT, later, later + timedelta(days=30), 9000, _result(
            {"control": (4000, 0.10, 0.70), "challenger": (4000, 0.10, 0.79), "holdout": (twice, 0.12, 0.70)})))
        again = ready_for_decision(conn, experiment)
        assert again is not None and again.extends == 1 and again.scored_on == str(later)
        # promote: through the registry, with who and why; a retry changes nothing more
        decided_on = later + timedelta(days=30)
        done = apply_decision(conn, again.as_dict(), [PROMOTE], "ana", decided_on)
        assert done == {"experiment_id": EXPERIMENT, "decision": "promote", "model_version": nights["other"],
                        "repeated": False}
        assert apply_decision(conn, again.as_dict(), [PROMOTE], "ana", decided_on)["repeated"] is True
        assert registry.champion(conn).version == nights["other"]
        promotions = pg_rows(nights["pg_url"], "SELECT version, previous_champion, actor, kind, forced FROM "
                                               "churn.promotions ORDER BY id DESC LIMIT 1")
        assert promotions == [(nights["other"], nights["champion"], "ana", "experiment", False)]
        decisions = pg_rows(nights["pg_url"], "SELECT decision, arm, model_version, decided_by FROM "
                                              "churn.experiment_decisions ORDER BY id")
        assert decisions == [("extend", None, None, "ana"), ("promote", "challenger", nights["other"], "ana")]
        with pytest.raises(psycopg2.Error, match="append-only"):
            pg_rows(nights["pg_url"], "UPDATE churn.experiment_decisions SET decided_by = 'eve'")
        # the promotion ended the experiment: it assigns nobody after the decision, and is not asked again
        assert ended_on(conn) == {EXPERIMENT: decided_on}
        [ended] = effective(experiment, ended_on(conn))
        assert ended.end == decided_on and not ended.active_on(decided_on + timedelta(days=1))
        assert ready_for_decision(conn, experiment) is None
        # a retry whose promotion went through before the worker died: recorded, not promoted twice
        before = pg_rows(nights["pg_url"], "SELECT count(*) FROM churn.promotions")
        retried = apply_decision(conn, {**again.as_dict(), "scored_on": str(later + timedelta(days=2))}, [PROMOTE],
                                 "ana", decided_on)
        assert retried["decision"] == "promote" and not retried["repeated"]
        assert pg_rows(nights["pg_url"], "SELECT count(*) FROM churn.promotions") == before
        # nothing to promote when the best arm is served the champion: refused with the fix
        with pytest.raises(ExperimentsError, match="choose stop or extend"):
            apply_decision(conn, {**again.as_dict(), "scored_on": str(later + timedelta(days=1)), "winner_model": nights["other"],
                                  "champion": nights["other"]}, [PROMOTE], "ana", decided_on)
    finally:
        conn.close()
