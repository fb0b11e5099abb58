"""The README and the docs site (issue 22 item 1): a short README whose links land, a site that builds strictly,
and reference pages generated from the code (every ``CHURN_*`` setting, every CLI)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from churn.config import ChurnConfig
from tests.support import REPO_ROOT

README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"
SETTINGS = sorted(f"CHURN_{name.upper()}" for name in ChurnConfig.model_fields)


def _hook():
    spec = importlib.util.spec_from_file_location("docs_hook", DOCS / "hooks" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built exactly as ``make docs`` builds it (strict: any warning fails), into a temporary folder."""
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([str(Path(sys.executable).with_name("mkdocs")), "build", "--strict", "--site-dir", str(out)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    return out


def _page(site: Path, src: str) -> str:
    """The built HTML of a docs page given by its source path (``reference/cli.md``, ``index.md``)."""
    page = Path(src).with_suffix("")
    return (site / (page.parent if page.name == "index" else page) / "index.html").read_text()


def test_readme_is_at_most_10_kb():
    size = README.stat().st_size
    assert size <= 10 * 1024, f"README.md is {size} bytes: move detail into docs/ (limit 10,240)"


def test_the_site_builds_strictly(site):
    assert (site / "index.html").exists()


def test_the_configuration_reference_lists_every_setting(site):
    html = _page(site, "reference/configuration.md")
    missing = [var for var in SETTINGS if f"<code>{var}</code>" not in html]
    assert not missing, f"settings missing from the configuration reference: {missing}"


def test_the_cli_reference_shows_every_cli_and_subcommand(site):
    hook = _hook()
    html = _page(site, "reference/cli.md")
    for module, _purpose in hook.CLIS:
        parser = hook.cli_parser(module)
        assert f"usage: {parser.prog}" in html, f"{module} missing from the CLI reference"
        for name, _aliases, sub in hook._subcommands(parser):
            assert f"usage: {sub.prog}" in html, f"{module} {name} missing from the CLI reference"


def test_the_cli_reference_covers_every_cli_in_the_package():
    """A module under include/ that parses arguments and runs as ``python -m`` is listed in the reference."""
    listed = {module for module, _ in _hook().CLIS}
    found = set()
    for path in (REPO_ROOT / "include").rglob("*.py"):
        text = path.read_text()
        if "argparse.ArgumentParser(" in text and '__name__ == "__main__"' in text:
            found.add(".".join(path.relative_to(REPO_ROOT / "include").with_suffix("").parts))
    assert found <= listed, f"CLIs missing from docs/hooks/generate.py CLIS: {sorted(found - listed)}"


def test_the_benchmarks_page_shows_every_results_file(site):
    html = _page(site, "benchmarks.md")
    for path in sorted((REPO_ROOT / "bench" / "results").glob("*.json")):
        assert f"bench/results/{path.name}" in html, f"{path.name} missing from the benchmarks page"
    assert "[[bench" not in html  # every quoted figure was filled in


def test_every_readme_link_into_docs_resolves(site):
    links = re.findall(r"\]\((docs/[^)\s]*)\)", README.read_text())
    assert links, "README links into docs/"
    generated = {_hook().TESTING_PAGE}  # a placeholder the site supplies until the real page exists
    for link in links:
        target, _, anchor = link.partition("#")
        path = REPO_ROOT / target
        src = path.relative_to(DOCS).as_posix()
        assert path.is_file() or src in generated, f"README links to {link}, which does not exist"
        if anchor:
            assert f'id="{anchor}"' in _page(site, src), f"README links to {link}: no such heading"
