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
        """">= 1", "> 0", "in (0, 1)", "in [0, 1]", ... (the words the messages use)."""
        has_lo, has_hi = self.ge is not None or self.gt is not None, self.le is not None or self.lt is not None
        if has_lo and has_hi and all(isinstance(b, int) for b in (self.ge, self.le)):
            return f">= {self.ge} and <= {self.le}"  # integer keys: counts and sizes
        if has_lo and has_hi:
            lo = f"{'[' if self.ge is not None else '('}{_num(self.ge if self.ge is not None else self.gt)}"
            hi = f"{_num(self.le if self.le is not None else self.lt)}{']' if self.le is not None else ')'}"
            return f"in {lo}, {hi}"
        if has_lo:
            return f">= {_num(self.ge)}" if self.ge is not None else f"> {_num(self.gt)}"
        return f"<= {_num(self.le)}" if self.le is not None else f"< {_num(self.lt)}"

    def holds(self, v: float) -> bool:
        return ((self.ge is None or v >= self.ge) and (self.gt is None or v > self.gt)
                and (self.le is None or v <= self.le) and (self.lt is None or v < self.lt))


def _num(x: float) -> str:
    return f"{x:g}"


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
            also = "".join(f" or {a!r}" for a in f.metadata.get("also", ()))
            raise ConfigError(f"'{key}' must be {r.describe()}{also}, got {value}")


def unbounded_numeric_keys(cls: type, prefix: str = "") -> list[str]:
    """Numeric keys of a (nested) config dataclass that declare no range: a test keeps this empty."""
    import typing

    missing, hints = [], typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            missing += unbounded_numeric_keys(tp, f"{prefix}{f.name}.")
            continue
        union = typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None))
        arms = typing.get_args(tp) if union else (tp,)
        if any(a in (int, float) for a in arms) and range_of(f) is None:
            missing.append(f"{prefix}{f.name}")
    return missing
