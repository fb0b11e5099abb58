"""Nothing built from data becomes active content on the Airflow origin (plugins/churn_ui.py, issue 26 item 11).

Run files (the report, GX Data Docs) are served sandboxed and never sniffed, and templates load nothing from other
hosts; the plugin's own pages (strict Content-Security-Policy, values from Postgres) are checked in
tests/integration/test_ui_security.py.
"""

from __future__ import annotations

import pytest

from tests.support import REPO_ROOT
from tests.support.churn_ui import EXTERNAL_ASSET, HOSTILE, RUN_KEY, STEAL, directives, http_app


def _assert_sandboxed(response) -> None:
    assert response.headers.get("x-content-type-options") == "nosniff", dict(response.headers)
    policy = directives(response.headers.get("content-security-policy", ""))
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

    _, app = http_app(monkeypatch, "churn_ui_security")
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

    module, app = http_app(monkeypatch, "churn_ui_security")
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
