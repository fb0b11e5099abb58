"""The test suite's own layout (issue 22 item 6): tiers are folders, and no test module imports another.

Shared fixtures live in conftest.py files and shared helpers in ``tests/support``; a test module that imports
from another ``test_*`` module couples two files' fixtures and collection order, so it is refused here.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

from tests.conftest import TIERS
from tests.support import REPO_ROOT

TESTS = REPO_ROOT / "tests"


def _imported_modules(source: str, package: str) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in ``source`` (a module of ``package``), relative ones resolved."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parent, base] if base else parent)
            found.append((node.lineno, base))
            # ``from tests.integration import test_x`` imports a module by its name
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def _imports_of(path: Path) -> list[tuple[int, str]]:
    package = ".".join(path.relative_to(REPO_ROOT).parts[:-1])
    return _imported_modules(path.read_text(), package)


def _test_modules(imports: list[tuple[int, str]]) -> list[str]:
    return [module for _, module in imports if any(part.startswith("test_") for part in module.split("."))]


def test_the_check_sees_absolute_relative_and_by_name_imports_of_test_modules():
    source = ("from tests.integration.test_publish_postgres import write_scores\n"
              "from .test_other import x\n"
              "from .. import integration\n"
              "from tests.integration import test_rescore\n"
              "import tests.support.scores\n"
              "from tests.support.scores import RUN_A\n")
    assert _test_modules(_imported_modules(source, "tests.unit")) == [
        "tests.integration.test_publish_postgres", "tests.integration.test_publish_postgres.write_scores",
        "tests.unit.test_other", "tests.unit.test_other.x", "tests.integration.test_rescore"]


def test_no_test_module_imports_another_test_module():
    offenders = []
    for path in sorted(TESTS.rglob("test_*.py")):
        for line, module in _imports_of(path):
            if any(part.startswith("test_") for part in module.split(".")):
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{line} imports {module}")
    assert not offenders, "move shared fixtures to a conftest.py and helpers to tests/support:\n" + "\n".join(offenders)


def test_every_test_module_is_in_a_tier_folder():
    stray = [str(p.relative_to(REPO_ROOT)) for p in TESTS.rglob("test_*.py")
             if p.relative_to(TESTS).parts[0] not in TIERS]
    assert not stray, f"test modules outside tests/<tier>/ ({', '.join(TIERS)}): {stray}"


def test_tier_markers_are_registered_once_in_pyproject():
    markers = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    names = [m.split(":")[0] for m in markers]
    assert sorted(names) == sorted(TIERS), names
    registering = [f"{p.relative_to(REPO_ROOT)}:{node.lineno}" for p in sorted(TESTS.rglob("*.py"))
                   for node in ast.walk(ast.parse(p.read_text()))
                   if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "addinivalue_line"
                   and node.args and getattr(node.args[0], "value", None) == "markers"]
    assert not registering, f"markers are registered in pyproject.toml only, not again in {registering}"


def test_the_unit_tier_imports_no_server_fixture():
    """The server fixtures reach the server tiers through their conftest files; a unit module importing them
    would bring a Postgres/Valkey into the service-free tier."""
    offenders = [f"{path.relative_to(REPO_ROOT)}:{line}" for path in sorted((TESTS / "unit").rglob("*.py"))
                 for line, module in _imports_of(path) if module.startswith("tests.support.servers")]
    assert not offenders, offenders


def test_no_module_marks_its_own_tier():
    """The folder is the tier (tests/conftest.py marks by folder); a module-level tier mark would disagree with it."""
    marked = [f"{p.relative_to(REPO_ROOT)}:{node.lineno}" for p in sorted(TESTS.rglob("test_*.py"))
              for node in ast.walk(ast.parse(p.read_text()))
              if isinstance(node, ast.Attribute) and node.attr in TIERS and isinstance(node.value, ast.Attribute)
              and node.value.attr == "mark"]
    assert not marked, marked
