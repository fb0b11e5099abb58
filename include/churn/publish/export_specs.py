"""Export definitions (``CHURN_EXPORTS``): which customers, which columns, which file; checked before any query.

An :class:`ExportSpec` names its segment (risk bands, minimum decile, probability above a cut),
its columns (score columns and customer attributes), the file name pattern (``{run_date}``,
``{name}``) and whether to gzip. :func:`parse_exports` refuses a malformed definition with
:class:`ExportRefused`, naming the setting and the fix.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from typing import Any

from churn.config import ConfigError

SCORE_COLUMNS = {
    "customer_id": "s.customer_id",
    "churn_probability": "s.churn_probability",
    "risk_band": "s.risk_band",
    "risk_decile": "s.risk_decile",
    "model_version": "s.model_version",
    "run_id": "s.run_id",
    "run_date": "s.run_id",  # the run key is the logical date the batch was scored for
    "scored_at": "s.scored_at",
    # every experiment arm the customer holds, "experiment=arm;..." (churn.experiment_assignments)
    "experiment_arms": "(SELECT string_agg(a.experiment_id || '=' || a.arm, ';' ORDER BY a.experiment_id) "
                       "FROM churn.experiment_assignments a WHERE a.customer_id = s.customer_id)",
}
DEFAULT_COLUMNS = ("customer_id", "churn_probability", "risk_band", "risk_decile", "model_version", "run_id",
                   "email", "plan")
DEFAULT_FILE_PATTERN = "churn_{name}_{run_date}.csv"
RISK_BANDS = ("low", "medium", "high")
_SPEC_KEYS = {"name", "band", "min_decile", "probability_above", "columns", "file", "gzip"}
# Attribute columns keep their source's spelling (a file source may say "Contract"); always quoted in SQL.
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SOURCE_ATTRIBUTES_TABLE = "src.customers"
FILE_ATTRIBUTES_TABLE = "export_attributes"  # a session TEMP table loaded from a file source's scored snapshot
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PLACEHOLDERS = {"run_date", "name"}


class ExportRefused(RuntimeError):
    """The run's validation or publish did not succeed, so nothing is exported (old files stay as they were)."""


@dataclass(frozen=True)
class ExportSpec:
    """One configured export: which customers, which columns, which file."""

    name: str
    bands: tuple[str, ...] = ()
    min_decile: int | None = None
    probability_above: float | None = None
    columns: tuple[str, ...] = DEFAULT_COLUMNS
    file_pattern: str = DEFAULT_FILE_PATTERN
    gzip: bool = False

    @property
    def attributes(self) -> tuple[str, ...]:
        """Columns taken from the attributes table (everything that is not a score column)."""
        return tuple(c for c in self.columns if c not in SCORE_COLUMNS)

    def file_name(self, run_date: str) -> str:
        """File name for one run date, with ``.gz`` appended when gzipped."""
        name = self.file_pattern.format(run_date=run_date, name=self.name)
        return name + (".gz" if self.gzip else "")


def default_exports(band: str, with_attributes: bool = True) -> list[dict[str, Any]]:
    """The export used when ``CHURN_EXPORTS`` is empty: one risk band with the default columns.

    ``with_attributes=False`` (file sources, which have no ``src.customers``) keeps the score columns only.
    """
    columns = [c for c in DEFAULT_COLUMNS if with_attributes or c in SCORE_COLUMNS]
    return [{"name": f"{band}_risk", "band": band, "columns": columns, "file": DEFAULT_FILE_PATTERN, "gzip": False}]


def parse_exports(raw: str, default_band: str = "high", default_attributes: bool = True) -> list[ExportSpec]:
    """Parse and validate ``CHURN_EXPORTS`` (a JSON list of objects); raise ConfigError saying what to fix."""
    if not raw or not raw.strip():
        items: Any = default_exports(default_band, default_attributes)
    else:
        try:
            items = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"CHURN_EXPORTS is not valid JSON ({exc}); expected a list such as "
                              '[{"name": "high_risk", "band": "high", "columns": ["customer_id", "email"]}]') from exc
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list) or not items:
        raise ConfigError("CHURN_EXPORTS must be a non-empty JSON list of export objects")
    specs = [_parse_one(i, item) for i, item in enumerate(items)]
    for what, key in (("name", lambda s: s.name), ("file name", lambda s: s.file_name("2026-01-01"))):
        values = [key(s) for s in specs]
        dupes = sorted({v for v in values if values.count(v) > 1})
        if dupes:
            raise ConfigError(f"CHURN_EXPORTS: {what} {dupes} used by more than one export; each needs its own")
    return specs


def _parse_one(index: int, item: Any) -> ExportSpec:
    where = f"CHURN_EXPORTS[{index}]"
    if not isinstance(item, dict):
        raise ConfigError(f"{where} must be a JSON object, got {type(item).__name__}")
    unknown = sorted(set(item) - _SPEC_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(_SPEC_KEYS)}")
    name = item.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{where}: 'name' must be letters, digits, '_', '-' or '.', e.g. \"high_risk\"")
    where = f"{where} ({name})"

    band = item.get("band")
    bands: tuple[str, ...] = ()
    if band is not None:
        bands = (band,) if isinstance(band, str) else tuple(band) if isinstance(band, list) else ("<invalid>",)
        bad = [b for b in bands if b not in RISK_BANDS]
        if bad or not bands:
            raise ConfigError(f"{where}: 'band' must be one of {list(RISK_BANDS)} or a list of them, got {band!r}")

    min_decile = item.get("min_decile")
    if min_decile is not None and (isinstance(min_decile, bool) or not isinstance(min_decile, int)
                                   or not 1 <= min_decile <= 10):
        raise ConfigError(f"{where}: 'min_decile' must be an integer 1..10 (10 = top decile), got {min_decile!r}")

    cut = item.get("probability_above")
    if cut is not None and (isinstance(cut, bool) or not isinstance(cut, (int, float)) or not 0.0 <= cut < 1.0):
        raise ConfigError(f"{where}: 'probability_above' must be a number in [0, 1), got {cut!r}")

    if not bands and min_decile is None and cut is None:
        # An export without a filter would send every customer to an email journey: make that explicit.
        raise ConfigError(f"{where}: set at least one of 'band', 'min_decile' or 'probability_above' "
                          "(use \"min_decile\": 1 to export every scored customer)")

    columns = item.get("columns", list(DEFAULT_COLUMNS))
    if not isinstance(columns, list) or not columns or not all(isinstance(c, str) for c in columns):
        raise ConfigError(f"{where}: 'columns' must be a non-empty list of column names")
    bad_cols = [c for c in columns if not _IDENTIFIER.match(c)]
    if bad_cols:
        raise ConfigError(f"{where}: column names {bad_cols} must be identifiers (letters, digits, '_'): score "
                          f"columns {sorted(SCORE_COLUMNS)} or customer attributes such as email, plan")
    if len(set(columns)) != len(columns):
        raise ConfigError(f"{where}: 'columns' lists a column twice: {columns}")

    pattern = item.get("file", DEFAULT_FILE_PATTERN)
    if not isinstance(pattern, str):
        raise ConfigError(f"{where}: 'file' must be a string such as \"churn_{{name}}_{{run_date}}.csv\"")
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None}
    except ValueError as exc:
        raise ConfigError(f"{where}: 'file' pattern {pattern!r} is malformed ({exc})") from exc
    if "run_date" not in fields or fields - _PLACEHOLDERS:
        raise ConfigError(f"{where}: 'file' pattern {pattern!r} must contain {{run_date}} (one file per date, "
                          f"replaced on re-runs) and no placeholders other than {sorted(_PLACEHOLDERS)}")
    sample = pattern.format(run_date="2026-01-01", name=name)
    if "/" in sample or "\\" in sample or sample.startswith(".") or not sample.strip():
        raise ConfigError(f"{where}: 'file' pattern {pattern!r} must be a plain file name (no folders, "
                          "not starting with '.', which marks temporary files)")

    gz = item.get("gzip", False)
    if not isinstance(gz, bool):
        raise ConfigError(f"{where}: 'gzip' must be true or false, got {gz!r}")
    return ExportSpec(name=name, bands=bands, min_decile=min_decile,
                      probability_above=float(cut) if cut is not None else None, columns=tuple(columns),
                      file_pattern=pattern, gzip=gz)


# --------------------------------------------------------------------------- safe cells
