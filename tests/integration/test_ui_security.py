"""Nothing built from data becomes active content on the Airflow origin (plugins/churn_ui.py, issue 26 item 11).

The plugin's own pages, filled from a real Postgres, carry a strict Content-Security-Policy that allows only their
own inline code (by hash) and nothing from other hosts; run files served sandboxed are in
tests/unit/test_ui_security.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re

from churn.db import ensure_schema
from tests.support.churn_ui import EXTERNAL_ASSET, HOSTILE, RUN_KEY, STEAL, directives, http_app


def _inline_hashes(html: str, tag: str) -> set[str]:
    bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
    return {"'sha256-" + base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() + "'" for b in bodies}


def _assert_strict_page(response) -> None:
    """A page of our own: strict CSP that admits exactly its own inline code, nothing external, never sniffed."""
    assert response.headers.get("x-content-type-options") == "nosniff"
    header = response.headers.get("content-security-policy", "")
    policy = directives(header)
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
    _, app = http_app(monkeypatch, "churn_ui_security")
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
