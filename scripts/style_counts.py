"""Length, writing style and backtracking of held-out rationales, per method, from sweeps on tiny-choice_styles.

    python scripts/style_counts.py runs/sweeps/toy-styles-baselines runs/sweeps/toy-styles-intro \
        [--start runs/eval/styles-start] [--against grpo] [--plots docs/results/toy-styles]

Reads each finished cell's RUN/eval_samples.jsonl (the final held-out eval's rationales) and eval.jsonl
(held-out mean length at every eval). Per method, over seeds: accuracy, mean length (tokens), the share of
each style (intro_lite.tiny.choice.style_of) and backtracks per rationale, each mean ± SE; then each
method minus `--against`, paired by seed. `--start` is an `intro-lite eval` --out dir of the start model
(its samples.jsonl), printed as the first row. Prints markdown; `--plots` writes length_vs_step.png and
style_shares.png."""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from intro_lite.tiny.choice import STYLES, backtracks, branch_of, style_of

KEYS = ("accuracy", "length", *STYLES, "other", "backtracks")
ORDER = ("grpo", "dr_grpo", "raft++", "iapo", "repro", "intro")  # the design's order, for tables and plots
# Why a style's share moves under an outcome reward: how often each style is right, and the branch choice.
WITHIN = tuple(f"accuracy of {s}" for s in STYLES) + ("right branch",)


def mean_se(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else float("nan"))


def measure(rows: list[dict], prompts: dict[str, str] | None = None) -> dict[str, float]:
    """Accuracy (%), mean length (tokens), style shares (%) and backtracks per rationale of graded rationales;
    the accuracy within each style (%, nan if none) and, given each problem's prompt by id, the share (%)
    that takes the right branch."""
    n = len(rows)
    styles = [style_of(r["completion"]) or "other" for r in rows]
    out = {"accuracy": 100 * sum(r["correct"] for r in rows) / n, "length": sum(r["length"] for r in rows) / n,
           "backtracks": sum(backtracks(r["completion"]) for r in rows) / n}
    out.update({s: 100 * styles.count(s) / n for s in (*STYLES, "other")})
    for s in STYLES:
        hits = [r["correct"] for r, t in zip(rows, styles) if t == s]
        out[f"accuracy of {s}"] = 100 * sum(hits) / len(hits) if hits else float("nan")
    prompts = prompts or {}
    branches = [branch_of(prompts[r["id"]], r["completion"]) for r in rows if r["id"] in prompts]
    out["right branch"] = 100 * branches.count("right") / len(branches) if branches else float("nan")
    return out


def method_of(cell: Path) -> str:
    """The cell's name without its seed: "objective=intro,intro.teacher=ema"."""
    return ",".join(p for p in cell.name.split(",") if not p.startswith("seed="))


def load_cells(sweeps: list[Path], prompts: dict[str, str] | None = None) -> dict[str, dict[int, dict]]:
    """{method: {seed: {"final": measure(...), "lengths": [(step, mean_length), ...]}}} of finished cells."""
    out: dict[str, dict[int, dict]] = {}
    for sweep in sweeps:
        for cell in sorted((sweep / "cells").iterdir()):
            samples = cell / "eval_samples.jsonl"
            if not (cell / "DONE").exists() or not samples.is_file():
                continue
            seed = int(next(p for p in cell.name.split(",") if p.startswith("seed=")).split("=")[1])
            rows = [json.loads(line) for line in samples.read_text().splitlines() if line.strip()]
            evals = [json.loads(line) for line in (cell / "eval.jsonl").read_text().splitlines() if line.strip()]
            out.setdefault(method_of(cell), {})[seed] = {
                "final": measure(rows, prompts), "lengths": [(e["step"], e["mean_length"]) for e in evals]}

    def rank(method: str) -> tuple[int, str]:
        objective = method.split(",")[0].removeprefix("objective=")
        return (ORDER.index(objective) if objective in ORDER else len(ORDER), method)
    return dict(sorted(out.items(), key=lambda kv: rank(kv[0])))


def fmt(m: float, se: float) -> str:
    return f"{m:.1f} ± {se:.1f}" if se == se else f"{m:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweeps", nargs="+", type=Path)
    ap.add_argument("--start", type=Path, help="`intro-lite eval --out` dir of the start model")
    ap.add_argument("--against", default="objective=grpo", help="the method the paired differences are taken against")
    ap.add_argument("--plots", type=Path, help="directory for length_vs_step.png and style_shares.png")
    args = ap.parse_args()
    start_rows = ([json.loads(line) for line in (args.start / "samples.jsonl").read_text().splitlines() if line.strip()]
                  if args.start else [])
    prompts = {r["id"]: r["prompt"] for r in start_rows}  # the training evals store no prompt; same problems
    cells = load_cells(args.sweeps, prompts)
    if not cells:
        raise SystemExit(f"no finished cell with eval_samples.jsonl under {', '.join(map(str, args.sweeps))}")
    head = "| method | seeds | accuracy % | length (tokens) | " + " | ".join(f"{s} %" for s in STYLES) + " | other % | backtracks / rationale |"
    print(head + "\n|" + "---|" * (len(KEYS) + 2))
    start = measure(start_rows, prompts) if start_rows else None
    if start:
        print(f"| start ({len(start_rows)} rationales) | – | " + " | ".join(f"{start[k]:.{2 if k == 'backtracks' else 1}f}" for k in KEYS) + " |")
    for method, seeds in cells.items():
        cols = [mean_se([seeds[s]["final"][k] for s in seeds]) for k in KEYS]
        print(f"| {method} | {len(seeds)} | " + " | ".join(fmt(*c) if k != "backtracks" else f"{c[0]:.2f} ± {c[1]:.2f}"
                                                            for k, c in zip(KEYS, cols)) + " |")
    print("\nAccuracy within each style (%) and the share taking the right branch (%):\n")
    print("| method | " + " | ".join(WITHIN) + " |\n|" + "---|" * (len(WITHIN) + 1))
    if start:
        print("| start | " + " | ".join(f"{start[k]:.1f}" for k in WITHIN) + " |")
    for method, seeds in cells.items():
        cols = [mean_se([v for s in seeds if (v := seeds[s]["final"][k]) == v]) for k in WITHIN]
        print(f"| {method} | " + " | ".join(fmt(*c) for c in cols) + " |")
    against = next((m for m in cells if m == args.against), None)
    if against:
        print(f"\nPaired by seed, minus {against} (mean ± SE of the per-seed differences):\n")
        print("| method | seeds | accuracy | length | " + " | ".join(STYLES) + " | other | backtracks |\n|" + "---|" * (len(KEYS) + 2))
        for method, seeds in cells.items():
            common = sorted(set(seeds) & set(cells[against]))
            if method == against or len(common) < 2:
                continue
            diffs = [mean_se([seeds[s]["final"][k] - cells[against][s]["final"][k] for s in common]) for k in KEYS]
            print(f"| {method} | {len(common)} | " + " | ".join(
                (f"{m:+.1f} ± {se:.1f}" if k != "backtracks" else f"{m:+.2f} ± {se:.2f}") for k, (m, se) in zip(KEYS, diffs)) + " |")
    if args.plots:
        plot(cells, args.plots, start)


def plot(cells: dict[str, dict[int, dict]], out: Path, start: dict[str, float] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    for method, seeds in cells.items():
        steps = [s for s, _ in next(iter(seeds.values()))["lengths"]]
        means = [statistics.fmean(dict(seeds[s]["lengths"]).get(step, float("nan")) for s in seeds) for step in steps]
        ax.plot(steps, means, marker="o", label=method.replace("objective=", ""))
    ax.set(xlabel="step", ylabel="held-out mean length (tokens)", title="Rationale length (mean over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "length_vs_step.png", dpi=120)
    fig, ax = plt.subplots(figsize=(7, 4))
    finals = ({"start": [start]} if start else {}) | {m: [cells[m][s]["final"] for s in cells[m]] for m in cells}
    methods = list(finals)
    bottom = [0.0] * len(methods)
    for style in (*STYLES, "other"):
        share = [statistics.fmean(f[style] for f in finals[m]) for m in methods]
        ax.bar(range(len(methods)), share, bottom=bottom, label=style)
        bottom = [b + x for b, x in zip(bottom, share)]
    ax.set_xticks(range(len(methods)), [m.replace("objective=", "") for m in methods], rotation=30, ha="right", fontsize=7)
    ax.set(ylabel="% of held-out rationales", title="Writing style at the end (mean over seeds)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(out / "style_shares.png", dpi=120)


if __name__ == "__main__":
    main()
