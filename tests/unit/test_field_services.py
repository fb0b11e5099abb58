"""Issue 26 item 13: the launcher keeps files and processes private (no Airflow stack started here).

The full picture after a real run (modes under the state folder, the admin password in no log) is
asserted by tests/scheduler/test_stack_local.py; these tests cover what a run there cannot show cheaply: a
state folder an older checkout left open (who may use the ``make cluster`` Dask cluster, with a real Dask
scheduler and worker: tests/integration/test_field_services.py).
"""

from __future__ import annotations

import json

from churn.dev.stack import _without_password
from tests.support.offline_stack import offline_stack


def test_an_open_state_folder_from_an_older_checkout_is_closed_and_its_exposed_password_replaced(tmp_path):
    tmp_path.chmod(0o755)
    ancestors = {p: p.stat().st_mode for p in [tmp_path, *tmp_path.parents]}
    stack = offline_stack(tmp_path)
    for folder in (stack.home, stack.run_dir, stack.state_dir / "exports"):
        folder.mkdir(parents=True, mode=0o755)
    stack.state_dir.chmod(0o755)
    stack.password_file.write_text(json.dumps({"admin": "old-password"}))
    stack.password_file.chmod(0o644)
    (stack.run_dir / "api-server.log").write_text("Password for user 'admin': old-password\n")
    (stack.state_dir / "exports" / "scores.csv").write_text("customer_id,p\n")
    for path in stack.state_dir.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)

    stack.prepare()

    assert {p: p.stat().st_mode for p in ancestors} == ancestors
    assert stack.state_dir.stat().st_mode & 0o777 == 0o700
    assert not [str(p) for p in stack.state_dir.rglob("*") if p.stat().st_mode & 0o077]
    password = stack.password()
    assert password != "old-password" and len(password) >= 20  # it was readable by anyone: replaced
    assert stack.password_file.stat().st_mode & 0o777 == 0o600
    stack.prepare()
    assert stack.password() == password  # a private one is kept
    assert stack.env()["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] == str(stack.password_file)


def test_a_new_state_folder_gets_the_admin_password_before_any_airflow_process(tmp_path):
    """Given a file naming ``admin``, Airflow's simple auth manager reads it and never prints a password."""
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

    stack = offline_stack(tmp_path)
    stack.prepare()
    assert stack.password_file.stat().st_mode & 0o777 == 0o600 and stack.run_dir.stat().st_mode & 0o777 == 0o700
    with open(stack.password_file) as handle:
        assert SimpleAuthManager._get_passwords(handle) == {"admin": stack.password()}


def test_printed_urls_hide_their_password():
    assert _without_password("redis://churn:s3cret@127.0.0.1:6379/1") == "redis://churn:***@127.0.0.1:6379/1"
    assert _without_password("redis://127.0.0.1:6379/1") == "redis://127.0.0.1:6379/1"
