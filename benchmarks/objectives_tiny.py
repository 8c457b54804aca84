"""Every objective from the same start on the tiny task, at one fixed budget: time per step and accuracy.

    python benchmarks/objectives_tiny.py [--steps 10] [--out runs/objectives-bench]

Prints a table (median seconds per step and its forward/backward share, rollout accuracy over the
last 3 steps, held-out accuracy and length after training) and writes it to <out>/table.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main() -> None:
    from intro_lite.objectives import available

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", default="runs/objectives-bench")
    ap.add_argument("--objectives", default=",".join(sorted(available(), key=lambda n: n != "intro")),
                    help="comma-separated; default every registered objective, InTRO first")
    args = ap.parse_args()

    from intro_lite.config import load_config
    from intro_lite.train import train

    rows = []
    for objective in args.objectives.split(","):
        cfg = load_config("recipes/tiny.toml", [f'output_dir="{args.out}"', f'name="{objective.replace("+", "p")}"',
                                                 f'objective="{objective}"', f"train.steps={args.steps}",
                                                 "train.checkpoint_every=0"])
        t0 = time.perf_counter()
        run = train(cfg, progress=False)
        wall = time.perf_counter() - t0
        m = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        per_step = [sum(r[k] for k in r if k.startswith("time_")) for r in m]
        ev = json.loads((run / "eval_summary.json").read_text())
        rows.append({
            "objective": objective,
            "s_per_step": statistics.median(per_step),
            "fwd": statistics.median(r["time_forward"] for r in m),
            "bwd": statistics.median(r["time_backward"] for r in m),
            "rollout_acc_last3": statistics.mean(r["rollout_accuracy"] for r in m[-3:]),
            "eval_before": ev["before"]["accuracy"], "eval_after": ev["after"]["accuracy"],
            "len_before": ev["before"]["mean_length"], "len_after": ev["after"]["mean_length"], "wall": wall,
        })
    head = "| objective | s/step (median) | forward s | backward s | rollout acc (last 3) | held-out acc before → after | length before → after | wall s |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lines.append(f"| {r['objective']} | {r['s_per_step']:.2f} | {r['fwd']:.2f} | {r['bwd']:.2f} | {r['rollout_acc_last3']:.3f} | "
                     f"{r['eval_before']:.3f} → {r['eval_after']:.3f} | {r['len_before']:.1f} → {r['len_after']:.1f} | {r['wall']:.0f} |")
    table = "\n".join(lines)
    print(table)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "table.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
