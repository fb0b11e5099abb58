"""Scheduler tier: churn_nightly under a real scheduler with LocalExecutor, triggered through the REST API.

The components ``airflow standalone`` runs (scheduler, dag-processor, api-server, triggerer) are
started as separate processes by ``churn.dev.stack`` (what ``make demo`` uses), with Airflow's
metadata in Postgres. A "Retrain now" run with the default TPOT search (a local Dask cluster of
worker processes, started from inside a LocalExecutor task) must succeed, register a TPOT
candidate, score in mapped partitions and publish to both stores. After the run, the state folder
is private (0700, no file readable by others), its ancestors kept their modes, the admin password
is in no log, and the platform's Redis user was refused no command.
"""

from __future__ import annotations

import time
import urllib.parse
from datetime import date

import psycopg2
import pytest
import redis

from churn.publish.redis_store import lookup_score
from tests.support.stack_support import (NO_SCHEDULED_RUN, SHORT_SEARCH, complaint_reaches_both_stores, failure_details,
                                 running_stack, scores_by_customer)

AS_OF = date(2026, 11, 20)
STREAM = "churn:events"
EXPERIMENT = "stack-arms"
EXPERIMENTS = f"""\
experiments:
  - id: {EXPERIMENT}
    salt: "s"
    start: {AS_OF}
    minimum_detectable_effect: 0.05
    arms:
      - {{name: control, weight: 40, model: champion}}
      - {{name: logistic, weight: 25, model: logistic_baseline}}
      - {{name: boosting, weight: 25, model: hist_gradient_boosting}}
      - {{name: holdout, weight: 10, model: champion, contact: false}}
"""


@pytest.fixture(scope="module")
def local_run(services, pg_admin_url, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stack-local")
    ancestors = {p: p.stat().st_mode for p in [tmp, *tmp.parents]}
    started_ms = time.time() * 1000
    experiments = tmp / "experiments.yaml"
    experiments.write_text(EXPERIMENTS)
    with running_stack(services, pg_admin_url, tmp, "stack_local", "local", redis_db=6, as_of=AS_OF,
                       score_partitions="2", schedule_cron=NO_SCHEDULED_RUN, rescore_stream=STREAM,
                       experiments_file=str(experiments), **SHORT_SEARCH) as stack:
        # on before the night: the report's asset event schedules it (nothing to decide yet that night)
        stack.unpause("churn_experiment_decision")
        run_id = stack.trigger(f"{AS_OF.isoformat()}T02:00:00Z", {"retrain": True, "note": "scheduler test"})
        lines: list[str] = []
        state = stack.wait_run(run_id, timeout=900, progress=lines.append)
        assert state == "success", failure_details(stack, run_id)
        yield {"stack": stack, "run_id": run_id, "progress": lines,
               "tis": stack.task_instances(run_id), "score_xcom": stack.xcom(run_id, "score"),
               "pg_url": stack.churn_pg_url, "redis_url": stack.redis_url, "ancestors": ancestors,
               "admin_url": services.pg_url("stack_local"),
               "started_ms": started_ms}


def test_retrain_registers_a_tpot_candidate_under_local_executor(local_run):
    conn = psycopg2.connect(local_run["pg_url"])
    with conn.cursor() as cur:
        cur.execute("SELECT model_name, status, params->>'pipelines_scored', params->>'n_jobs' "
                    "FROM churn.model_registry WHERE run_key = %s", (AS_OF.isoformat(),))
        models = {row[0]: row[1:] for row in cur.fetchall()}
    conn.close()
    assert "tpot" in models, models
    status, pipelines_scored, n_jobs = models["tpot"]
    assert int(pipelines_scored) >= 1 and n_jobs == "2"  # the default local Dask cluster of 2 processes
    assert any(s == "champion" for s, *_ in models.values())
    train = next(t for t in local_run["tis"] if t["task_id"] == "train")
    assert train["try_number"] == 1  # succeeded at the first try: no "Nanny failed to start"


def test_scoring_ran_as_mapped_partitions_and_merged(local_run):
    parts = [t for t in local_run["tis"] if t["task_id"] == "score_partition"]
    assert sorted(t["map_index"] for t in parts) == [0, 1]
    assert all(t["state"] == "success" for t in parts)
    scored = local_run["score_xcom"]
    assert scored["partitions"] == 2
    # the progress printed while the run went on named every stage as it finished
    assert any("score_partition[1]" in line and "success" in line for line in local_run["progress"])
    assert any(line.split()[0] == "report" and "success" in line for line in local_run["progress"])


def test_scores_are_readable_in_postgres_and_redis(local_run):
    rows = scores_by_customer(local_run["pg_url"])
    assert len(rows) == local_run["score_xcom"]["rows"] > 1000
    # global deciles over the merged partitions: ten equal-sized groups (ties aside)
    counts = {}
    for _, _, decile, _, _ in rows.values():
        counts[decile] = counts.get(decile, 0) + 1
    assert sorted(counts) == list(range(1, 11)) and max(counts.values()) - min(counts.values()) <= 0.02 * len(rows)
    client = redis.Redis.from_url(local_run["redis_url"])
    for customer in list(rows)[:200]:
        record = lookup_score(client, customer)
        assert record is not None and record["run_id"] == AS_OF.isoformat()
        assert abs(record["churn_probability"] - rows[customer][0]) < 1e-6
        assert record["risk_decile"] == rows[customer][2]
    assert client.hget("churn:meta", "run_id") == AS_OF.isoformat().encode()


def test_a_complaint_is_rescored_by_the_scheduler_within_seconds(local_run):
    """Triggerer (AssetWatcher on the outbox) -> asset event -> churn_rescore run under LocalExecutor -> stores."""
    # the source application's writes (and the DBA's trigger install) are not the pipeline's role
    lag = complaint_reaches_both_stores(local_run["stack"], local_run["admin_url"], local_run["redis_url"])
    print(f"complaint committed -> event score in Redis: {lag:.1f} s")


def test_an_event_added_to_the_stream_is_rescored_by_the_scheduler_and_acknowledged(local_run):
    """Triggerer (StreamTrigger, the second AssetWatcher) -> churn_rescore run -> both stores -> XACK -> trim."""
    from churn.data import event_stream

    stack = local_run["stack"]
    stack.unpause("churn_rescore")
    conn = psycopg2.connect(local_run["admin_url"])
    with conn.cursor() as cur:
        cur.execute("SELECT customer_id FROM churn.scores_current WHERE source = 'batch' ORDER BY customer_id DESC "
                    "LIMIT 1")
        (customer,) = cur.fetchone()
    conn.close()
    client = redis.Redis.from_url(local_run["redis_url"])
    entry = client.xadd(STREAM, {"customer_id": customer, "kind": "plan_change"})
    started = time.monotonic()
    record = None
    while time.monotonic() - started < 240:
        record = lookup_score(client, customer)
        if record and record.get("source") == "event":
            break
        time.sleep(0.5)
    assert record and record.get("source") == "event", (record, stack.dag_runs("churn_rescore"))
    lag = time.monotonic() - started
    deadline = time.monotonic() + 120  # acknowledged (and trimmed) once both stores hold the score
    # XACK and the trim are two commands: wait for both (a CI run once looked between them)
    while time.monotonic() < deadline and (client.xpending(STREAM, event_stream.GROUP)["pending"]
                                           or entry in [e[0] for e in client.xrange(STREAM)]):
        time.sleep(0.5)
    assert client.xpending(STREAM, event_stream.GROUP)["pending"] == 0
    assert entry not in [e[0] for e in client.xrange(STREAM)]  # trimmed
    client.close()
    print(f"stream event -> event score in Redis: {lag:.1f} s")


def test_state_files_are_private_and_the_admin_password_is_in_no_log(local_run):
    """Item 13: 0700 folders, nothing readable by others after a run, ancestors untouched, no password in a log."""
    stack = local_run["stack"]
    for folder in (stack.state_dir, stack.home, stack.run_dir):
        assert folder.stat().st_mode & 0o777 == 0o700, folder
    assert stack.password_file.stat().st_mode & 0o777 == 0o600
    readable = [str(p) for p in stack.state_dir.rglob("*") if not p.is_symlink() and p.stat().st_mode & 0o077]
    assert not readable, readable[:20]
    assert {p: p.stat().st_mode for p in local_run["ancestors"]} == local_run["ancestors"]
    assert any((stack.state_dir / "runs").rglob("*")), "the run wrote nothing into the state folder"
    password = stack.password()
    logs = [p for p in stack.state_dir.rglob("*.log") if p.is_file()]
    assert logs and not [str(p) for p in logs if password in p.read_text(errors="replace")]


def test_the_platform_redis_user_was_refused_nothing(local_run, services):
    """The whole run (publish, lookups, event re-score) needed no command the ACL keeps from the platform."""
    admin = redis.Redis.from_url(services.redis_admin_url())
    denied = [e for e in admin.acl_log(count=1000) if e.get("username") == "churn"
              and float(e.get("timestamp-last-updated", 0)) >= local_run["started_ms"]]
    assert not denied, denied


def test_each_arm_is_served_its_model_and_a_person_decides_the_experiment_under_the_scheduler(local_run):
    """The nightly (real scheduler) served every customer its arm's model; its report's asset event ran
    churn_experiment_decision (nothing to decide yet); once a judged night shows the sample size, a run waits
    for a person, whose answer given through the REST API is carried out through the registry."""
    import json

    from churn.dev.airflow_api import http_json
    from churn.experiments.decisions import PROMOTE

    admin = local_run["admin_url"]
    conn = psycopg2.connect(admin)
    with conn.cursor() as cur:
        cur.execute("SELECT c.arm, c.model_version, count(*) FROM churn.scores_current c JOIN "
                    "churn.experiment_assignments a ON a.customer_id = c.customer_id AND a.experiment_id = %s "
                    "AND a.arm = c.arm WHERE c.experiment = %s GROUP BY 1, 2", (EXPERIMENT, EXPERIMENT))
        served = {(arm, version): n for arm, version, n in cur.fetchall()}
        cur.execute("SELECT version FROM churn.model_champion")
        (champion,) = cur.fetchone()
        cur.execute("SELECT model_name, version FROM churn.model_registry WHERE model_name IN "
                    "('logistic_baseline', 'hist_gradient_boosting')")
        versions = dict(cur.fetchall())
        cur.execute("SELECT count(*) FROM churn.scores_current")
        (total,) = cur.fetchone()
    conn.commit()
    arm_models = {"control": champion, "logistic": versions["logistic_baseline"],
                  "boosting": versions["hist_gradient_boosting"], "holdout": champion}
    assert {arm: v for arm, v in served} == arm_models
    assert len(set(arm_models.values())) >= 2  # one challenger at least is not the champion
    assert sum(served.values()) == total  # every customer, in its stored arm, served its arm's model
    stack = local_run["stack"]
    token = stack.token()
    decision_dag = "churn_experiment_decision"
    base = f"{stack.base_url}/api/v2/dags/{decision_dag}"
    first, deadline = [], time.monotonic() + 180  # the report's asset event: scheduled right after the night
    while time.monotonic() < deadline and not (first and first[0].get("state") in ("success", "failed")):
        first = stack.dag_runs(decision_dag)
        time.sleep(1)
    assert [(r["run_type"], r["state"]) for r in first] == [("asset_triggered", "success")], first
    skipped = {t["task_id"]: t["state"] for t in stack.task_instances(first[0]["dag_run_id"], token,
                                                                        dag_id=decision_dag)}
    assert skipped == {"find_decision": "success", "decide": "skipped", "apply": "skipped"}, skipped
    # a judged night whose arms hold the sample size; the best ROC AUC goes to a challenger not the champion
    winner = next(arm for arm in ("boosting", "logistic") if arm_models[arm] != champion)
    result = {"arms": [{"arm": a, "customers": 5000, "churn_rate": 0.1, "roc_auc": 0.8 if a == winner else 0.7,
                        "pr_auc": None, "brier": 0.1, "reliability": [], "top_k_precision": 0.3}
                       for a in arm_models], "comparisons": []}
    with conn.cursor() as cur:
        cur.execute("INSERT INTO churn.experiment_results (experiment_id, scored_on, evaluated_on, customers, "
                    "withheld, result) VALUES (%s, %s, %s, 20000, NULL, %s)",
                    (EXPERIMENT, AS_OF, AS_OF, json.dumps(result)))
    conn.commit()
    status, body = http_json(f"{base}/dagRuns", token, {"logical_date": None})
    assert status in (200, 201), body
    run_id = body["dag_run_id"]
    decide, tis, deadline = {}, {}, time.monotonic() + 300
    while time.monotonic() < deadline:
        tis = {t["task_id"]: t for t in stack.task_instances(run_id, token, dag_id=decision_dag)}
        decide = tis.get("decide") or {}
        if decide.get("state") in ("awaiting_input", "deferred", "failed", "skipped", "upstream_failed"):
            break
        time.sleep(1)
    assert decide.get("state") in ("awaiting_input", "deferred"), tis  # waiting for a person
    request = stack.xcom(run_id, "find_decision", dag_id=decision_dag)
    assert (request["experiment_id"], request["winner_arm"], request["winner_model"], request["champion"]) == (
        EXPERIMENT, winner, arm_models[winner], champion)
    quoted = urllib.parse.quote(run_id, safe="")
    status, body = http_json(f"{base}/dagRuns/{quoted}/taskInstances/decide/-1/hitlDetails", token,
                             {"chosen_options": [PROMOTE], "params_input": {}}, method="PATCH")
    assert status == 200, body
    stack.dag_id, nightly = decision_dag, stack.dag_id
    try:
        state = stack.wait_run(run_id, timeout=300)
    finally:
        stack.dag_id = nightly
    assert state == "success", stack.task_instances(run_id, token, dag_id=decision_dag)
    with conn.cursor() as cur:
        cur.execute("SELECT decision, arm, model_version, decided_by FROM churn.experiment_decisions")
        decisions = cur.fetchall()
        cur.execute("SELECT version FROM churn.model_champion")
        (now_champion,) = cur.fetchone()
        cur.execute("SELECT kind, actor, version FROM churn.promotions ORDER BY id DESC LIMIT 1")
        last_promotion = cur.fetchone()
    conn.close()
    assert decisions == [("promote", winner, arm_models[winner], "admin")]
    assert now_champion == arm_models[winner] and last_promotion == ("experiment", "admin", arm_models[winner])
