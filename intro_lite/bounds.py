"""Ranges for numeric config keys, declared beside each default and checked when a config is built.

    lr: float = bounded(1e-5, gt=0, lt=1)

Every int/float key carries one (a test walks the schema); every float must also be finite. A leaf
module, so the objectives' own config dataclasses can declare ranges without importing the config."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from intro_lite.errors import ConfigError


@dataclass(frozen=True)
class Range:
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def describe(self) -> str:
        lo = f"[{self.ge}" if self.ge is not None else (f"({self.gt}" if self.gt is not None else "(-inf")
        hi = f"{self.le}]" if self.le is not None else (f"{self.lt})" if self.lt is not None else "inf)")
        return f"{lo}, {hi}"

    def holds(self, v: float) -> bool:
        return ((self.ge is None or v >= self.ge) and (self.gt is None or v > self.gt)
                and (self.le is None or v <= self.le) and (self.lt is None or v < self.lt))


def bounded(default: Any, *, ge=None, gt=None, le=None, lt=None, also: tuple = ()) -> Any:
    """A dataclass field whose numeric value must lie in the range; `also` lists non-numeric values
    the key accepts besides (e.g. "all" for intro.n_candidates)."""
    return dataclasses.field(default=default, metadata={"range": Range(ge, gt, le, lt), "also": also})


def range_of(f: dataclasses.Field) -> Range | None:
    return f.metadata.get("range")


def check_bounds(obj: Any, prefix: str = "") -> None:
    """One-line ConfigError for the first numeric key outside its range or not finite."""
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_bounds(value, f"{key}.")
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"'{key}' must be a finite number, got {value}")
        r = range_of(f)
        if r is not None and not r.holds(value):
            raise ConfigError(f"'{key}' must be in {r.describe()}, got {value}")


def unbounded_numeric_keys(cls: type, prefix: str = "") -> list[str]:
    """Numeric keys of a (nested) config dataclass that declare no range: a test keeps this empty."""
    import typing

    missing, hints = [], typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            missing += unbounded_numeric_keys(tp, f"{prefix}{f.name}.")
            continue
        arms = typing.get_args(tp) or (tp,)
        if any(a in (int, float) for a in arms) and range_of(f) is None:
            missing.append(f"{prefix}{f.name}")
    return missing
