"""Mean ± SE over seeds, gain over the start, and paired-by-seed differences from sweep results.

    python scripts/compare_sweeps.py runs/sweeps/toy-table1 [runs/sweeps/toy-dial-blind] --pairs intro:raft++,intro:grpo
    python scripts/compare_sweeps.py runs/sweeps/toy-table1+runs/sweeps/toy-table1-seeds34 ...   # cells of both, one end

"± SE" is the standard error of the mean over seeds (sample std / √seeds); a gain's SE adds the start
eval's binomial SE in quadrature; a paired difference is the mean ± SE of the per-seed differences
(cells of one seed see the same prompts each step). With two sweeps, each pair's difference between
them ("the dial effect") is given with SE √(SE₁² + SE₂²). Prints markdown."""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path


def mean_se(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else float("nan"))


def load(spec: str) -> tuple[dict, dict[str, dict[int, float]], dict[str, list[float]]]:
    """The cells of one sweep dir, or of several joined by '+' (e.g. more seeds run later; same start)."""
    cells = []
    for sweep_dir in map(Path, spec.split("+")):
        path = sweep_dir / "results.json"
        if not path.is_file():
            raise SystemExit(f"{path}: not found (run `intro-lite sweep --report {sweep_dir}` first)")
        cells += json.loads(path.read_text())["cells"]
    finals: dict[str, dict[int, float]] = {}
    lengths: dict[str, list[float]] = {}
    start = None
    for cell in cells:
        after = [e for e in cell["evals"] if e["when"] == "after"]
        before = [e for e in cell["evals"] if e["when"] == "before"]
        if before and start is None:
            start = before[0]
        elif before and before[0]["accuracy"] != start["accuracy"]:
            raise SystemExit(f"{spec}: cells start from different evals ({start['accuracy']} vs {before[0]['accuracy']})")
        if cell["status"] == "done" and after:
            finals.setdefault(cell["method"], {})[cell["values"].get("seed", 0)] = 100 * after[-1]["accuracy"]
            lengths.setdefault(cell["method"], []).append(after[-1]["mean_length"])
    if start is None:
        raise SystemExit(f"{path}: no cell has a 'before' eval")
    return start, finals, lengths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweeps", nargs="+", help="sweep dirs (DIR or DIR+DIR...: one end of a comparison)")
    ap.add_argument("--pairs", default="intro:raft++,intro:grpo", help="a:b,... paired differences a − b")
    args = ap.parse_args()
    pairs = [tuple(p.split(":")) for p in args.pairs.split(",") if p]
    effects: dict[tuple, list[tuple[float, float]]] = {}
    for d in args.sweeps:
        start, finals, lengths = load(d)
        p0, n0 = start["accuracy"], start["n_problems"]
        s0, se0 = 100 * p0, 100 * math.sqrt(p0 * (1 - p0) / n0)
        print(f"\n### {' + '.join(Path(x).name for x in d.split('+'))}: start {s0:.1f} ± {se0:.1f}% (binomial, {n0} problems), length {start['mean_length']:.1f}\n")
        print("| method | seeds | held-out acc (%) mean ± SE | gain over start (points) | per seed (%) | length |")
        print("|---|---|---|---|---|---|")
        for method, by_seed in finals.items():
            xs = [by_seed[s] for s in sorted(by_seed)]
            m, se = mean_se(xs)
            g_se = math.sqrt(se**2 + se0**2)
            print(f"| {method} | {len(xs)} | {m:.1f} ± {se:.1f} | {m - s0:+.1f} ± {g_se:.1f} ({(m - s0) / g_se:.1f} SE) | "
                  f"{', '.join(f'{x:.1f}' for x in xs)} | {statistics.fmean(lengths[method]):.1f} |")
        print("\n| paired by seed | difference (points) | per seed |\n|---|---|---|")
        for a, b in pairs:
            if a in finals and b in finals:
                seeds = sorted(set(finals[a]) & set(finals[b]))
                diffs = [finals[a][s] - finals[b][s] for s in seeds]
                m, se = mean_se(diffs)
                effects.setdefault((a, b), []).append((m, se))
                print(f"| {a} − {b} | {m:+.1f} ± {se:.1f} | {', '.join(f'{x:+.1f}' for x in diffs)} |")
    if len(args.sweeps) == 2:
        names = [Path(x.split("+")[0]).name for x in args.sweeps]
        print(f"\n| difference of differences ({names[0]} − {names[1]}) | points |\n|---|---|")
        for (a, b), vals in effects.items():
            if len(vals) == 2:
                (m1, s1), (m2, s2) = vals
                print(f"| ({a} − {b}) | {m1 - m2:+.1f} ± {math.sqrt(s1**2 + s2**2):.1f} |")


if __name__ == "__main__":
    main()
