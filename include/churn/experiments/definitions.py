"""The experiments file (``CHURN_EXPERIMENTS_FILE``): a YAML list of experiments, validated with line numbers.

```yaml
experiments:
  - id: boosting-vs-champion          # 1-64 of a-z 0-9 - _
    salt: "2026-12"                   # part of the arm hash: a new salt re-randomizes a re-run experiment
    start: 2026-12-01                 # first night it assigns (inclusive)
    end: 2027-01-31                   # optional: last night it assigns (inclusive)
    layer: retention                  # optional: experiments of one layer never share a customer
    traffic: [0, 50]                  # optional: the percent range of the layer it takes (default all of it)
    minimum_detectable_effect: 0.01   # optional: absolute change in churn rate the sample size is computed for
    arms:
      - {name: control,    weight: 45, model: champion}
      - {name: challenger, weight: 45, model: hist_gradient_boosting}
      - {name: holdout,    weight: 10, model: champion, contact: false}   # never exported for actions
```

Errors name the file, the line and the fix (:class:`ExperimentsError`); unknown keys are refused, so a typo
never silently changes an experiment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
EXPERIMENT_KEYS = {"id", "salt", "start", "end", "layer", "traffic", "arms", "minimum_detectable_effect",
                   "description"}
ARM_KEYS = {"name", "weight", "model", "contact"}
CHAMPION = "champion"


class ExperimentsError(ValueError):
    """The experiments file is malformed: the message names the file, the line and the fix."""


@dataclass(frozen=True)
class Arm:
    """One arm: its share (``weight``), the model whose scores it is served, and whether it may be contacted."""

    name: str
    weight: float
    model: str
    contact: bool = True


@dataclass(frozen=True)
class Experiment:
    """One experiment as declared (see the module docstring)."""

    id: str
    salt: str
    start: date
    arms: tuple[Arm, ...]
    end: date | None = None
    layer: str = ""
    traffic: tuple[float, float] = (0.0, 100.0)
    minimum_detectable_effect: float | None = None
    description: str = ""
    line: int = 0

    @property
    def layer_name(self) -> str:
        """The layer it belongs to (its own id when it declares none: it excludes no other experiment)."""
        return self.layer or f"experiment:{self.id}"

    def active_on(self, night: date) -> bool:
        """True when it assigns customers on ``night`` (start and end inclusive)."""
        return self.start <= night and (self.end is None or night <= self.end)

    def arm(self, name: str) -> Arm:
        """The arm called ``name``."""
        return next(a for a in self.arms if a.name == name)

    @property
    def varies_model(self) -> bool:
        """True when an arm is served another model than the champion (the experiment decides what is served)."""
        return any(a.model != CHAMPION for a in self.arms)

    def overlaps(self, other: "Experiment") -> bool:
        """True when both assign on at least one common night."""
        return (self.end is None or other.start <= self.end) and (other.end is None or self.start <= other.end)


@dataclass
class ExperimentsFile:
    """Every experiment of one file, in file order."""

    path: str
    experiments: list[Experiment] = field(default_factory=list)

    def active(self, night: date) -> list[Experiment]:
        """The experiments that assign customers on ``night``."""
        return [e for e in self.experiments if e.active_on(night)]


def _loader():
    """A safe YAML loader that remembers the line of every mapping (as the key ``__line__``)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader, node):
        keys = [loader.construct_object(k, deep=True) for k, _ in node.value]
        repeated = sorted({str(k) for k in keys if keys.count(k) > 1})
        if repeated:  # YAML would keep the last silently: a copy-paste slip must not change an experiment
            raise ExperimentsError(f"line {node.start_mark.line + 1}: key(s) {repeated} given twice in one mapping")
        value = loader.construct_mapping(node, deep=True)
        value["__line__"] = node.start_mark.line + 1
        return value

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    # dates stay text here and are parsed by the validation, which names the line (YAML's own parser raises a
    # bare ValueError on 2026-13-01)
    Loader.add_constructor("tag:yaml.org,2002:timestamp", lambda loader, node: loader.construct_scalar(node))
    return Loader


def load_experiments(path: str | Path) -> ExperimentsFile:
    """Read and validate an experiments file; :class:`ExperimentsError` says where and how to fix it."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ExperimentsError(f"{path}: cannot read the experiments file ({exc}); set CHURN_EXPERIMENTS_FILE to "
                               "the path of a readable YAML file, or leave it empty to run no experiment") from exc
    try:
        data = yaml.load(text, Loader=_loader())  # noqa: S506 - a SafeLoader subclass
    except ExperimentsError as exc:
        raise ExperimentsError(f"{path}:{str(exc).removeprefix('line ')}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ExperimentsError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from exc
    return parse_experiments(data, str(path))


def parse_experiments(data, path: str = "<experiments>") -> ExperimentsFile:
    """Validate already-parsed YAML (a mapping with ``experiments``, a list) into an :class:`ExperimentsFile`."""
    if data is None:
        return ExperimentsFile(path)
    if not isinstance(data, dict) or set(data) - {"experiments", "__line__"}:
        raise ExperimentsError(f"{path}:1: the file must be a mapping with one key, 'experiments' (a list); "
                               f"found {sorted(k for k in (data if isinstance(data, dict) else {}) if k != '__line__')}")
    items = data.get("experiments") or []
    if not isinstance(items, list):
        raise ExperimentsError(f"{path}:{data.get('__line__', 1)}: 'experiments' must be a list of experiments")
    experiments = [_experiment(item, path) for item in items]
    seen: dict[str, Experiment] = {}
    for exp in experiments:
        if exp.id in seen:
            raise ExperimentsError(f"{path}:{exp.line}: experiment id {exp.id!r} is declared twice (also line "
                                   f"{seen[exp.id].line}); ids are permanent, give the new one another id")
        seen[exp.id] = exp
    _check_layers(experiments, path)
    _check_served_models(experiments, path)
    return ExperimentsFile(path, experiments)


def _fail(path: str, line: int, message: str) -> ExperimentsError:
    return ExperimentsError(f"{path}:{line}: {message}")


def _date(value, path: str, line: int, key: str) -> date:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise _fail(path, line, f"{key}: {value!r} is not a date; write it as YYYY-MM-DD") from None


def _experiment(item, path: str) -> Experiment:
    if not isinstance(item, dict):
        raise ExperimentsError(f"{path}: every entry of 'experiments' must be a mapping (id, salt, start, arms)")
    line = item.get("__line__", 0)
    unknown = set(item) - EXPERIMENT_KEYS - {"__line__"}
    if unknown:
        raise _fail(path, line, f"unknown key(s) {sorted(unknown)}; an experiment takes {sorted(EXPERIMENT_KEYS)}")
    for key in ("id", "salt", "start", "arms"):
        if item.get(key) in (None, ""):
            raise _fail(path, line, f"experiment without {key!r}; every experiment needs id, salt, start and arms")
    for key in ("id", "salt"):
        if not isinstance(item[key], str):
            raise _fail(path, line, f"{key} {item[key]!r} must be text: quote it ({key}: \"{item[key]}\"), so that "
                                    "YAML does not turn it into a number or a boolean and change the hash")
    exp_id = str(item["id"])
    if not ID_PATTERN.match(exp_id):
        raise _fail(path, line, f"id {exp_id!r}: use 1-64 lowercase letters, digits, '-' or '_' (it becomes part of "
                                "keys and the arm hash)")
    start = _date(item["start"], path, line, "start")
    end = _date(item["end"], path, line, "end") if item.get("end") not in (None, "") else None
    if end is not None and end < start:
        raise _fail(path, line, f"end {end} is before start {start}")
    traffic = item.get("traffic", [0, 100])
    if (not isinstance(traffic, list) or len(traffic) != 2 or not all(_is_number(t) for t in traffic)
            or not 0 <= float(traffic[0]) < float(traffic[1]) <= 100):
        raise _fail(path, line, f"traffic {traffic!r}: give [from, to] percent of the layer, 0 <= from < to <= 100")
    mde = item.get("minimum_detectable_effect")
    if mde is not None and (not _is_number(mde) or not 0 < float(mde) < 1):
        raise _fail(path, line, f"minimum_detectable_effect {mde!r}: an absolute change in churn rate between 0 "
                                "and 1 (0.01 = one percentage point)")
    arms = item["arms"]
    if not isinstance(arms, list) or len(arms) < 2:
        raise _fail(path, line, "arms: give at least two arms (for example a control and a challenger or holdout)")
    parsed = tuple(_arm(arm, path, line) for arm in arms)
    names = [a.name for a in parsed]
    if len(set(names)) != len(names):
        raise _fail(path, line, f"arm names {names} repeat; each arm needs its own name")
    return Experiment(exp_id, str(item["salt"]), start, parsed, end, str(item.get("layer") or ""),
                      (float(traffic[0]), float(traffic[1])), float(mde) if mde is not None else None,
                      str(item.get("description") or ""), line)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _arm(arm, path: str, exp_line: int) -> Arm:
    if not isinstance(arm, dict):
        raise _fail(path, exp_line, f"arm {arm!r} must be a mapping: {{name: ..., weight: ..., model: ...}}")
    line = arm.get("__line__", exp_line)
    unknown = set(arm) - ARM_KEYS - {"__line__"}
    if unknown:
        raise _fail(path, line, f"unknown arm key(s) {sorted(unknown)}; an arm takes {sorted(ARM_KEYS)}")
    name, weight, model = arm.get("name"), arm.get("weight"), arm.get("model")
    if not name or not ID_PATTERN.match(str(name)):
        raise _fail(path, line, f"arm name {name!r}: use 1-64 lowercase letters, digits, '-' or '_'")
    if not _is_number(weight) or float(weight) <= 0:
        raise _fail(path, line, f"arm {name}: weight {weight!r} must be a positive number (shares are weight / sum)")
    if not model or not isinstance(model, str):
        raise _fail(path, line, f"arm {name}: model must be 'champion', a registered version or a candidate name")
    contact = arm.get("contact", True)
    if not isinstance(contact, bool):
        raise _fail(path, line, f"arm {name}: contact {contact!r} must be true or false (false = a holdout)")
    return Arm(str(name), float(weight), model, contact)


def _check_layers(experiments: list[Experiment], path: str) -> None:
    """Experiments of one layer whose dates overlap must take disjoint traffic ranges (mutual exclusion)."""
    for i, a in enumerate(experiments):
        for b in experiments[i + 1:]:
            if not a.layer or a.layer != b.layer:
                continue
            dates_overlap = a.overlaps(b)
            ranges_overlap = a.traffic[0] < b.traffic[1] and b.traffic[0] < a.traffic[1]
            if dates_overlap and ranges_overlap:
                raise _fail(path, b.line, f"experiments {a.id!r} (line {a.line}) and {b.id!r} share layer {a.layer!r}, "
                                          f"their dates overlap and so do their traffic ranges {list(a.traffic)} and "
                                          f"{list(b.traffic)}: give them disjoint ranges (e.g. [0, 50] and [50, 100])")


def _check_served_models(experiments: list[Experiment], path: str) -> None:
    """Two experiments that both choose the served model must never share a customer: the same layer, apart.

    A customer is served one score; were they in two such experiments, one of them would measure a model its
    customers were not served.
    """
    for i, a in enumerate(experiments):
        for b in experiments[i + 1:]:
            if a.varies_model and b.varies_model and a.overlaps(b) and not (a.layer and a.layer == b.layer):
                raise _fail(path, b.line, f"experiments {a.id!r} (line {a.line}) and {b.id!r} both serve other models "
                                          "than the champion on common nights: put them in one layer with disjoint "
                                          "traffic ranges (a customer is served one model), or let their dates not "
                                          "overlap")
