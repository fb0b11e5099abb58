"""HTML from Jinja2 templates (``include/churn/templates``) with autoescaping: no hand-escaped f-strings.

The run report and the Churn page share one stylesheet (``churn.css``, inlined so every page is
self-contained) and the ``fmt`` filter for numbers. Plots are inline SVG made by matplotlib and
passed in as ``Markup``; every other value is escaped by Jinja2.
"""

from __future__ import annotations

import functools
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
