"""Airflow 3 plugin: a "Churn" page in the Airflow UI (model versions, rollback, recent runs, reports).

The page is a small FastAPI app mounted by the api-server at ``/churn`` and shown in the UI's
navigation as an external view (an iframe inside Airflow's own layout). Every route needs
Airflow's login: the JWT the UI keeps in its ``_token`` cookie (or a Bearer token) is checked
by Airflow's own ``get_user`` dependency and the caller must be allowed to read (or, for a
rollback, edit) the ``churn_nightly`` DAG. Data comes from the platform's Postgres tables.

Nothing built from data becomes active content on the Airflow origin (where ``/api/v2`` answers with
the viewer's session): every response is ``nosniff``; run files (the report, GX Data Docs) and anything
else the app answers are served under ``RUN_FILE_CSP`` (a bare CSP ``sandbox``: no script runs, the page
gets an opaque origin, nothing loads from another host); only pages rendered from our own autoescaped
templates get ``churn.templating.page_csp()``, which admits just their own hash-pinned inline code.

Import-time cost is kept small: database drivers, the registry and pandas load inside handlers.
"""

# No ``from __future__ import annotations`` here: FastAPI must see the route parameters' real types
# (Request, GetUserDep), which are imported inside _build_app and would not resolve as strings.
import hashlib
import hmac
import re

from airflow.plugins_manager import AirflowPlugin

DAG_ID = "churn_nightly"
URL_PREFIX = "/churn"
# Files the page may serve from the state folder: reports and GX Data Docs, never data or models. No
# ``.js``: a page that loads a script with <script src> ignores the script response's own CSP, so a
# data-built script must not exist on this origin at all (sandboxed Data Docs run no script anyway).
SERVABLE_SUFFIXES = {".html", ".css", ".png", ".svg", ".jpg", ".ico", ".woff", ".woff2", ".ttf"}
# Policy of every file built from data (and default of every response): "sandbox" with no allow-* token
# runs no script and gives the document an opaque origin, so it cannot read Airflow's API with the
# viewer's cookie; no other host is reachable either (Data Docs lose their CDN styles and scripts).
RUN_FILE_CSP = ("sandbox; default-src 'self'; script-src 'none'; object-src 'none'; img-src 'self' data:; "
                "font-src 'self' data:; style-src 'self' 'unsafe-inline'; base-uri 'none'; form-action 'none'")
# A run key is a date or an Airflow-ish id: never a path ("..", "/").
_RUN_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]*$")


def _page(title: str, heading: str | None, text: str, css_class: str = "note", element_id: str = "message") -> str:
    """A page with one message (empty state, errors)."""
    from churn.templating import render

    return render("churn_message.html", title=title, heading=heading, text=text, css_class=css_class,
                  element_id=element_id)


def _cfg():
    from churn.config import ChurnConfig

    return ChurnConfig.from_env()


def _connect():
    # No DDL on a page request: the DAG's tasks create the schema; the page reads what exists.
    from churn.connections import Resources

    return Resources.from_airflow(_cfg()).pg()  # resolved as the tasks resolve it


def schema_ready(conn) -> bool:
    """True once a DAG run has created the platform's tables (the page never creates them)."""
    from churn.db import tables_present

    return tables_present(conn, "churn.model_registry", "churn.model_champion", "churn.pipeline_runs",
                          "churn.run_metrics", "churn.realized_performance")


def csrf_token(session_credential: str, action: str) -> str:
    """A form token bound to the caller's session: HMAC of the action keyed by the session's JWT.

    Only a page that can read the session's token (the same origin) can compute it, and it is
    worthless with another session; no server-side state is needed.
    """
    return hmac.new(session_credential.encode(), f"churn:{action}".encode(), hashlib.sha256).hexdigest()


def csrf_ok(session_credential: str | None, action: str, token: str) -> bool:
    """Constant-time check of a form token against the caller's session."""
    if not session_credential or not token:
        return False
    return hmac.compare_digest(csrf_token(session_credential, action), token)


def session_credential(headers: dict, cookies: dict) -> str | None:
    """The credential that authenticated this request: the Bearer token, else the UI's ``_token`` cookie."""
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return cookies.get("_token") or None


def _query(conn, sql: str, params: tuple = ()) -> list[dict]:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        names = [c.name for c in cur.description]
        rows = [dict(zip(names, row)) for row in cur.fetchall()]
    conn.commit()
    return rows


def load_overview(conn, runs_limit: int = 20, outbox_conn=None) -> dict:
    """Model versions (with latest realized AUC), the champion, recent runs with drift figures, re-score activity,
    the trends (realized ROC AUC, score distribution, drift) and the experiments.

    ``outbox_conn``: where the re-score outbox lives when it is not the platform's database (a SQL source's).
    """
    models = _query(conn, """
        SELECT r.version, r.model_name, r.status, r.reason, r.created_at, r.run_key,
               (r.metrics->>'roc_auc')::float AS roc_auc, (r.metrics->>'pr_auc')::float AS pr_auc,
               (r.metrics->>'brier')::float AS brier, p.realized_roc_auc, p.scored_run_key AS realized_on
        FROM churn.model_registry r
        LEFT JOIN LATERAL (SELECT realized_roc_auc, scored_run_key FROM churn.realized_performance rp
                           WHERE rp.model_version = r.version ORDER BY scored_run_key DESC LIMIT 1) p ON true
        ORDER BY r.created_at DESC, r.version DESC""")
    champion = _query(conn, "SELECT version, promoted_at, reason FROM churn.model_champion")
    has_drift = _query(conn, "SELECT to_regclass('churn.drift_metrics') IS NOT NULL AS present")[0]["present"]
    drift_join = ("LEFT JOIN (SELECT run_key, max(psi) AS max_feature_psi, count(*) FILTER (WHERE psi > %s) "
                  "AS drifted_features FROM churn.drift_metrics GROUP BY run_key) d USING (run_key)"
                  if has_drift else "")
    drift_cols = "d.max_feature_psi, d.drifted_features," if has_drift else \
        "NULL::float AS max_feature_psi, NULL::bigint AS drifted_features,"
    runs = _query(conn, f"""
        SELECT p.run_key, p.airflow_run_id, p.status, p.started_at, p.finished_at,
               m.rows_in, m.rows_quarantined, m.rows_scored, m.rows_published, m.model_version, m.prediction_psi,
               m.dry_run, {drift_cols} m.report_path, p.summary->>'champion' AS champion
        FROM churn.pipeline_runs p LEFT JOIN churn.run_metrics m USING (run_key) {drift_join}
        ORDER BY p.run_key DESC LIMIT %s""", ((_cfg().drift_psi_threshold,) if has_drift else ()) + (runs_limit,))
    from churn.data.outbox import activity
    from churn.experiments.view import load_experiments, load_trends

    return {"models": models, "champion": champion[0] if champion else None, "runs": runs,
            "refresh": activity(outbox_conn or conn), "trends": load_trends(conn),
            "experiments": load_experiments(conn)}


def render_overview(data: dict, message: str | None = None, error: str | None = None) -> str:
    """The Churn page's HTML (templates/churn_overview.html)."""
    from churn.templating import render

    champ = data["champion"]
    models = [{**m, "status": "champion" if champ is not None and m["version"] == champ["version"] else m["status"]}
              for m in data["models"]]
    return render("churn_overview.html", title="Churn", prefix=URL_PREFIX, champion=champ, models=models,
                  runs=data["runs"], refresh=data.get("refresh"), trends=data.get("trends") or {},
                  experiments=data.get("experiments") or [], message=message, error=error)


def run_file(run_key: str, *parts: str):
    """A servable file inside one run's folder, or None (no traversal, no symlink out, no data or model files)."""
    if not _RUN_KEY.match(run_key) or ".." in run_key or any("\x00" in part for part in parts):
        return None
    runs_dir = (_cfg().state_dir / "runs").resolve()
    run_dir = runs_dir / run_key
    # The run folder itself must be a real folder under runs/: a symlinked one could point anywhere.
    if run_dir.resolve() != run_dir:
        return None
    try:
        path = run_dir.joinpath(*parts).resolve()  # follows symlinks: the target must stay inside the folder
    except (OSError, ValueError):
        return None
    if not path.is_relative_to(run_dir) or path.suffix.lower() not in SERVABLE_SUFFIXES or not path.is_file():
        return None
    return path


def render_confirm(record, current: str, credential: str, override: str | None = None) -> str:
    """The rollback confirmation page: a form with a session-bound token; values only as escaped text.

    ``override`` (why the rollback would override the gate) adds a required reason field to the form.
    """
    from churn.templating import render

    return render("churn_confirm.html", title="Confirm rollback", prefix=URL_PREFIX, record=record, current=current,
                  csrf=csrf_token(credential, "rollback:" + record.version), override=override)


def _build_app():
    """The FastAPI app behind the Churn page (routes resolve the user through Airflow's auth)."""
    from fastapi import Depends, FastAPI, Form, HTTPException, Request
    from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
    from starlette.datastructures import MutableHeaders

    from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
    from churn.templating import page_csp

    can_read = Depends(requires_access_dag("GET", param_dag_id=DAG_ID))
    can_edit = Depends(requires_access_dag("PUT", param_dag_id=DAG_ID))
    app = FastAPI(title="Churn", docs_url=None, redoc_url=None, openapi_url=None)

    class SecurityHeaders:
        """ASGI middleware: every response nosniff; sandboxed unless a route chose a policy for its own page."""

        def __init__(self, inner) -> None:
            self.inner = inner

        async def __call__(self, scope, receive, send) -> None:
            if scope["type"] != "http":
                await self.inner(scope, receive, send)
                return

            async def send_with_headers(message) -> None:
                if message["type"] == "http.response.start":
                    headers = MutableHeaders(scope=message)
                    headers["X-Content-Type-Options"] = "nosniff"
                    # Secure by default: a route that forgets its policy serves inert content.
                    if "content-security-policy" not in headers:
                        headers["Content-Security-Policy"] = RUN_FILE_CSP
                await send(message)

            await self.inner(scope, receive, send_with_headers)

    app.add_middleware(SecurityHeaders)

    def own_page(html: str, status_code: int = 200) -> HTMLResponse:
        # Only HTML rendered from our autoescaped templates gets the (non-sandboxed) page policy.
        return HTMLResponse(html, status_code=status_code, headers={"Content-Security-Policy": page_csp()})

    def data_file(path, media_type: str | None = None) -> FileResponse:
        return FileResponse(path, media_type=media_type, headers={"Content-Security-Policy": RUN_FILE_CSP,
                                                                  "X-Content-Type-Options": "nosniff"})

    @app.exception_handler(HTTPException)
    async def _login_redirect(request: Request, exc: HTTPException):
        # A person opening the page without a session goes to Airflow's login and comes back.
        if exc.status_code == 401 and request.method == "GET":
            from airflow.api_fastapi.app import get_auth_manager

            return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)), status_code=303)
        return own_page(_page("Churn", None, str(exc.detail), css_class="err"), status_code=exc.status_code)

    @app.get("/", response_class=HTMLResponse, dependencies=[can_read])
    def overview(msg: str | None = None, err: str | None = None) -> HTMLResponse:
        conn = _connect()
        try:
            if not schema_ready(conn):
                return own_page(_page("Churn", "Churn scoring", "Nothing yet: churn_nightly creates the platform's "
                                                                "tables on its first run.", element_id="empty"))
            if not _cfg().source_in_other_database:
                return own_page(render_overview(load_overview(conn), msg, err))
            from churn.connections import Resources

            with Resources.from_airflow(_cfg()).source_session() as outbox_conn:  # the outbox is beside your tables
                return own_page(render_overview(load_overview(conn, outbox_conn=outbox_conn), msg, err))
        finally:
            conn.close()

    @app.get("/rollback/{version}", response_class=HTMLResponse, dependencies=[can_edit])
    def confirm_rollback(version: str, request: Request) -> HTMLResponse:
        from churn.model import registry

        conn = _connect()
        try:
            record = registry.get(conn, version)
            champ = registry.champion(conn)
            override = registry.override_needed(conn, version)
        except registry.RegistryError as exc:
            raise HTTPException(404, str(exc)) from exc
        finally:
            conn.close()
        credential = session_credential(dict(request.headers), request.cookies)
        if credential is None:
            raise HTTPException(403, "no session: log in to Airflow first")
        return own_page(render_confirm(record, champ.version if champ else "none", credential, override))

    @app.post("/rollback/{version}", dependencies=[can_edit])
    def rollback(version: str, user: GetUserDep, request: Request, confirm: str = Form(""),
                 csrf: str = Form(""), force: str = Form(""), reason: str = Form("")) -> RedirectResponse:
        from urllib.parse import urlencode

        from churn.model import registry

        if confirm != version:
            raise HTTPException(400, "rollback not confirmed: use the confirmation form")
        if not csrf_ok(session_credential(dict(request.headers), request.cookies), "rollback:" + version, csrf):
            raise HTTPException(403, "rollback refused: the form's token does not belong to your session; open "
                                     "the confirmation page again and submit it from there")
        conn = _connect()
        try:
            # An override of the gate (force) needs the user's own reason: never a default text.
            if force == "1" and not reason.strip():
                raise registry.OverrideRequired("overriding the gate needs a reason: fill in the reason field")
            registry.promote(conn, version, reason.strip() or f"rollback from the Churn page by {user.get_name()}",
                             kind="rollback", actor=f"ui:{user.get_name()}", force=force == "1")
            query = {"msg": f"champion is now {version}"}
        except (registry.RegistryError, registry.ArtifactIntegrityError) as exc:
            query = {"err": f"rollback to {version} refused: {exc}"}
        finally:
            conn.close()
        return RedirectResponse(f"{URL_PREFIX}/?{urlencode(query)}", status_code=303)

    @app.get("/runs/{run_key}/report", dependencies=[can_read])
    def run_report(run_key: str) -> FileResponse:
        path = run_file(run_key, "report.html")
        if path is None:
            raise HTTPException(404, f"no report for run {run_key}: the run has not reached its report task")
        return data_file(path, media_type="text/html")

    @app.get("/runs/{run_key}/{rest:path}", dependencies=[can_read])
    def serve_run_file(run_key: str, rest: str) -> FileResponse:
        path = run_file(run_key, *rest.split("/"))
        if path is None:
            raise HTTPException(404, f"{rest} is not available for run {run_key}")
        return data_file(path)

    @app.get("/by-airflow-run/{airflow_run_id}", dependencies=[can_read])
    def report_for_airflow_run(airflow_run_id: str) -> RedirectResponse:
        conn = _connect()
        try:
            rows = _query(conn, "SELECT run_key FROM churn.pipeline_runs WHERE airflow_run_id = %s",
                          (airflow_run_id,))
        finally:
            conn.close()
        if not rows:
            raise HTTPException(404, f"Airflow run {airflow_run_id} has no churn run record yet")
        from urllib.parse import quote

        return RedirectResponse(f"{URL_PREFIX}/runs/{quote(rows[0]['run_key'], safe='')}/report", status_code=303)

    return app


class _LazyApp:
    """ASGI app that builds the FastAPI app on its first request (plugins load in every Airflow process)."""

    def __init__(self) -> None:
        self._app = None

    async def __call__(self, scope, receive, send) -> None:
        if self._app is None:
            self._app = _build_app()
        await self._app(scope, receive, send)


class ChurnUIPlugin(AirflowPlugin):
    """Adds the Churn page (navigation entry) and a per-run "Churn report" tab."""

    name = "churn_ui"
    fastapi_apps = [{"app": _LazyApp(), "url_prefix": URL_PREFIX, "name": "Churn"}]
    external_views = [
        {"name": "Churn", "href": f"{URL_PREFIX}/", "url_route": "churn", "destination": "nav",
         "nav_top_level": True, "category": "browse"},
        {"name": "Churn report", "href": f"{URL_PREFIX}/by-airflow-run/{{RUN_ID}}", "url_route": "churn_report",
         "destination": "dag_run"},
    ]
