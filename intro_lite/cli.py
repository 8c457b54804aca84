"""`intro-lite` command line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from intro_lite.config import ConfigError, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, help="InTRO LoRA trainer: train and evaluate on one machine.")
console = Console(stderr=True)


@app.callback()
def _root() -> None:
    """InTRO LoRA trainer: train and evaluate on one machine."""


def _fail(msg: str) -> None:
    console.print(f"[red]error:[/red] {msg}", soft_wrap=True, highlight=False, markup=True)
    raise typer.Exit(code=2)


@app.command()
def train(
    recipe: Path = typer.Argument(..., help="Recipe TOML (e.g. recipes/tiny.toml)."),
    set_: list[str] = typer.Option([], "--set", help="Override a key: --set train.lr=3e-5 (repeatable)."),
    output: Optional[Path] = typer.Option(None, "--output", help="Directory for runs (default: output_dir key)."),
    name: Optional[str] = typer.Option(None, "--name", help="Run name (default: name key)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Disable the progress bar."),
) -> None:
    """Train a LoRA adapter with the recipe's objective (InTRO by default)."""
    overrides = list(set_)
    if output is not None:
        overrides.append(f'output_dir="{output}"')
    if name is not None:
        overrides.append(f'name="{name}"')
    try:
        cfg = load_config(recipe, overrides)
        from intro_lite.train import train as run_train

        run_dir = run_train(cfg, progress=not no_progress)
    except ConfigError as e:
        _fail(str(e))
        return
    _print_summary(run_dir)


def _print_summary(run_dir: Path) -> None:
    import json

    from rich.table import Table

    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    first, last = json.loads(lines[0]), json.loads(lines[-1])
    table = Table(title=f"run {run_dir}")
    for col in ("", "rollout acc", "mean length"):
        table.add_column(col)
    table.add_row("first step", f"{first['rollout_accuracy']:.3f}", f"{first['mean_length']:.1f}")
    table.add_row("last step", f"{last['rollout_accuracy']:.3f}", f"{last['mean_length']:.1f}")
    summary = run_dir / "eval_summary.json"
    if summary.exists():
        s = json.loads(summary.read_text())
        table.add_row("held-out before", f"{s['before']['accuracy']:.3f}", f"{s['before']['mean_length']:.1f}")
        table.add_row("held-out after", f"{s['after']['accuracy']:.3f}", f"{s['after']['mean_length']:.1f}")
    Console().print(table)
    Console().print(f"adapter: {run_dir / 'final'}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
