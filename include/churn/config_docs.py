"""The configuration's documentation and checks from the command line: ``python -m churn.config_docs``.

``--markdown`` prints the configuration table (generated from the fields' docstrings; the docs site's
configuration reference is built from the same rows by ``docs/hooks/generate.py``, so it cannot drift:
``tests/unit/test_config.py`` checks it); ``--check`` validates this environment's ``CHURN_*`` variables and
prints the error that names the variable to fix.
"""

from __future__ import annotations

import typing

from churn.config import RENAMED, ChurnConfig, ConfigError


def field_docs() -> dict[str, str]:
    """Each field's documentation: the docstring under it (pydantic keeps it as the field's description)."""
    return {name: " ".join((info.description or "").split()) for name, info in ChurnConfig.model_fields.items()}


def _default_text(name: str, value: typing.Any) -> str:
    if name == "state_dir":
        return "`.state` (in the checkout)"
    if value == "":
        return "(empty)"
    if isinstance(value, bool):
        return str(value).lower()
    return f"`{value}`" if isinstance(value, str) else str(value)


def markdown_table() -> str:
    """The configuration table, generated from the fields, their defaults and their docs."""
    docs = field_docs()
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    formerly = {new: old for new, old in RENAMED.items()}
    for name in (n for names in ChurnConfig.sections().values() for n in names):
        info = ChurnConfig.model_fields[name]
        meaning = docs.get(name, "").replace("|", "\\|")
        if name in formerly:  # the old name still works
            meaning += f" (formerly `CHURN_{formerly[name].upper()}`, still accepted)"
        default = info.get_default(call_default_factory=True)
        rows.append(f"| CHURN_{name.upper()} | {_default_text(name, default)} | {meaning} |")
    return "\n".join(rows) + "\n"


def build_parser() -> "argparse.ArgumentParser":
    """The CLI's parser (also read by the docs' CLI reference)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m churn.config_docs")
    parser.add_argument("--markdown", action="store_true", help="print the configuration table (markdown)")
    parser.add_argument("--check", action="store_true", help="validate the CHURN_* variables of this environment")
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI: ``--markdown`` prints the configuration table; ``--check`` validates the current environment's settings."""
    args = build_parser().parse_args(argv)
    if args.markdown:
        print(markdown_table(), end="")
    if args.check:
        try:
            ChurnConfig.from_env()
        except ConfigError as exc:
            print(f"error: {exc}")
            return 2
        print("configuration ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
