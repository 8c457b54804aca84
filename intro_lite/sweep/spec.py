"""A sweep file: read, checked, and expanded into one validated config per cell (see the package docstring)."""

from __future__ import annotations

import itertools
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from intro_lite.config import Config, load_config, toml_literal
from intro_lite.errors import ConfigError

SWEEP_KEYS = {"recipe", "name", "output_dir", "set", "grid", "start", "budget", "eval"}
BUDGET_KEYS = {"steps": "train.steps", "rollout_tokens": "train.max_rollout_tokens"}
EVAL_KEYS = {"source", "limit", "every", "samples", "temperature", "top_p", "max_new_tokens", "seed"}


@dataclass
class Sweep:
    file: Path
    recipe: Path
    name: str
    output_dir: Path
    overrides: dict[str, Any]  # dotted key -> value, for every run
    grid: dict[str, list]  # dotted key -> values, in file order
    start: dict[str, Any] | None  # dotted key -> value for the shared start run; None = the base model
    budget: dict[str, Any]  # dotted key -> value (train.steps or train.max_rollout_tokens)
    eval: dict[str, Any]  # dotted key -> value
    dir: Path  # <output_dir>/<name>: the start run, cells/, the report


@dataclass
class Cell:
    name: str  # its run dir under <sweep>/cells/
    values: dict[str, Any]  # grid key -> value
    method: str  # the cell's values without the seed: cells of one method differ only in seed


def flatten(table: dict, prefix: str = "") -> dict[str, Any]:
    """`{"train": {"lr": 1}}` and `{"train.lr": 1}` both give `{"train.lr": 1}`; both at once is an error
    (one would win without a word)."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        items = flatten(value, f"{prefix}{key}.").items() if isinstance(value, dict) else [(f"{prefix}{key}", value)]
        for k, v in items:
            if k in out:
                raise ConfigError(f"'{k}' is written twice (as a dotted key and inside a table); keep one")
            out[k] = v
    return out


def load_sweep(path: str | Path, *, sweep_dir: Path | None = None, relative_to: Path | None = None) -> Sweep:
    """Read and check a sweep file; every cell's config is built once here, so a typo fails before any run.
    `sweep_dir`/`relative_to` re-open a finished sweep from its own copy (`--report DIR`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: sweep file not found")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: malformed TOML: {e}") from None
    unknown = sorted(set(data) - SWEEP_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key '{unknown[0]}' (known: {', '.join(sorted(SWEEP_KEYS))})")
    if "recipe" not in data:
        raise ConfigError(f"{path}: missing key 'recipe' (the base recipe, relative to the sweep file)")
    recipe = ((relative_to or path.parent) / data["recipe"]).resolve()
    name, output_dir = str(data.get("name", path.stem)), Path(data.get("output_dir", "runs/sweeps"))
    try:
        grid, overrides = flatten(data.get("grid", {})), flatten(data.get("set", {}))
        start = data.get("start")
        start = None if start is None else {"objective": "sft", **flatten(start)}
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid.{key} must be a non-empty list")
        repeated = [v for i, v in enumerate(values) if v in values[:i]]
        if repeated:  # it would run once and count twice in the report's means
            raise ConfigError(f"{path}: grid.{key} lists {repeated[0]!r} more than once")
    budget = data.get("budget", {})
    if len(budget) != 1 or next(iter(budget)) not in BUDGET_KEYS:
        raise ConfigError(f"{path}: [budget] needs exactly one of {', '.join(BUDGET_KEYS)}")
    (kind, amount), = budget.items()
    if kind in grid or BUDGET_KEYS[kind] in grid:
        raise ConfigError(f"{path}: the budget is the same for every cell; grid.{kind} is not allowed")
    evals = data.get("eval", {})
    bad = sorted(set(evals) - EVAL_KEYS)
    if bad:
        raise ConfigError(f"{path}: unknown key 'eval.{bad[0]}' (known: {', '.join(sorted(EVAL_KEYS))})")
    sweep = Sweep(
        file=path.resolve(),
        recipe=recipe,
        name=name,
        output_dir=output_dir,
        overrides=overrides,
        grid=grid,
        start=start,
        budget={BUDGET_KEYS[kind]: amount},
        eval={f"eval.{k}": v for k, v in evals.items()},
        dir=sweep_dir or output_dir / name,
    )
    for cell in cells(sweep):  # builds and validates every config: a bad value names its key here
        cell_config(sweep, cell)
    if sweep.start is not None:
        start_config(sweep)
    return sweep


def cells(sweep: Sweep) -> list[Cell]:
    keys = list(sweep.grid)
    out = []
    for combo in itertools.product(*(sweep.grid[k] for k in keys)):
        values = dict(zip(keys, combo))
        name = ",".join(f"{k.split('.')[-1]}={v}" for k, v in values.items())
        method = " ".join(str(v) if k == "objective" else f"{k.split('.')[-1]}={v}" for k, v in values.items() if k != "seed")
        out.append(Cell(name=name, values=values, method=method or "run"))
    return out


def _overrides(values: dict[str, Any]) -> list[str]:
    return [f"{k}={toml_literal(v)}" for k, v in values.items()]


def _load(sweep: Sweep, where: str, values: dict[str, Any]) -> Config:
    try:
        return load_config(sweep.recipe, _overrides(values))
    except ConfigError as e:
        raise ConfigError(f"{sweep.file} ({where}): {e}") from None


def start_config(sweep: Sweep) -> Config:
    values = {**sweep.overrides, **sweep.eval, **(sweep.start or {}), "output_dir": str(sweep.dir), "name": "start"}
    return _load(sweep, "[start]", values)


def cell_config(sweep: Sweep, cell: Cell) -> Config:
    values = {**sweep.overrides, **sweep.budget, **sweep.eval, **cell.values,
              "output_dir": str(sweep.dir / "cells"), "name": cell.name}
    if sweep.start is not None:
        values["lora.init_adapter"] = str((sweep.dir / "start" / "final").resolve())
    return _load(sweep, f"cell {cell.name}", values)


def open_sweep_dir(sweep_dir: Path) -> Sweep:
    """The sweep that ran in `sweep_dir`, from the copy of its file kept there."""
    copy, meta = sweep_dir / "sweep.toml", sweep_dir / "sweep.json"
    if not copy.exists() or not meta.exists():
        raise ConfigError(f"{sweep_dir}: not a sweep directory (no sweep.toml/sweep.json)")
    original = Path(json.loads(meta.read_text())["file"])
    return load_sweep(copy, sweep_dir=sweep_dir, relative_to=original.parent)
