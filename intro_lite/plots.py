"""`intro-lite plot RUN_DIR ...`: PNGs of one or more runs' metrics.jsonl and eval.jsonl, one line per
run, in the sweep report's style (io.save_figure writes each atomically). Also drawn into
<run>/plots/ at the end of every run."""

from __future__ import annotations

import math
from pathlib import Path

from intro_lite.errors import ConfigError
from intro_lite.io import save_figure

PHASES = ("rollout", "grading", "forward", "backward", "sync")


def read_records(path: Path) -> list[dict]:
    """A run's log, a torn last line (a kill mid-write) dropped; a bad line before it is a one-line error."""
    from intro_lite.io import read_jsonl_log

    return read_jsonl_log(path)[0]


def smooth(ys: list[float], window: int) -> list[float]:
    """Trailing moving average (a single step's accuracy depends on which prompts it drew)."""
    return [sum(ys[max(0, i - window + 1) : i + 1]) / len(ys[max(0, i - window + 1) : i + 1]) for i in range(len(ys))]


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
    return [p[0] for p in pts], [float(p[1]) for p in pts]


def _w_std(r: dict) -> float | None:
    if r.get("w_mean") is None or r.get("w_sq_mean") is None:
        return None
    return math.sqrt(max(r["w_sq_mean"] - r["w_mean"] ** 2, 0.0))


# (file name, title, y label, [(metrics key, legend suffix)], smoothed)
FIGURES = [
    ("rollout_accuracy.png", "Rollout accuracy (smoothed)", "accuracy (%)", [("rollout_accuracy", "")], True),
    ("rationale_length.png", "Rationale length", "mean tokens", [("mean_length", "")], False),
    ("loss.png", "Loss", "loss", [("loss", "")], False),
    ("grad_norm.png", "Gradient norm (before clipping)", "‖g‖", [("grad_norm", "")], False),
    ("w_stats.png", "InTRO correction factor w", "w", [("w_mean", " mean"), ("w_std", " std"),
                                                        ("w_clipped_frac", " clipped frac")], False),
    # InTRO's teacher monitor (train/monitor.py): does the teacher still read the hint, how far has it moved?
    ("teacher_drift.png", "InTRO teacher drift", "value", [("teacher_hinted_accuracy", " hinted acc"),
                                                           ("teacher_kl_to_start", " KL to start"),
                                                           ("teacher_hint_leak", " hint leak")], False),
]


def plot_runs(run_dirs: list[Path], out: Path) -> list[Path]:
    """Draw every figure for which some run has data into `out`; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = []
    for d in map(Path, run_dirs):
        if not (d / "metrics.jsonl").exists():
            raise ConfigError(f"{d}: no metrics.jsonl (not a training run directory)")
        records = read_records(d / "metrics.jsonl")
        for r in records:
            r["w_std"] = _w_std(r)
            if r.get("rollout_accuracy") is not None:
                r["rollout_accuracy"] *= 100
        runs.append((d.name, records, read_records(d / "eval.jsonl")))
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def figure(fname: str, title: str, ylabel: str, draw) -> None:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        if not draw(ax):
            plt.close(fig)
            return
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save_figure(fig, out / fname)
        written.append(out / fname)

    for fname, title, ylabel, keys, smoothed in FIGURES:
        def draw(ax, keys=keys, smoothed=smoothed):
            drawn = False
            for name, records, _ in runs:
                for key, suffix in keys:
                    xs, ys = _series(records, key)
                    if xs:
                        ax.plot(xs, smooth(ys, max(1, len(ys) // 10)) if smoothed else ys, label=name + suffix)
                        drawn = True
            return drawn
        figure(fname, title, ylabel, draw)

    def held_out(ax):
        drawn = False
        for name, _, evals in runs:
            pts = sorted((e["step"], 100 * e["accuracy"]) for e in evals if e.get("accuracy") is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=name)
                drawn = True
        return drawn
    figure("heldout_accuracy.png", "Held-out accuracy (eval.jsonl)", "accuracy (%)", held_out)

    def phases(ax):
        drawn = False
        for name, records, _ in runs:
            bottoms = None
            for phase in PHASES:
                xs, ys = _series(records, f"time_{phase}")
                if not xs:
                    continue
                if len(runs) == 1:  # one run: stacked phases; several: total time per step, one line per run
                    bottoms = bottoms or [0.0] * len(ys)
                    ax.fill_between(xs, bottoms, [b + y for b, y in zip(bottoms, ys)], alpha=0.6, label=phase, step="mid")
                    bottoms = [b + y for b, y in zip(bottoms, ys)]
                drawn = True
            if len(runs) > 1 and drawn:
                xs, _ = _series(records, "time_rollout")
                totals = [sum(r.get(f"time_{p}") or 0.0 for p in PHASES) for r in records if r.get("time_rollout") is not None]
                ax.plot(xs, totals, label=name)
        return drawn
    figure("time_per_phase.png", "Seconds per step by phase", "seconds", phases)
    return written
