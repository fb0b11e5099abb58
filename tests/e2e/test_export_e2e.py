"""End to end: ``airflow dags test churn_nightly`` delivers the configured exports to a real SFTP server.

Real Airflow (subprocess), real Postgres/Redis, and an asyncssh SFTP server on loopback
reached through ``AIRFLOW_CONN_CHURN_SFTP`` (key file auth, pinned host key). An experiments file declares a
holdout arm: its customers are assigned, and left out of every file (issue 27).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from datetime import date

import psycopg2
import pytest

from tests.support.airflow_env import airflow_env, run_airflow
from tests.support.servers import fresh_stores
from tests.support.sftp_server import SftpTestServer, SshKeys

RUN_DATE = date(2026, 11, 21)
EXPORTS = [
    {"name": "high_risk", "band": "high"},
    {"name": "top_decile", "min_decile": 10, "gzip": True,
     "columns": ["customer_id", "churn_probability", "risk_decile", "run_date", "model_version", "email", "plan",
                 "experiment_arms"]},
]
EXPERIMENTS = """\
experiments:
  - id: retention-email
    salt: "2026-11"
    start: 2026-11-01
    arms:
      - {name: contacted, weight: 80, model: champion}
      - {name: holdout, weight: 20, model: champion, contact: false}
  - id: next-year
    salt: "x"
    start: 2027-01-01
    arms: [{name: a, weight: 1, model: champion}, {name: b, weight: 1, model: champion}]
"""


@pytest.fixture(scope="module")
def nightly_with_sftp(services, tmp_path_factory, pg_admin_url):
    tmp = tmp_path_factory.mktemp("e2e_export")
    pg_url, redis_url = fresh_stores(services, pg_admin_url, "e2e_export", 5, customers=3000, as_of=RUN_DATE,
                                     seed=33)
    (tmp / "keys").mkdir()
    host, user = SshKeys.generate(tmp / "keys", "host"), SshKeys.generate(tmp / "keys", "user")
    (tmp / "sftp_root").mkdir()
    (tmp / "experiments.yaml").write_text(EXPERIMENTS)
    server = SftpTestServer(tmp / "sftp_root", host.private_path, user.public_line).start()
    # Baseline only (no TPOT search): this test is about the export and its delivery, and stays fast.
    env = airflow_env(tmp, pg_url, redis_url, train_tpot="false", min_roc_auc="0.5", exports=json.dumps(EXPORTS),
                      export_remote_dir="outbound/churn", export_retry_seconds="0.5",
                      experiments_file=str(tmp / "experiments.yaml"))
    env["AIRFLOW_CONN_CHURN_SFTP"] = server.connection_json(user, host.public_line)
    try:
        migrate = run_airflow(["db", "migrate"], env, tmp / "migrate.log")
        assert migrate.returncode == 0, (tmp / "migrate.log").read_text()[-3000:]
        proc = run_airflow(["dags", "test", "churn_nightly", RUN_DATE.isoformat()], env, tmp / "dags-test.log")
    finally:
        server.stop()
    log = (tmp / "dags-test.log").read_text()
    assert proc.returncode == 0 and "state=success" in log, log[-5000:]
    return {"pg_url": pg_url, "state": tmp / "state", "root": tmp / "sftp_root", "server": server}


def test_nightly_run_delivers_the_configured_exports_over_sftp(nightly_with_sftp):
    run_key = RUN_DATE.isoformat()
    summary = json.loads((nightly_with_sftp["state"] / "runs" / run_key / "summary.json").read_text())
    port = nightly_with_sftp["server"].port
    assert summary["export_delivered_to"] == f"sftp://journeys@127.0.0.1:{port}/~/outbound/churn"
    remote = nightly_with_sftp["root"] / "outbound" / "churn"
    names = [f"churn_high_risk_{run_key}.csv", f"churn_top_decile_{run_key}.csv.gz"]
    assert sorted(p.name for p in remote.iterdir()) == sorted(names + [n + ".manifest.json" for n in names])
    conn = psycopg2.connect(nightly_with_sftp["pg_url"])
    with conn.cursor() as cur:
        held = ("s.customer_id IN (SELECT customer_id FROM churn.experiment_assignments "
                "WHERE experiment_id = 'retention-email' AND arm = 'holdout')")
        cur.execute(f"SELECT count(*) FILTER (WHERE risk_band = 'high' AND NOT {held}), "
                    f"count(*) FILTER (WHERE risk_decile = 10 AND NOT {held}), "
                    f"count(*) FILTER (WHERE risk_band = 'high' AND {held}), "
                    f"count(*) FILTER (WHERE risk_decile = 10 AND {held}), count(*) FROM churn.scores_current s")
        high, top, high_held, top_held, scored = cur.fetchone()
        cur.execute("SELECT experiment_id, arm, count(*) FROM churn.experiment_assignments GROUP BY 1, 2 ORDER BY 1, 2")
        arms = {(e, a): n for e, a, n in cur.fetchall()}
        cur.execute("SELECT experiment_id, night, counts, flagged FROM churn.experiment_splits")
        splits = cur.fetchall()
        cur.execute("SELECT customer_id FROM churn.experiment_assignments WHERE arm = 'holdout'")
        holdout_ids = {r[0] for r in cur.fetchall()}
    conn.close()
    # every scored customer has an arm of the active experiment (about 20 % held out); the one not yet
    # started assigns nobody; the split is recorded and, being the weights' own, not flagged
    assert set(arms) == {("retention-email", "contacted"), ("retention-email", "holdout")}
    assert sum(arms.values()) == scored and 0.15 < arms[("retention-email", "holdout")] / scored < 0.25
    assert [(e, n.isoformat(), c, f) for e, n, c, f in splits] == [
        ("retention-email", run_key, {"contacted": arms[("retention-email", "contacted")],
                                      "holdout": arms[("retention-email", "holdout")]}, False)]
    assert high_held > 0 and top_held > 0
    for name, expected, excluded in zip(names, (high, top), (high_held, top_held)):
        raw = (remote / name).read_bytes()
        assert raw == (nightly_with_sftp["state"] / "exports" / name).read_bytes()
        manifest = json.loads((remote / f"{name}.manifest.json").read_text())
        assert manifest["sha256"] == hashlib.sha256(raw).hexdigest() and manifest["rows"] == expected
        assert manifest["run_id"] == run_key and manifest["model_version"] == summary["champion"]
        assert manifest["holdout_excluded"] == excluded and manifest["holdout_arms"] == ["retention-email/holdout"]
        text = (gzip.decompress(raw) if name.endswith(".gz") else raw).decode("utf-8")
        rows = list(csv.reader(io.StringIO(text, newline="")))
        assert len(rows) == expected + 1
        assert not {r[0] for r in rows[1:]} & holdout_ids  # no held-out customer is ever in a contact list
        if "experiment_arms" in rows[0]:  # the arm each contacted customer is in
            column = rows[0].index("experiment_arms")
            assert {r[column] for r in rows[1:]} == {"retention-email=contacted"}
    assert top > 0 and high > 0 and summary["export_rows"] == high
