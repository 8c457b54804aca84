"""`intro-lite sweep`: a grid of runs (methods × seeds × any key) from one shared start, then a report.

A sweep file names a base recipe, overrides for every run, a grid, an optional shared warm-up run
(`[start]`, run once; every cell starts from its adapter), a budget per cell and the held-out eval:

    recipe = "../tiny.toml"            # relative to the sweep file
    name = "toy-table1"                # runs land in <output_dir>/<name>/
    [set]                              # every run, start included
    "train.lr" = 3e-4
    [grid]                             # the product of these; `seed` gives the error bars
    objective = ["sft", "grpo", "intro"]
    seed = [0, 1, 2]
    [start]                            # optional: keys of the start run (an SFT warm-up by default)
    objective = "sft"
    "train.steps" = 20
    [budget]                           # one of: steps, rollout_tokens
    steps = 40
    [eval]                             # the same held-out eval for every cell
    source = "tiny"
    limit = 200
    every = 10

Cells run one after another in this process and share one vLLM engine. A finished cell (DONE
marker) is never re-run; an interrupted one resumes from its last checkpoint; a failing one is
recorded (FAILED, with its traceback) and the sweep goes on.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import statistics
import time
import tomllib
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from intro_lite.config import Config, ConfigError, load_config, toml_literal

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
    """`{"train": {"lr": 1}}` and `{"train.lr": 1}` both give `{"train.lr": 1}`."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
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
    grid = flatten(data.get("grid", {}))
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid.{key} must be a non-empty list")
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
    start = data.get("start")
    sweep = Sweep(
        file=path.resolve(),
        recipe=recipe,
        name=name,
        output_dir=output_dir,
        overrides=flatten(data.get("set", {})),
        grid=grid,
        start=None if start is None else {"objective": "sft", **flatten(start)},
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


# ------------------------------------------------------------------------------------------------
# Running


def run_sweep(sweep: Sweep, *, say: Callable[[str], None] = print, progress: bool = False) -> Path:
    """Start run (once), then every cell not yet DONE; returns the sweep dir. Failures are recorded, not raised."""
    from intro_lite.engine import RolloutEngine
    from intro_lite.grading import Grader
    from intro_lite.train import engine_settings, resolve_model_path, train

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one "Loading weights" bar per cell drowns the sweep's own lines
    sweep.dir.mkdir(parents=True, exist_ok=True)
    # A copy for `--report DIR` and for the record; `recipe` inside stays relative to the original file.
    _write_atomic(sweep.dir / "sweep.toml", sweep.file.read_text())
    _write_atomic(sweep.dir / "sweep.json", json.dumps({"file": str(sweep.file)}) + "\n")
    engine, engine_key, grader = None, None, Grader()
    jobs = ([("start", start_config(sweep))] if sweep.start is not None else []) + \
           [(c.name, cell_config(sweep, c)) for c in cells(sweep)]
    try:
        for i, (name, cfg) in enumerate(jobs):
            run_dir = cfg.run_dir
            if (run_dir / "DONE").exists():
                check_unchanged(run_dir, cfg)
                say(f"[{i + 1}/{len(jobs)}] {name}: done, skipped")
                continue
            if name != "start" and sweep.start is not None and not (sweep.dir / "start" / "DONE").exists():
                _record_failure(run_dir, "the shared start run did not finish")
                say(f"[{i + 1}/{len(jobs)}] {name}: FAILED (the shared start run did not finish)")
                continue
            settings = engine_settings(cfg, resolve_model_path(cfg.model.name_or_path))
            settings["seed"] = 0  # rollouts and evals seed every request; the engine's own seed is unused
            if settings != engine_key:  # share one vLLM engine while the base and its limits stay the same
                if engine is not None:
                    engine.close()
                engine, engine_key = RolloutEngine(**settings), settings
            resume = _prepare(run_dir)
            say(f"[{i + 1}/{len(jobs)}] {name}: {'resuming' if resume else 'running'}")
            t0 = time.time()
            try:
                train(cfg, progress=progress, resume=resume, engine=engine, grader=grader)
            except Exception as e:  # one bad cell must not cost the others; KeyboardInterrupt still stops
                _record_failure(run_dir, traceback.format_exc())
                say(f"[{i + 1}/{len(jobs)}] {name}: FAILED: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                continue
            _write_atomic(run_dir / "DONE", json.dumps({"seconds": time.time() - t0}) + "\n")
            say(f"[{i + 1}/{len(jobs)}] {name}: done in {time.time() - t0:.0f} s")
    finally:
        grader.close()
        if engine is not None:
            engine.close()
    return sweep.dir


def _prepare(run_dir: Path) -> bool:
    """True to resume an interrupted cell from its checkpoint; else start it afresh (clearing leftovers)."""
    import shutil

    (run_dir / "FAILED").unlink(missing_ok=True)
    ckpts = run_dir / "checkpoints"
    if ckpts.exists() and any((p / "COMPLETE").exists() for p in ckpts.glob("step-*")):
        return True
    if run_dir.exists():
        shutil.rmtree(run_dir)
    return False


def check_unchanged(run_dir: Path, cfg: Config) -> None:
    """A finished cell is reused only if the sweep would still run it with the same config."""
    import dataclasses

    from intro_lite.train import first_difference

    saved = load_config(run_dir / "config.toml")
    diff = first_difference(dataclasses.asdict(saved), dataclasses.asdict(cfg))
    if diff:
        raise ConfigError(f"{run_dir} finished with {diff}; the sweep file changed since: use another sweep name")


def _record_failure(run_dir: Path, text: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(run_dir / "FAILED", text)


def _write_atomic(path: Path, text: str) -> None:
    from intro_lite.io import write_atomic  # the project's one atomic writer (temp name, fsync, rename)

    write_atomic(path, text)


# ------------------------------------------------------------------------------------------------
# Report


@dataclass
class CellResult:
    name: str
    method: str
    values: dict[str, Any]
    status: str  # done | failed | pending
    evals: list[dict] = field(default_factory=list)  # eval.jsonl records: step, accuracy, mean_length
    metrics: list[dict] = field(default_factory=list)  # metrics.jsonl records
    seconds: float | None = None
    error: str = ""

    @property
    def final(self) -> dict | None:
        after = [e for e in self.evals if e["when"] == "after"]
        return after[-1] if after else None


def collect(sweep: Sweep) -> tuple[CellResult | None, list[CellResult]]:
    def read(run_dir: Path, name: str, method: str, values: dict) -> CellResult:
        status = "done" if (run_dir / "DONE").exists() else "failed" if (run_dir / "FAILED").exists() else "pending"
        r = CellResult(name, method, values, status)
        if (run_dir / "eval.jsonl").exists():
            r.evals = [json.loads(x) for x in (run_dir / "eval.jsonl").read_text().splitlines() if x.strip()]
        if (run_dir / "metrics.jsonl").exists():
            r.metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
        if status == "done":
            r.seconds = json.loads((run_dir / "DONE").read_text()).get("seconds")
        if status == "failed":
            lines = (run_dir / "FAILED").read_text().strip().splitlines()
            r.error = lines[-1] if lines else ""
        return r

    start = read(sweep.dir / "start", "start", "start", {}) if sweep.start is not None else None
    return start, [read(sweep.dir / "cells" / c.name, c.name, c.method, c.values) for c in cells(sweep)]


def _mean_std(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def method_rows(start_acc: float | None, results: list[CellResult]) -> list[dict]:
    rows = []
    for method in dict.fromkeys(r.method for r in results):
        group = [r for r in results if r.method == method]
        done = [r for r in group if r.status == "done" and r.final]
        acc = [100 * r.final["accuracy"] for r in done]
        length = [r.final["mean_length"] for r in done]
        steps = [r.metrics[-1]["step"] for r in done if r.metrics]
        sec_step = [statistics.fmean(m["time_rollout"] + m["time_grading"] + m["time_forward"] + m["time_backward"]
                                     + m["time_sync"] for m in r.metrics) for r in done if r.metrics]
        m_acc, s_acc = _mean_std(acc)
        rows.append({
            "method": method, "done": len(done), "cells": len(group),
            "acc_mean": m_acc, "acc_std": s_acc,
            "impr": (m_acc - start_acc) / start_acc * 100 if start_acc and done else math.nan,
            "len_mean": _mean_std(length)[0], "len_std": _mean_std(length)[1],
            "steps": statistics.fmean(steps) if steps else math.nan,
            "s_per_step": statistics.fmean(sec_step) if sec_step else math.nan,
        })
    return rows


def start_accuracy(start: CellResult | None, results: list[CellResult]) -> tuple[float | None, float | None]:
    """Held-out accuracy (%) and length of the common start: the start run's final eval, else the cells'
    step-0 eval (the same adapter for all, so the same number; the mean guards against a mismatch)."""
    if start is not None and start.final:
        return 100 * start.final["accuracy"], start.final["mean_length"]
    zero = [e for r in results for e in r.evals if e["step"] == 0]
    if not zero:
        return None, None
    return 100 * statistics.fmean(e["accuracy"] for e in zero), statistics.fmean(e["mean_length"] for e in zero)


def _fmt(m: float, s: float | None = None, digits: int = 1) -> str:
    if math.isnan(m):
        return "–"
    return f"{m:.{digits}f}" if s is None else f"{m:.{digits}f} ± {s:.{digits}f}"


def open_sweep_dir(sweep_dir: Path) -> Sweep:
    """The sweep that ran in `sweep_dir`, from the copy of its file kept there."""
    copy, meta = sweep_dir / "sweep.toml", sweep_dir / "sweep.json"
    if not copy.exists() or not meta.exists():
        raise ConfigError(f"{sweep_dir}: not a sweep directory (no sweep.toml/sweep.json)")
    original = Path(json.loads(meta.read_text())["file"])
    return load_sweep(copy, sweep_dir=sweep_dir, relative_to=original.parent)


def report(sweep: Sweep, *, command: str = "", console=None) -> Path:
    """Write report.md, results.json and the PNG plots into the sweep dir; print the table."""
    from intro_lite.evaluate import versions

    start, results = collect(sweep)
    start_acc, start_len = start_accuracy(start, results)
    rows = method_rows(start_acc, results)
    plots = plot(sweep, results, start_acc, start_len)

    header = "| method | cells done | held-out acc (%) mean ± std | Impr. over start (%) | mean length ± std | steps | s/step |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['done']}/{r['cells']} | {_fmt(r['acc_mean'], r['acc_std'])} | "
                     f"{_fmt(r['impr'])} | {_fmt(r['len_mean'], r['len_std'])} | {_fmt(r['steps'], digits=0)} | "
                     f"{_fmt(r['s_per_step'], digits=2)} |")
    table = "\n".join(lines)
    cfg0 = cell_config(sweep, cells(sweep)[0])
    md = [f"# Sweep `{sweep.name}`", ""]
    if command:
        md += ["Command:", "", "```", command, "```", ""]
    md += [f"Sweep file ({sweep.file.name}):", "", "```toml", sweep.file.read_text().strip(), "```", "",
           f"Base recipe: `{sweep.recipe.name}`. Held-out eval: `{cfg0.eval.source}`"
           f"{f' (first {cfg0.eval.limit} problems)' if cfg0.eval.limit else ''}, T {cfg0.eval.temperature}, "
           f"top-p {cfg0.eval.top_p}, {cfg0.eval.samples} sample(s) per problem, the same seed for every cell.", ""]
    if start_acc is not None:
        md += [f"Start (every cell's step 0): held-out accuracy {start_acc:.1f}%, mean length {start_len:.1f} tokens.", ""]
    md += [table, "",
           "Accuracy and length are each cell's final held-out eval; mean ± sample std over seeds. "
           "Impr. = (mean − start) / start. s/step excludes evals.", ""]
    for title, png in plots:
        md += [f"![{title}]({png})", ""]
    md += ["## Cells", "", "| cell | status | acc before → after (%) | length before → after | minutes |", "|---|---|---|---|---|"]
    for r in results:
        before = next((e for e in r.evals if e["step"] == 0), None)
        after = r.final
        md.append(f"| {r.name} | {r.status}{': ' + r.error if r.error else ''} | "
                  f"{_fmt(100 * before['accuracy']) if before else '–'} → {_fmt(100 * after['accuracy']) if after else '–'} | "
                  f"{_fmt(before['mean_length']) if before else '–'} → {_fmt(after['mean_length']) if after else '–'} | "
                  f"{_fmt(r.seconds / 60) if r.seconds else '–'} |")
    md += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in {**versions(), **_git_commit()}.items()), ""]
    _write_atomic(sweep.dir / "report.md", "\n".join(md))
    _write_atomic(sweep.dir / "results.json", json.dumps(
        {"start": {"accuracy": start_acc, "mean_length": start_len}, "methods": rows,
         "cells": [{k: v for k, v in asdict(r).items() if k != "metrics"} for r in results]}, indent=2))
    if console is not None:
        _print_table(console, sweep, rows, start_acc)
    return sweep.dir / "report.md"


def _git_commit() -> dict[str, str]:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).parent)
    except OSError:
        return {}
    return {"commit": out.stdout.strip()} if out.returncode == 0 else {}


def _print_table(console, sweep: Sweep, rows: list[dict], start_acc: float | None) -> None:
    from rich.table import Table

    t = Table(title=f"sweep {sweep.name}" + (f" (start {start_acc:.1f}%)" if start_acc is not None else ""))
    for col in ("method", "done", "acc % (mean ± std)", "Impr. %", "length", "s/step"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["method"], f"{r['done']}/{r['cells']}", _fmt(r["acc_mean"], r["acc_std"]), _fmt(r["impr"]),
                  _fmt(r["len_mean"], r["len_std"]), _fmt(r["s_per_step"], digits=2))
    console.print(t)


def plot(sweep: Sweep, results: list[CellResult], start_acc, start_len) -> list[tuple[str, str]]:
    """accuracy_vs_step.png and length_vs_step.png (mean over seeds, band = min..max), and for each
    numeric grid key other than seed, accuracy_vs_<key>.png. Returns (title, file name) pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    methods = list(dict.fromkeys(r.method for r in results))
    for key, title, fname in (("accuracy", "Held-out accuracy vs step", "accuracy_vs_step.png"),
                              ("mean_length", "Held-out rationale length vs step", "length_vs_step.png")):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        drawn = False
        for method in methods:
            series = [{e["step"]: e[key] * (100 if key == "accuracy" else 1) for e in r.evals}
                      for r in results if r.method == method and r.status == "done"]
            steps = sorted(set().union(*series)) if series else []
            steps = [s for s in steps if all(s in x for x in series)]
            if not steps:
                continue
            ys = [[x[s] for x in series] for s in steps]
            line, = ax.plot(steps, [statistics.fmean(y) for y in ys], marker="o", ms=3, label=f"{method} (n={len(series)})")
            ax.fill_between(steps, [min(y) for y in ys], [max(y) for y in ys], color=line.get_color(), alpha=0.15)
            drawn = True
        if not drawn:
            plt.close(fig)
            continue
        ax.set_xlabel("training step")
        ax.set_ylabel("accuracy (%)" if key == "accuracy" else "mean rationale length (tokens)")
        ax.set_title(f"{title} ({sweep.name})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        _save(fig, sweep.dir / fname)
        out.append((title, fname))
    for key, values in sweep.grid.items():
        if key == "seed" or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            continue
        others = [r for r in results if r.status == "done" and r.final]
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        groups = dict.fromkeys(" ".join(f"{k.split('.')[-1]}={v}" for k, v in r.values.items() if k not in (key, "seed"))
                               for r in others)
        for g in groups:
            xs, mean, lo, hi = [], [], [], []
            for v in values:
                acc = [100 * r.final["accuracy"] for r in others if r.values[key] == v and
                       " ".join(f"{k.split('.')[-1]}={x}" for k, x in r.values.items() if k not in (key, "seed")) == g]
                if acc:
                    xs.append(v), mean.append(statistics.fmean(acc)), lo.append(min(acc)), hi.append(max(acc))
            if xs:
                line, = ax.plot(xs, mean, marker="o", label=g or "mean over seeds")
                ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
        if start_acc is not None:
            ax.axhline(start_acc, color="gray", ls="--", lw=1, label="start")
        short = key.split(".")[-1]
        ax.set_xscale("log" if min(values) > 0 and max(values) / min(values) >= 10 else "linear")
        ax.set_xlabel(short)
        ax.set_ylabel("final held-out accuracy (%)")
        ax.set_title(f"Accuracy vs {short} ({sweep.name})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fname = f"accuracy_vs_{short}.png"
        _save(fig, sweep.dir / fname)
        out.append((f"Accuracy vs {short}", fname))
    return out


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
