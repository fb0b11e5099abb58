"""The Churn page's data and HTML (plugins/churn_ui.py) against a real Postgres (file serving and tokens without
a database: tests/unit/test_monitoring_churn_page.py)."""

from __future__ import annotations

import json

import psycopg2
import pytest

from churn.db import ensure_schema
from churn.monitoring import RunMetrics, record_run
from tests.support.churn_ui import http_app


def _model(cur, version, status, auc, reason):
    cur.execute(
        """INSERT INTO churn.model_registry (version, run_key, model_name, status, reason, metrics, params, signature,
               artifact_path, artifact_sha256, data_fingerprint, code_version)
           VALUES (%s, %s, 'tpot', %s, %s, %s, '{}', '{}', '/x', 'sha', 'fp', 'test')""",
        (version, version[:10], status, reason, json.dumps({"roc_auc": auc, "pr_auc": 0.5, "brier": 0.1})),
    )


def test_overview_lists_versions_runs_drift_and_links(churn_ui, pg_conn, monkeypatch):
    ensure_schema(pg_conn)
    with pg_conn.cursor() as cur:
        _model(cur, "2026-11-19-tpot", "retired", 0.81, "first model")
        _model(cur, "2026-11-20-tpot", "champion", 0.83, "better <b>")
        _model(cur, "2026-11-20-logistic_baseline", "refused", 0.70, "lower validation ROC AUC than tpot")
        cur.execute("INSERT INTO churn.model_champion (version, reason) VALUES ('2026-11-20-tpot', 'promoted')")
        cur.execute("INSERT INTO churn.pipeline_runs (run_key, airflow_run_id, status) VALUES "
                    "('2026-11-20', 'manual__x', 'success'), ('2026-11-21', 'scheduled__y', 'running')")
        cur.execute("INSERT INTO churn.realized_performance VALUES ('2026-10-21', '2026-11-20-tpot', '2026-11-20', "
                    "900, 80, 0.77, 0.83, now())")
        cur.execute("INSERT INTO churn.drift_metrics (run_key, feature, kind, psi, reference_version, reference_rows, "
                    "current_rows) VALUES ('2026-11-20', 'tenure', 'numeric', 0.35, 'v', 10, 10), "
                    "('2026-11-20', 'plan', 'categorical', 0.01, 'v', 10, 10)")
    pg_conn.commit()
    record_run(pg_conn, RunMetrics("2026-11-20", "2026-11-20-tpot", False, 1800, 5, 900, 900, {"score": 1.0},
                                   None, 0.031, "2026-11-19", "/state/runs/2026-11-20/report.html"))
    monkeypatch.setenv("CHURN_DRIFT_PSI_THRESHOLD", "0.2")
    data = churn_ui.load_overview(pg_conn)
    assert data["champion"]["version"] == "2026-11-20-tpot"
    assert [m["version"] for m in data["models"]][0].startswith("2026-11-20")
    runs = {r["run_key"]: r for r in data["runs"]}
    assert runs["2026-11-20"]["rows_published"] == 900 and runs["2026-11-20"]["drifted_features"] == 1
    assert runs["2026-11-20"]["max_feature_psi"] == pytest.approx(0.35)
    assert runs["2026-11-21"]["report_path"] is None

    page = churn_ui.render_overview(data, message="champion is now x")
    assert '<b id="champion">2026-11-20-tpot</b>' in page
    assert "better &lt;b&gt;" in page  # registry text is escaped
    assert "0.7700 (scores of 2026-10-21)" in page
    assert '/churn/rollback/2026-11-19-tpot' in page and '/churn/rollback/2026-11-20-tpot' not in page
    assert '/churn/runs/2026-11-20/report' in page and '/churn/runs/2026-11-21/report' not in page
    assert "/churn/runs/2026-11-20/data_docs/index.html" in page
    assert "0.3500 / 1" in page and "refused" in page and "champion is now x" in page


def test_overview_shows_event_refresh_activity(churn_ui, pg_conn, fresh_pg_url):
    from churn.data import outbox

    ensure_schema(pg_conn)
    page = churn_ui.render_overview(churn_ui.load_overview(pg_conn))
    assert "No re-score outbox installed" in page
    outbox.enqueue(pg_conn, ["C1", "C2", "C3"])
    claimed = outbox.claim(pg_conn, "page-test", 2, lease_seconds=60)
    outbox.complete(pg_conn, "page-test", {e.event_id: "rescored" for e in claimed})
    data = churn_ui.load_overview(pg_conn)
    assert (data["refresh"]["waiting"], data["refresh"]["rescored_last_window"]) == (1, 2)
    page = churn_ui.render_overview(data)
    assert '<td data-field="waiting">1</td>' in page and '<td data-field="rescored">2</td>' in page
    # a SQL source's outbox lives in the team's database: the page reads the activity there
    other = psycopg2.connect(fresh_pg_url.rsplit("/", 1)[0] + "/postgres")
    try:
        assert churn_ui.load_overview(pg_conn, outbox_conn=other)["refresh"]["installed"] is False
    finally:
        other.close()


def test_page_reads_never_create_the_schema(churn_ui, pg_conn):
    from churn.model import registry

    assert churn_ui.schema_ready(pg_conn) is False
    assert registry.champion(pg_conn) is None
    with pytest.raises(registry.RegistryError, match="no model registered yet"):
        registry.get(pg_conn, "2026-11-20-tpot-abc123")
    with pg_conn.cursor() as cur:
        cur.execute("SELECT to_regnamespace('churn') IS NULL")
        assert cur.fetchone()[0] is True  # the reads above ran no DDL
    ensure_schema(pg_conn)
    assert churn_ui.schema_ready(pg_conn) is True


def test_rollback_over_http_needs_the_session_bound_token(pg_conn, fresh_pg_url, tmp_path, monkeypatch):
    import re

    from fastapi.testclient import TestClient

    from churn.model import registry

    ensure_schema(pg_conn)
    with pg_conn.cursor() as cur:
        _model(cur, "2026-11-19-tpot-aaaaaa", "retired", 0.81, "first model")
        _model(cur, "2026-11-20-tpot-bbbbbb", "champion", 0.83, "better")
        cur.execute("INSERT INTO churn.model_champion (version, reason) VALUES ('2026-11-20-tpot-bbbbbb', 'x')")
    pg_conn.commit()
    monkeypatch.setenv("CHURN_POSTGRES_URL", fresh_pg_url)
    monkeypatch.setenv("CHURN_STATE_DIR", str(tmp_path))
    monkeypatch.setattr(registry, "load_verified", lambda path, sha: (None, None))  # no artifact files here
    module, app = http_app(monkeypatch)
    client = TestClient(app, cookies={"_token": "jwt-of-alice"})
    page = client.get("/rollback/2026-11-19-tpot-aaaaaa")
    assert page.status_code == 200 and "confirm-rollback" in page.text and "onsubmit" not in page.text
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text).group(1)
    url = "/rollback/2026-11-19-tpot-aaaaaa"
    form = {"confirm": "2026-11-19-tpot-aaaaaa"}
    assert client.post(url, data=form, follow_redirects=False).status_code == 403  # no token
    mallory = TestClient(app, cookies={"_token": "jwt-of-mallory"})
    assert mallory.post(url, data={**form, "csrf": token}, follow_redirects=False).status_code == 403
    assert registry.champion(pg_conn).version == "2026-11-20-tpot-bbbbbb"  # nothing moved
    done = client.post(url, data={**form, "csrf": token}, follow_redirects=False)
    assert done.status_code == 303 and "champion+is+now" in done.headers["location"]
    assert registry.champion(pg_conn).version == "2026-11-19-tpot-aaaaaa"
    assert "by alice" in registry.get(pg_conn, "2026-11-19-tpot-aaaaaa").reason


def test_rollback_to_a_refused_version_over_http_needs_a_reason(pg_conn, fresh_pg_url, tmp_path, monkeypatch):
    """The form of an override carries a required reason; without one nothing moves, with one it is recorded."""
    import re
    from urllib.parse import parse_qs, urlsplit

    from fastapi.testclient import TestClient

    from churn.model import registry

    ensure_schema(pg_conn)
    with pg_conn.cursor() as cur:
        _model(cur, "2026-11-20-tpot-bbbbbb", "champion", 0.83, "better")
        _model(cur, "2026-11-20-logistic_baseline-bbbbbb", "refused", 0.70, "lower validation ROC AUC than tpot")
        cur.execute("INSERT INTO churn.model_champion (version, reason) VALUES ('2026-11-20-tpot-bbbbbb', 'x')")
    pg_conn.commit()
    monkeypatch.setenv("CHURN_POSTGRES_URL", fresh_pg_url)
    monkeypatch.setenv("CHURN_STATE_DIR", str(tmp_path))
    monkeypatch.setattr(registry, "load_verified", lambda path, sha: (None, None))  # no artifact files here
    module, app = http_app(monkeypatch)
    client = TestClient(app, cookies={"_token": "jwt-of-alice"})
    url = "/rollback/2026-11-20-logistic_baseline-bbbbbb"
    page = client.get(url)
    assert page.status_code == 200 and "overrides the gate" in page.text
    assert re.search(r'<textarea id="reason" name="reason" required', page.text)
    form = {"confirm": "2026-11-20-logistic_baseline-bbbbbb", "force": "1",
            "csrf": re.search(r'name="csrf" value="([0-9a-f]+)"', page.text).group(1)}

    for missing in ({}, {"reason": "  "}):
        done = client.post(url, data={**form, **missing}, follow_redirects=False)
        error = parse_qs(urlsplit(done.headers["location"]).query)["err"][0]
        assert done.status_code == 303 and "needs a reason" in error
    stale = client.post(url, data={**form, "force": ""}, follow_redirects=False)  # a form without the override
    assert "--force --reason" in parse_qs(urlsplit(stale.headers["location"]).query)["err"][0]
    assert registry.champion(pg_conn).version == "2026-11-20-tpot-bbbbbb"  # nothing moved

    done = client.post(url, data={**form, "reason": "tpot mis-scores new plans"}, follow_redirects=False)
    assert done.status_code == 303 and "champion+is+now" in done.headers["location"]
    assert registry.champion(pg_conn).version == "2026-11-20-logistic_baseline-bbbbbb"
    row = registry.history(pg_conn)[0]
    assert (row["version"], row["previous_champion"], row["actor"], row["reason"], row["kind"], row["forced"]) == (
        "2026-11-20-logistic_baseline-bbbbbb", "2026-11-20-tpot-bbbbbb", "ui:alice", "tpot mis-scores new plans",
        "override", True)


def test_overview_draws_the_trends_and_each_experiments_arms_checks_metrics_and_decisions(churn_ui, pg_conn):
    ensure_schema(pg_conn)
    summary = {"histogram": {"edges": [i / 10 for i in range(11)], "counts": [50, 30, 10, 5, 5, 0, 0, 0, 0, 0]}}
    with pg_conn.cursor() as cur:
        for night, auc_a, auc_b in (("2026-10-20", 0.76, 0.79), ("2026-10-21", 0.77, 0.80)):
            cur.execute("INSERT INTO churn.realized_performance VALUES (%s, 'v1', %s, 900, 80, %s, 0.8, now()), "
                        "(%s, '<script>x</script>', %s, 900, 80, %s, 0.8, now())",
                        (night, night, auc_a, night, night, auc_b))
        cur.execute("INSERT INTO churn.drift_metrics (run_key, feature, kind, psi, reference_version, reference_rows, "
                    "current_rows) VALUES ('2026-11-20', 'tenure', 'numeric', 0.35, 'v', 10, 10), "
                    "('2026-11-21', 'tenure', 'numeric', 0.05, 'v', 10, 10)")
        cur.execute("INSERT INTO churn.experiment_splits VALUES ('exp-ok', '2026-11-21', '2026-11-21', "
                    "'{\"control\": 500, \"holdout\": 55}', 12, 0.4, 0.52, false), ('exp-broken', '2026-11-21', "
                    "'2026-11-21', '{\"a\": 600, \"b\": 400}', 3, 40.0, 0.00001, true)")
        result = {"arms": [{"arm": "control", "roc_auc": 0.78}, {"arm": "holdout", "roc_auc": 0.74}],
                  "comparisons": [{"treated": "control", "holdout": "holdout", "qini": 0.01,
                                   "uplift": {"estimate": 0.02, "low": -0.01, "high": 0.05}}]}
        for night in ("2026-10-20", "2026-10-21"):
            cur.execute("INSERT INTO churn.experiment_results VALUES ('exp-ok', %s, %s, 555, NULL, %s)",
                        (night, night, json.dumps(result)))
        cur.execute("INSERT INTO churn.experiment_results VALUES ('exp-broken', '2026-10-21', '2026-11-21', 1000, "
                    "'sample ratio mismatch (p = 1e-05)', '{}')")
        cur.execute("INSERT INTO churn.experiment_decisions (experiment_id, decided_on, decision, decided_by, "
                    "scored_on, customers, reason) VALUES ('exp-ok', '2026-11-21', 'extend', 'ana', '2026-10-21', "
                    "'{}', 'more data')")
    pg_conn.commit()
    record_run(pg_conn, RunMetrics("2026-11-20", "v1", False, 100, 0, 100, 100, {"score": 1.0}, summary, None,
                                   None, None))
    data = churn_ui.load_overview(pg_conn)
    assert set(data["trends"]) == {"realized", "scores", "drift"}
    page = churn_ui.render_overview(data)
    trends = page[page.index('<div id="trends">'):page.index("<h2>Experiments</h2>")]
    assert trends.count("<svg") == 3 and trends.count("<polyline") >= 3  # two models, the drift line
    assert "&lt;script&gt;x&lt;/script&gt;" in trends and "<script>" not in page  # data never becomes markup
    ok = page[page.index('data-experiment="exp-ok"'):]
    assert '<b>control</b> 500' in ok and 'data-srm="ok"' in ok and ok.count("<svg") == 2
    assert "<polygon" in ok  # the uplift's 95 % interval band over the two nights
    assert "<td>extend</td>" in ok and "<td>ana</td>" in ok[:ok.index("</section>")]
    broken = page[page.index('data-experiment="exp-broken"'):page.index('data-experiment="exp-ok"')]
    assert 'data-srm="flagged"' in broken and "withheld: sample ratio mismatch" in broken
