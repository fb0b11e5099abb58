"""The Churn page (plugins/churn_ui.py) without a database: file serving is confined, rollback tokens are bound
to the session, values are escaped. Its data against a real Postgres:
tests/integration/test_monitoring_churn_page.py."""

from __future__ import annotations

from tests.support.churn_ui import http_app


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


def test_confirmation_page_carries_values_only_as_escaped_attributes(churn_ui):
    from churn.model.registry import ModelRecord

    sneaky = "v');alert(1);//<x>"
    html = churn_ui.render_confirm(ModelRecord(sneaky, "r", "tpot", "refused", "why <b>", {"roc_auc": 0.8}, {},
                                               "/x", "sha"), "v0", "jwt-of-alice")
    assert "onsubmit" not in html and "alert(1)" not in html.split("<script>")[1]
    assert "v&#39;);alert(1);//&lt;x&gt;" in html and "why &lt;b&gt;" in html
    assert churn_ui.csrf_token("jwt-of-alice", "rollback:" + sneaky) in html


def test_file_routes_refuse_traversal_over_http(tmp_path, monkeypatch):
    """The plugin's FastAPI file routes refuse every way out of one run's folder."""
    from fastapi.testclient import TestClient

    module, app = http_app(monkeypatch)
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
