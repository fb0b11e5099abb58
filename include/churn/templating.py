"""HTML from Jinja2 templates (``include/churn/templates``) with autoescaping: no hand-escaped f-strings.

The run report and the Churn page share one stylesheet (``churn.css``, inlined so every page is
self-contained) and the ``fmt`` filter for numbers. Plots are inline SVG made by matplotlib and
passed in as ``Markup``; every other value is escaped by Jinja2.

Pages served from templates carry ``page_csp()``: only the templates' own inline ``<script>`` and
``<style>`` blocks may run, pinned by hash, and nothing is loaded from another host.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from pathlib import Path
from typing import Any

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"


def fmt(value: Any, digits: int = 4) -> str:
    """A number as the pages show it: floats with ``digits`` decimals, ints with separators, None as '–'."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


@functools.lru_cache(maxsize=1)
def environment():
    """The Jinja2 environment: templates folder, autoescape on, missing variables are errors."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES_DIR), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = fmt
    return env


def render(template: str, **context: Any) -> str:
    """Render ``templates/<template>`` with ``context``."""
    return environment().get_template(template).render(**context)


def trusted(html_text: str):
    """Mark HTML made by our own code (matplotlib's SVG) as safe to insert unescaped."""
    from markupsafe import Markup

    return Markup(html_text)


_INLINE_CODE = re.compile(r"<(script|style)>(.*?)</\1>", re.S)


@functools.lru_cache(maxsize=1)
def inline_code_hashes() -> dict[str, tuple[str, ...]]:
    """CSP hash sources of every inline ``<script>``/``<style>`` block in the templates, by tag."""
    env = environment()
    found: dict[str, set[str]] = {"script": set(), "style": set()}
    for path in sorted(TEMPLATES_DIR.glob("*.html")):
        for tag, body in _INLINE_CODE.findall(path.read_text()):
            # Hashed from the templates, never from a rendered page: a value injected into a page could
            # otherwise hash itself into the policy. Rendering without variables (StrictUndefined) fails
            # if a block depends on data, so inline code stays constant and its hash stays right.
            text = env.from_string(body).render()
            digest = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
            found[tag].add(f"'sha256-{digest}'")
    return {tag: tuple(sorted(hashes)) for tag, hashes in found.items()}


@functools.lru_cache(maxsize=1)
def page_csp() -> str:
    """Content-Security-Policy for pages rendered from these templates: own hash-pinned inline code only."""
    hashes = inline_code_hashes()
    return "; ".join([
        "default-src 'self'",
        "script-src " + (" ".join(hashes["script"]) or "'none'"),
        "style-src " + (" ".join(hashes["style"]) or "'none'"),
        "img-src 'self' data:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'self'",  # shown in an iframe of Airflow's own UI, never framed by another site
    ])
