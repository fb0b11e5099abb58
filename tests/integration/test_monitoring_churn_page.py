"""The Churn page's data and HTML (plugins/churn_ui.py) against a real Postgres; file serving is confined."""

from __future__ import annotations

import importlib.util
import json

import psycopg2
import pytest

from churn.db import ensure_schema
from churn.monitoring import RunMetrics, record_run
from tests.support import REPO_ROOT


@pytest.fixture(scope="module")
def churn_ui():
    spec = importlib.util.spec_from_file_location("churn_ui_under_test", REPO_ROOT / "plugins" / "churn_ui.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def test_only_reports_and_docs_of_a_run_folder_are_served(churn_ui, tmp_path, monkeypatch):
    monkeypatch.setenv("CHURN_STATE_DIR", str(tmp_path))
    run = tmp_path / "runs" / "2026-11-20"
    (run / "data_docs").mkdir(parents=True)
    (run / "report.html").write_text("<h1>r</h1>")
    (run / "data_docs" / "index.html").write_text("docs")
    (run / "scores.parquet").write_bytes(b"PAR1")
    secret = tmp_path / "secret.html"  # servable suffix, inside the state folder, but outside every run folder
    secret.write_text("outside runs but inside state")
    (tmp_path / "runs" / "other.html").write_text("beside the run folders")
    assert secret.is_file() and (tmp_path / "runs" / "other.html").is_file()
    assert churn_ui.run_file("2026-11-20", "report.html") == (run / "report.html").resolve()
    assert churn_ui.run_file("2026-11-20", "data_docs", "index.html") is not None
    assert churn_ui.run_file("2026-11-20", "scores.parquet") is None  # data is never served
    assert churn_ui.run_file("2026-11-20", "..", "..", "..", "etc", "passwd") is None
    assert churn_ui.run_file("missing", "report.html") is None
    # runs/../<file> and friends: never a file outside one run's folder
    assert churn_ui.run_file("..", "secret.html") is None
    assert churn_ui.run_file("2026-11-20", "..", "..", "secret.html") is None
    assert churn_ui.run_file("2026-11-20", "..", "other.html") is None
    assert churn_ui.run_file(".", "other.html") is None
    assert churn_ui.run_file("2026-11-20/..", "other.html") is None


def test_rollback_token_is_bound_to_the_session_and_the_version(churn_ui):
    token = churn_ui.csrf_token("jwt-of-alice", "rollback:v1")
    assert churn_ui.csrf_ok("jwt-of-alice", "rollback:v1", token)
    assert not churn_ui.csrf_ok("jwt-of-mallory", "rollback:v1", token)  # another session
    assert not churn_ui.csrf_ok("jwt-of-alice", "rollback:v2", token)  # another version
    assert not churn_ui.csrf_ok(None, "rollback:v1", token) and not churn_ui.csrf_ok("jwt-of-alice", "rollback:v1", "")
    assert churn_ui.session_credential({"authorization": "Bearer abc"}, {"_token": "def"}) == "abc"
    assert churn_ui.session_credential({}, {"_token": "def"}) == "def"
    assert churn_ui.session_credential({}, {}) is None


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


def test_confirmation_page_carries_values_only_as_escaped_attributes(churn_ui):
    from churn.model.registry import ModelRecord

    sneaky = "v');alert(1);//<x>"
    html = churn_ui.render_confirm(ModelRecord(sneaky, "r", "tpot", "refused", "why <b>", {"roc_auc": 0.8}, {},
                                               "/x", "sha"), "v0", "jwt-of-alice")
    assert "onsubmit" not in html and "alert(1)" not in html.split("<script>")[1]
    assert "v&#39;);alert(1);//&lt;x&gt;" in html and "why &lt;b&gt;" in html
    assert churn_ui.csrf_token("jwt-of-alice", "rollback:" + sneaky) in html


def _http_app(monkeypatch):
    """The plugin's FastAPI app with Airflow's access check and user stubbed (the browser test covers the real login)."""
    import airflow.api_fastapi.core_api.security as security

    monkeypatch.setattr(security, "requires_access_dag", lambda *a, **k: (lambda: None))
    spec = importlib.util.spec_from_file_location("churn_ui_http", REPO_ROOT / "plugins" / "churn_ui.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    app = module._build_app()

    class User:
        def get_name(self) -> str:
            return "alice"

    app.dependency_overrides[security.get_user] = lambda: User()
    return module, app


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
    module, app = _http_app(monkeypatch)
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
    module, app = _http_app(monkeypatch)
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


def test_file_routes_refuse_traversal_over_http(tmp_path, monkeypatch):
    """The plugin's FastAPI file routes refuse every way out of one run's folder."""
    from fastapi.testclient import TestClient

    module, app = _http_app(monkeypatch)
    monkeypatch.setenv("CHURN_STATE_DIR", str(tmp_path))
    run = tmp_path / "runs" / "2026-11-20"
    run.mkdir(parents=True)
    (run / "report.html").write_text("<h1>Churn run 2026-11-20</h1>")
    (tmp_path / "secret.html").write_text("SECRET outside the run folders")
    client = TestClient(app)
    ok = client.get("/runs/2026-11-20/report")
    assert ok.status_code == 200 and "Churn run 2026-11-20" in ok.text
    for url in ("/runs/../secret.html", "/runs/%2E%2E/secret.html", "/runs/2026-11-20/..%2F..%2Fsecret.html",
                "/runs/2026-11-20/../../secret.html", "/runs/..%2Fsecret.html/x"):
        response = client.get(url)
        assert response.status_code == 404 and "SECRET" not in response.text, url
