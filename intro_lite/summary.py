"""What `intro-lite train` prints when a run ends, or is interrupted: read from the run's own files."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console


def resume_point(run_dir: Path) -> str:
    """'interrupted at step N; `--resume` continues from step M' from the run's own files."""
    from intro_lite.io import read_jsonl_log
    from intro_lite.train.checkpoint import checkpoint_step

    done = read_jsonl_log(run_dir / "metrics.jsonl")[0] if (run_dir / "metrics.jsonl").exists() else []
    step = done[-1]["step"] if done else 0
    return f"at step {step}; `intro-lite train ... --resume` continues from step {checkpoint_step(run_dir)}"


def print_summary(run_dir: Path) -> None:
    """The end-of-run table: rollout accuracy over windows of steps, held-out accuracy with its standard error, alarms."""
    import json

    from rich.table import Table

    from intro_lite.io import read_jsonl_log

    steps = read_jsonl_log(run_dir / "metrics.jsonl")[0]
    table = Table(title=f"run {run_dir}")
    for col in ("", "accuracy", "mean length"):
        table.add_column(col)
    # A single step's rollout accuracy is decided by which prompts it drew: show means over a window.
    window = max(1, min(10, len(steps) // 4))
    for label, part in ((f"rollouts, first {window} steps", steps[:window]), (f"rollouts, last {window} steps", steps[-window:])):
        acc = [s["rollout_accuracy"] for s in part if s.get("rollout_accuracy") is not None]
        length = [s["mean_length"] for s in part if s.get("mean_length") is not None]
        if acc:
            table.add_row(label, f"{sum(acc) / len(acc):.3f}", f"{sum(length) / len(length):.1f}")
    summary = run_dir / "eval_summary.json"
    if summary.exists():
        s = json.loads(summary.read_text())
        for when in ("before", "after"):
            e = s[when]
            if not e["n_problems"]:  # e.g. every gold answer of the eval source unparseable: no score at all
                table.add_row(f"held-out {when}", "no problem scored (are the eval source's gold answers parseable?)", "")
                continue
            table.add_row(f"held-out {when} (n={e['n_problems'] * e.get('k', 1)})",
                          f"{e['accuracy']:.3f} ± {binomial_se(e):.3f}", f"{e['mean_length']:.1f}")
        if s["before"]["n_problems"] and s["after"]["n_problems"]:
            diff = s["after"]["accuracy"] - s["before"]["accuracy"]
            se = (binomial_se(s["before"]) ** 2 + binomial_se(s["after"]) ** 2) ** 0.5
            table.add_row("held-out change", f"{diff:+.3f} ± {se:.3f}", "")
    Console().print(table)
    alarms: dict[str, int] = {}
    for s in steps:
        for name in s.get("alarms") or []:
            alarms[name] = alarms.get(name, 0) + 1
    if alarms:
        Console().print("[yellow]alarms:[/yellow] " + ", ".join(f"{k} on {v} step(s)" for k, v in alarms.items())
                        + "  (fixes: docs/ecosystem.md#alarms)", highlight=False)
    Console().print(f"adapter: {run_dir / 'final'}  (± is one standard error)")


def binomial_se(result: dict) -> float:
    """Standard error of an accuracy over n problems x k samples (samples treated as independent)."""
    n = max(1, result["n_problems"] * result.get("k", 1))
    p = result["accuracy"]
    return (p * (1 - p) / n) ** 0.5
