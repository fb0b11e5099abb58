"""Bounded in time (issue 26 item 15): every DAG task has a limit (statements on real Postgres:
tests/integration/test_field_bounded.py)."""

from __future__ import annotations

import ast

from tests.support import REPO_ROOT


def test_every_task_of_every_dag_has_an_execution_timeout():
    """Unit: with max_active_runs=1 a task without a limit that hangs blocks every later night."""
    for dag_file in sorted((REPO_ROOT / "dags").glob("*.py")):
        tree = ast.parse(dag_file.read_text())
        defaults = [kw for node in ast.walk(tree) if isinstance(node, ast.keyword) and node.arg == "default_args"
                    for kw in ([node.value] if isinstance(node.value, ast.Dict) else [])]
        keys = {k.value for d in defaults for k in d.keys if isinstance(k, ast.Constant)}
        assert "execution_timeout" in keys, f"{dag_file.name}: default_args lacks execution_timeout"
