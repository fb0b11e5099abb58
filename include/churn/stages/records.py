"""The serialization every stage result shares (a leaf module, light to import: no pandas, no drivers).

:func:`parse` turns a stage's XCom value back into its record, nested records included;
:class:`JsonRecord` is the round trip; :class:`RunRef` is the run every nightly task receives.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


def _parse_value(kind: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        return _parse_value(options[0], value) if len(options) == 1 else value
    if origin is list and isinstance(value, (list, tuple)):
        (item,) = typing.get_args(kind) or (Any,)
        return [_parse_value(item, v) for v in value]
    if isinstance(kind, type) and dataclasses.is_dataclass(kind) and isinstance(value, dict):
        return parse(kind, value)
    return value


def parse(cls: type[T], data: dict[str, Any] | T) -> T:
    """A record of type ``cls`` from its serialized dict (nested records too); unknown keys are ignored,
    a missing required field raises TypeError naming it. A value already of type ``cls`` is returned as is."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__}: expected a dict (a stage's XCom value), got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    return cls(**{k: _parse_value(hints.get(k, Any), v) for k, v in data.items() if k in names})


@dataclass(kw_only=True)
class JsonRecord:
    """JSON round trip shared by every result."""

    def as_dict(self) -> dict[str, Any]:
        """The XCom value (plain JSON types only)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        """Parse an XCom value; unknown keys are ignored, a missing required field raises TypeError."""
        return parse(cls, data)


@dataclass(kw_only=True)
class StageResult(JsonRecord):
    """A stage's output; ``stage_seconds`` is set by ``timed``."""

    stage_seconds: float | None = None


@dataclass(kw_only=True)
class RunRef(JsonRecord):
    """The run every nightly task receives: its key (the logical date), folder and trigger parameters."""

    run_key: str
    as_of: str
    run_dir: str
    airflow_run_id: str = ""
    params: dict[str, Any] = field(default_factory=dict)
