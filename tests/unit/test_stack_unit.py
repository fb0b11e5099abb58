"""Unit: how churn.dev.stack names runs and configures components (no processes started)."""

from __future__ import annotations

from datetime import date, datetime, timezone
from pathlib import Path

from churn.dev.stack import AirflowStack, _cron_time, _logical_date


def test_demo_run_takes_the_nightly_tick_of_its_date_unless_that_is_still_ahead():
    assert _cron_time("0 2 * * *") == "02:00:00" and _cron_time("30 23 * * 1-5") == "23:30:00"
    assert _cron_time("@daily") == "00:00:00"
    after = datetime(2026, 11, 25, 11, 0, tzinfo=timezone.utc)
    assert _logical_date(date(2026, 11, 25), "0 2 * * *", after) == "2026-11-25T02:00:00Z"
    # before 02:00 the tick is in the future, and the scheduler never starts a future logical date
    before = datetime(2026, 11, 25, 1, 30, 5, 123, tzinfo=timezone.utc)
    assert _logical_date(date(2026, 11, 25), "0 2 * * *", before) == "2026-11-25T01:30:05Z"
    assert _logical_date(date(2026, 11, 20), "0 2 * * *", before) == "2026-11-20T02:00:00Z"


def test_celery_stack_keeps_the_broker_off_the_score_keyspace_and_shares_dask(tmp_path: Path):
    stack = AirflowStack(state_dir=tmp_path, churn_pg_url="postgresql://u@127.0.0.1:1/churn",
                         redis_url="redis://127.0.0.1:2/0", metadata_url="postgresql+psycopg2://u@127.0.0.1:1/af",
                         api_port=8123, executor="celery", celery_broker_url="redis://127.0.0.1:2/1",
                         dask_scheduler_port=8799, churn_env={"score_partitions": "3"})
    env = stack.env(worker_name="celery-worker-2")
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"] != env["AIRFLOW_CONN_CHURN_REDIS"]
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+postgresql://u@127.0.0.1:1/af"
    assert env["CHURN_DASK_SCHEDULER_ADDRESS"] == "tls://127.0.0.1:8799"  # mutual TLS: only key holders join
    assert env["CHURN_SCORE_PARTITIONS"] == "3" and env["CHURN_WORKER_NAME"] == "celery-worker-2"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:8123/execution/"
    local = AirflowStack(state_dir=tmp_path, churn_pg_url="x", redis_url="y", metadata_url="z")
    assert local.env()["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert "CHURN_DASK_SCHEDULER_ADDRESS" not in local.env()  # default: TPOT's own local cluster


def test_trigger_creates_the_run_before_it_unpauses_the_dag(tmp_path: Path):
    """Unpausing first races the scheduler's own run for the same logical date (unique key): order matters."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    calls: list[tuple[str, str]] = []

    class FakeApiServer(BaseHTTPRequestHandler):  # the one boundary: no api-server runs in a unit test
        def _answer(self, status: int, body: dict) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            calls.append((self.command, self.path))
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_POST(self):  # noqa: N802 (http.server's naming)
            if self.path == "/auth/token":
                self._answer(201, {"access_token": "t"})
            else:
                self._answer(200, {"dag_run_id": "manual__2026-11-20T02:00:00+00:00"})

        def do_PATCH(self):  # noqa: N802
            self._answer(200, {"is_paused": False})

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeApiServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        stack = AirflowStack(state_dir=tmp_path, churn_pg_url="x", redis_url="y", metadata_url="z",
                             api_port=server.server_address[1])
        stack.password_file.parent.mkdir(parents=True, exist_ok=True)
        stack.password_file.write_text(json.dumps({"admin": "pw"}))
        run_id = stack.trigger("2026-11-20T02:00:00Z", {"retrain": True})
    finally:
        server.shutdown()
    assert run_id == "manual__2026-11-20T02:00:00+00:00"
    api_calls = [call for call in calls if call[1] != "/auth/token"]
    assert api_calls == [("POST", "/api/v2/dags/churn_nightly/dagRuns"), ("PATCH", "/api/v2/dags/churn_nightly")]
