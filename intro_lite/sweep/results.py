"""A sweep's report: each cell's evals and metrics collected, a row per method (mean ± std over seeds),
report.md, results.json and the plots written into the sweep directory."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from intro_lite.eval.run import versions
from intro_lite.io import read_jsonl_log, save_figure, write_atomic
from intro_lite.sweep.spec import Sweep, cell_config, cells


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
            r.evals = read_jsonl_log(run_dir / "eval.jsonl")[0]  # a torn last line (a kill mid-write) is dropped
        if (run_dir / "metrics.jsonl").exists():
            r.metrics = read_jsonl_log(run_dir / "metrics.jsonl")[0]
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


def report(sweep: Sweep, *, command: str = "", console=None) -> Path:
    """Write report.md, results.json and the PNG plots into the sweep dir; print the table."""
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
    write_atomic(sweep.dir / "report.md", "\n".join(md))
    write_atomic(sweep.dir / "results.json", json.dumps(
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


def rollouts_per_step(sweep: Sweep, results: list[CellResult]) -> int | None:
    """prompts_per_step × group_size if every finished cell's saved config agrees, else None."""
    from intro_lite.config import load_config

    seen = set()
    for r in results:
        path = sweep.dir / "cells" / r.name / "config.toml"
        if r.status == "done" and path.is_file():
            cfg = load_config(path)
            seen.add(cfg.train.prompts_per_step * cfg.rollout.group_size)
    return seen.pop() if len(seen) == 1 else None


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
        if per_step := rollouts_per_step(sweep, results):  # the same for every cell: a second x axis
            top = ax.secondary_xaxis("top", functions=(lambda s, k=per_step: s * k, lambda r, k=per_step: r / k))
            top.set_xlabel(f"rollouts ({per_step} per step; SFT trains on as many gold solutions)")
        ax.set_ylabel("accuracy (%)" if key == "accuracy" else "mean rationale length (tokens)")
        ax.set_title(f"{title} ({sweep.name})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save_figure(fig, sweep.dir / fname)
        out.append((title, fname))
    for key, values in sweep.grid.items():
        numeric = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if key == "seed" or not numeric:
            continue
        # Mostly numeric with a word or two (n_candidates = [1, ..., 40, "all"]): evenly spaced categories.
        categorical = len(numeric) < len(values)
        position = {v: (i if categorical else v) for i, v in enumerate(values)}
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
                    xs.append(position[v]), mean.append(statistics.fmean(acc)), lo.append(min(acc)), hi.append(max(acc))
            if xs:
                line, = ax.plot(xs, mean, marker="o", label=g or "mean over seeds")
                ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
        if start_acc is not None:
            ax.axhline(start_acc, color="gray", ls="--", lw=1, label="start")
        short = key.split(".")[-1]
        if categorical:
            ax.set_xticks(range(len(values)), [str(v) for v in values])
        else:
            ax.set_xscale("log" if min(values) > 0 and max(values) / min(values) >= 10 else "linear")
        ax.set_xlabel(short)
        ax.set_ylabel("final held-out accuracy (%)")
        ax.set_title(f"Accuracy vs {short} ({sweep.name})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fname = f"accuracy_vs_{short}.png"
        save_figure(fig, sweep.dir / fname)
        out.append((f"Accuracy vs {short}", fname))
    return out
