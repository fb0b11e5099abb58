"""Scheduler tier, issue 26: churn_nightly on seven consecutive logical dates under a real scheduler (LocalExecutor),
for each kind of source a user brings, with retention short enough that the seventh night purges the first.

Sources: the demo tables; a dirty bank-churn file with a 0/1 label and no mapping; a spreadsheet export with a
yes/no label and headers with spaces; a team database read through a role that can only SELECT, with the outbox
triggers installed and the application writing through a role that holds only INSERT on its table. Every night
must succeed, validate the same rows (files), serve its own batch, and leave no more than the retention window.
"""

from __future__ import annotations

import contextlib
import time
from datetime import date, timedelta
from pathlib import Path

import psycopg2
import pytest
import redis
from psycopg2.extras import execute_values

from churn.publish.redis_keys import meta_key
from tests.support.servers import fresh_databases, url_as
from tests.support.field_data import bank_churn, spreadsheet_churn, write_csv
from tests.support.stack_support import NO_SCHEDULED_RUN, failure_details, running_stack

NIGHTS = 7
FIRST = date(2026, 11, 14)
DATES = [FIRST + timedelta(days=i) for i in range(NIGHTS)]
# Retention kept at 3 days (the realized-performance horizon: lag 2 + 1), so nights 1-3 are purged by night 7.
COMMON = {"train_tpot": "false", "export_pmml": "false", "score_partitions": "1", "retention_days": "3",
          "realized_lag_days": "2", "schedule_cron": NO_SCHEDULED_RUN, "label_window_days": "30"}
APP_PASSWORD, READER_PASSWORD = "app-secret-1", "reader-secret-1"
EXPERIMENTS = f"""\
experiments:
  - id: nights-arms
    salt: "n"
    start: {FIRST}
    arms:
      - {{name: control, weight: 50, model: champion}}
      - {{name: challenger, weight: 40, model: logistic_baseline}}
      - {{name: holdout, weight: 10, model: champion, contact: false}}
"""
# The 28 runs (4 sources x 7 nights) share 2 cores: 19-20 min measured here, over 20 min on CI (stop 29 timed
# out at the project-wide 1200 s). pytest-timeout counts the module fixture against the first test that needs it.
pytestmark = pytest.mark.timeout(2700)


def _bank_files(folder: Path) -> dict[str, str]:
    for day in DATES:  # the same delivery every night: the same rows must validate every night
        write_csv(bank_churn(3_000, seed=3), folder / f"Churn_Modelling_{day.isoformat()}.csv")
    return {"source": "file", "file_path": str(folder / "Churn_Modelling_{ds}.csv"), "file_id_column": "CustomerId",
            "file_label_column": "Exited"}


def _sheet_files(folder: Path) -> dict[str, str]:
    for day in DATES:
        write_csv(spreadsheet_churn(2_000, seed=4), folder / f"export {day.isoformat()}.csv")
    return {"source": "file", "file_path": str(folder / "export {ds}.csv"), "file_id_column": "Phone number",
            "file_label_column": "Churn?"}


def _team_database(services, pg_admin_url: str, folder: Path) -> dict[str, str]:
    """The team's CRM database: read by a SELECT-only role; its application writes with INSERT only."""
    from churn.data.outbox import install_triggers
    from tests.support.crm import CORRECT_QUERY, CRM_DDL, crm_tables

    fresh_databases(pg_admin_url, "nights_crm")
    admin_url = services.pg_url("nights_crm")
    tables = crm_tables(accounts=2_000)
    conn = psycopg2.connect(admin_url)
    with conn.cursor() as cur:
        cur.execute(CRM_DDL)
        execute_values(cur, "INSERT INTO crm.accounts VALUES %s", tables["accounts"])
        execute_values(cur, "INSERT INTO crm.tickets (acct_no, opened_at, severity) VALUES %s", tables["tickets"])
        execute_values(cur, "INSERT INTO crm.status_changes (acct_no, new_status, changed_at) VALUES %s",
                       tables["status_changes"])
        for role, password in (("nights_app", APP_PASSWORD), ("nights_reader", READER_PASSWORD)):
            cur.execute(f"DROP ROLE IF EXISTS {role}")
            cur.execute(f"CREATE ROLE {role} LOGIN PASSWORD %s", (password,))
        cur.execute("GRANT USAGE ON SCHEMA crm TO nights_app, nights_reader")
        cur.execute("GRANT INSERT ON crm.tickets TO nights_app")
        cur.execute("GRANT USAGE ON SEQUENCE crm.tickets_ticket_no_seq TO nights_app")
        cur.execute("GRANT SELECT ON ALL TABLES IN SCHEMA crm TO nights_reader")
    conn.commit()
    install_triggers(conn, ["crm.tickets"], "acct_no")  # by the database's administrator, once
    conn.close()
    query = folder / "crm_features.sql"
    query.parent.mkdir(parents=True, exist_ok=True)
    query.write_text(CORRECT_QUERY)
    return {"source": "sql", "source_url": url_as(admin_url, "nights_reader", READER_PASSWORD),
            "source_query": str(query), "file_id_column": "acct_no", "file_label_column": "closed",
            "_app_url": url_as(admin_url, "nights_app", APP_PASSWORD), "_admin_url": admin_url}


SOURCES = ["demo", "bank_file", "sheet_file", "team_sql"]


REDIS_DB = {"demo": 9, "bank_file": 10, "sheet_file": 11, "team_sql": 12}


def _prepare(source: str, services, pg_admin_url: str, tmp: Path) -> tuple[dict, int]:
    """The settings (and demo population) of one source."""
    churn = dict(COMMON)
    if source == "demo":  # with an experiment: assigned, served per arm and judged night after night
        (tmp / "experiments.yaml").write_text(EXPERIMENTS)
        return {**churn, "experiments_file": str(tmp / "experiments.yaml")}, 2_000
    if source == "bank_file":
        churn.update(_bank_files(tmp / "drop"))
    elif source == "sheet_file":
        churn.update(_sheet_files(tmp / "drop"))
    else:
        churn.update(_team_database(services, pg_admin_url, tmp / "sql"))
    return churn, 0


@pytest.fixture(scope="module")
def all_nights(services, pg_admin_url, tmp_path_factory):
    """Seven nights of every source, each under its own scheduler, the four running side by side.

    A night is a chain of tasks that keeps about one core busy, so four stacks at once finish in about
    half the time of one after the other on two cores; each has its own databases, Redis db and state.
    """
    started = time.monotonic()
    out: dict[str, dict] = {}
    with contextlib.ExitStack() as running:
        stacks, extra = {}, {}
        for source in SOURCES:
            tmp = tmp_path_factory.mktemp(f"nights-{source}")
            churn, customers = _prepare(source, services, pg_admin_url, tmp)
            extra[source] = {"app_url": churn.pop("_app_url", None), "admin_url": churn.pop("_admin_url", None),
                             "state_dir": tmp / "state"}
            stacks[source] = running.enter_context(running_stack(
                services, pg_admin_url, tmp, f"nights_{source}", "local", redis_db=REDIS_DB[source],
                as_of=DATES[-1], customers=customers, **churn))
        run_ids: dict[str, list[str]] = {source: [] for source in SOURCES}
        for i, day in enumerate(DATES):
            app_url = extra["team_sql"]["app_url"]
            # the application keeps writing through its INSERT-only role while the nights run
            app = psycopg2.connect(app_url)
            with app.cursor() as cur:
                cur.execute("INSERT INTO crm.tickets (acct_no, opened_at, severity) VALUES ('A000001', now(), 2)")
            app.commit()
            app.close()
            for source, stack in stacks.items():
                run_ids[source].append(stack.trigger(f"{day.isoformat()}T02:00:00Z", {"note": f"night {i + 1}"}))
        for source, stack in stacks.items():
            states, validated, published, failure = [], [], [], None
            for run_id in run_ids[source]:  # max_active_runs=1: one night after the other, in date order
                state = stack.wait_run(run_id, timeout=1200)
                states.append(state)
                if state != "success":
                    failure = failure or failure_details(stack, run_id)
                    continue
                validated.append(stack.xcom(run_id, "profile_and_validate"))
                published.append(stack.xcom(run_id, "publish_postgres"))
            out[source] = {"source": source, "states": states, "validated": validated, "published": published,
                           "failure": failure, "pg_url": stack.churn_pg_url, "redis_url": stack.redis_url,
                           **extra[source]}
        seconds = time.monotonic() - started
        print(f"{len(SOURCES)} sources x {NIGHTS} nights in {seconds:.0f} s")
        yield out


@pytest.fixture(params=SOURCES)
def nights(request, all_nights):
    """What the seven nights of one source left behind."""
    return all_nights[request.param]


def test_every_night_succeeds_and_validates_the_same_rows(nights):
    assert nights["states"] == ["success"] * NIGHTS, nights["failure"]
    checked = [(v["train"]["rows_checked"], v["train"]["rows_quarantined"]) for v in nights["validated"]]
    if nights["source"] != "demo" and nights["source"] != "team_sql":
        assert len(set(checked)) == 1, checked  # the same delivery validates the same way every night
    if nights["source"] == "bank_file":
        assert checked[0][1] == 1  # the '?' label, quarantined every night (not only the first)


def test_the_served_batch_moves_forward_each_night(nights):
    from churn.publish.postgres import run_table

    assert [p["table"] for p in nights["published"]] == [f"churn.{run_table(d.isoformat())}" for d in DATES]
    assert all(p["is_current"] for p in nights["published"])
    conn = psycopg2.connect(nights["pg_url"])
    with conn.cursor() as cur:
        cur.execute("SELECT run_key FROM churn.score_runs WHERE is_current")
        assert cur.fetchone()[0] == DATES[-1].isoformat()
        cur.execute("SELECT count(DISTINCT run_id), min(run_id) FROM churn.scores_current")
        assert cur.fetchone() == (1, DATES[-1].isoformat())
    conn.close()
    client = redis.Redis.from_url(nights["redis_url"])
    meta = {k.decode(): v.decode() for k, v in client.hgetall(meta_key()).items()}
    assert meta.get("run_id") == DATES[-1].isoformat(), meta


def test_nothing_older_than_retention_is_left(nights):
    cutoff = (DATES[-1] - timedelta(days=3)).isoformat()
    runs = sorted(p.name for p in (nights["state_dir"] / "runs").iterdir())
    assert runs and min(runs) >= cutoff, runs
    conn = psycopg2.connect(nights["pg_url"])
    with conn.cursor() as cur:
        cur.execute("SELECT DISTINCT run_key FROM churn.validation_results ORDER BY 1")
        kept = [r[0] for r in cur.fetchall()]
    conn.close()
    assert kept and min(kept) >= cutoff and kept[-1] == DATES[-1].isoformat(), kept


def test_team_database_triggers_never_fail_the_applications_insert_only_writes(all_nights):
    team = all_nights["team_sql"]
    conn = psycopg2.connect(team["admin_url"])
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM churn.rescore_outbox WHERE source_table = 'crm.tickets'")
        assert cur.fetchone()[0] == NIGHTS  # one event per application write, recorded through the trigger
    conn.close()


def test_the_experiment_is_assigned_served_and_judged_on_matured_labels_night_after_night(all_nights):
    """Demo source with an experiment: every night assigns (a frozen split, checked), serves each customer its
    arm's model, and from the night the labels of the first matured (lag 2) judges it from the generator's churn."""
    demo = all_nights["demo"]
    assert demo["states"] == ["success"] * NIGHTS, demo["failure"]
    conn = psycopg2.connect(demo["admin_url"] or demo["pg_url"])
    with conn.cursor() as cur:
        cur.execute("SELECT night, flagged FROM churn.experiment_splits WHERE experiment_id = 'nights-arms' "
                    "ORDER BY night")
        # each night's split, unflagged; those older than the retention window (3 days) are purged with it
        assert cur.fetchall() == [(d, False) for d in DATES if d >= DATES[-1] - timedelta(days=3)]
        cur.execute("SELECT scored_on, evaluated_on, withheld, customers, result FROM churn.experiment_results "
                    "WHERE experiment_id = 'nights-arms' ORDER BY scored_on")
        results = cur.fetchall()
        cur.execute("SELECT c.arm, count(*), count(DISTINCT c.model_version), min(c.model_version) FROM "
                    "churn.scores_current c JOIN churn.experiment_assignments a USING (customer_id) "
                    "WHERE a.experiment_id = 'nights-arms' AND a.arm = c.arm GROUP BY 1")
        served = {arm: (n, models, version) for arm, n, models, version in cur.fetchall()}
        cur.execute("SELECT count(*) FROM churn.scores_current")
        (total,) = cur.fetchone()
        cur.execute("SELECT version FROM churn.model_registry WHERE model_name = 'logistic_baseline' "
                    "ORDER BY run_key LIMIT 1")
        (logistic,) = cur.fetchone()
    conn.close()
    # nights 3..7 judged the scores of nights 1..5 (lag 2), each on outcomes that matured since
    assert [(r[0], r[1]) for r in results] == [(DATES[i], DATES[i + 2]) for i in range(NIGHTS - 2)]
    for scored_on, _, withheld, customers, result in results:
        assert withheld is None and customers > 100, (scored_on, withheld, customers)
        arms = {a["arm"]: a for a in result["arms"]}
        assert set(arms) == {"control", "challenger", "holdout"} and all(a["customers"] > 0 for a in arms.values())
    assert sum(n for n, _, _ in served.values()) == total  # every customer in its stored arm
    assert served["challenger"][1:] == (1, logistic)  # the first logistic candidate, frozen for the experiment
