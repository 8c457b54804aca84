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
    resume: bool = typer.Option(False, "--resume", help="Continue the run from its latest complete checkpoint."),
) -> None:
    """Train a LoRA adapter with the recipe's objective (InTRO by default)."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # keep vLLM's per-call notices off the progress bar
    overrides = list(set_)
    if output is not None:
        overrides.append(f'output_dir="{output}"')
    if name is not None:
        overrides.append(f'name="{name}"')
    try:
        cfg = load_config(recipe, overrides)
        from intro_lite.train import train as run_train

        run_dir = run_train(cfg, progress=not no_progress, resume=resume)
    except ConfigError as e:
        _fail(str(e))
        return
    except RuntimeError as e:
        from intro_lite.errors import TrainingAborted

        if not isinstance(e, TrainingAborted):
            raise
        _fail(str(e))
        return
    _print_summary(run_dir)


def _print_summary(run_dir: Path) -> None:
    import json

    from rich.table import Table

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # One step's rollout accuracy is decided by which 16 prompts it drew: report means over a
    # tenth of the run (at least one step) at each end instead.
    k = max(1, len(rows) // 10)
    table = Table(title=f"run {run_dir}")
    for col in ("", "accuracy", "mean length"):
        table.add_column(col)
    for label, part in ((f"rollouts, first {k} steps", rows[:k]), (f"rollouts, last {k} steps", rows[-k:])):
        acc = sum(r["rollout_accuracy"] for r in part) / len(part)
        table.add_row(label, f"{acc:.3f}", f"{sum(r['mean_length'] for r in part) / len(part):.1f}")
    summary = run_dir / "eval_summary.json"
    if summary.exists():
        s = json.loads(summary.read_text())
        for when in ("before", "after"):
            acc, n = s[when]["accuracy"], s[when].get("n_problems")
            se = f" ± {(acc * (1 - acc) / n) ** 0.5:.3f}" if n else ""  # binomial SE of the held-out mean
            table.add_row(f"held-out {when}" + (f" (n {n})" if n else ""), f"{acc:.3f}{se}", f"{s[when]['mean_length']:.1f}")
    Console().print(table)
    Console().print(f"adapter: {run_dir / 'final'}")


@app.command("eval")
def eval_(
    paths: list[Path] = typer.Argument(None, help="Run dirs (their final/ adapter), or results.json with --compare."),
    model: Optional[str] = typer.Option(
        None, "--model", help="Base model (HF name, dir, or tiny): a base row, and the base of every adapter."),
    adapter: list[Path] = typer.Option(
        [], "--adapter", help="PEFT adapter dir; on the base in its adapter_config.json unless --model (repeatable)."),
    benchmarks: str = typer.Option(
        "paper", "--benchmarks", help="Comma list: names, presets (paper, all), tiny, .jsonl files, HF datasets."),
    limit: int = typer.Option(0, "--limit", help="First N problems of each benchmark (0 = all)."),
    k: list[str] = typer.Option([], "--k", help="Samples for one benchmark: --k amc23=8 (repeatable)."),
    samples: Optional[int] = typer.Option(
        None, "--samples", help="Samples per problem, every benchmark (default 1; 32 for AMC23/AIME)."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Default: [eval] max_new_tokens."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Default: 0.6 ([eval] temperature)."),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="Default: 0.95 ([eval] top_p)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Default: [eval] seed."),
    prompt_template: Optional[str] = typer.Option(
        None, "--prompt-template", help="Default: [data] prompt_template, no chat template. \\n is a newline."),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Directory for results.json and samples.jsonl (default runs/eval/<timestamp>)."),
    compare: bool = typer.Option(False, "--compare", help="Re-render the tables from saved results.json files."),
    data_dir: Path = typer.Option(Path("../shared/data/eval"), "--data-dir", help="Files of the named benchmarks."),
    maj: bool = typer.Option(False, "--maj", help="Also report maj@k (majority answer, grouped by the grader)."),
    field: list[str] = typer.Option(
        [], "--field", help="Fields of file/HF benchmarks: problem=, answer=, solution=, id=, split= (repeatable)."),
) -> None:
    """Score models and adapters on math benchmarks; print the paper's Table 1 for them side by side."""
    import datetime
    import sys

    from intro_lite import evaluate as ev

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # keep vLLM's start-up log from burying the table
    # Piped output (a log file) gets room for the whole table instead of rich's 80-column default.
    screen = Console() if sys.stdout.isatty() or os.environ.get("COLUMNS") else Console(width=200)
    paths = list(paths or [])
    try:
        if compare:
            if not paths or model or adapter or out:
                _fail("--compare takes results.json files as arguments, and no --model/--adapter/--out")
            merged = ev.load_results(paths)
            diffs = ev.config_differences(merged["configs"])
            if diffs:
                _warn(f"results differ in protocol: {', '.join(diffs)}")
            ev.render(merged, screen)
            return
        from intro_lite.benchmarks import FIELD_KEYS, expand

        settings = ev.default_settings()
        settings.benchmarks = expand(benchmarks)
        template = prompt_template.replace("\\n", "\n") if prompt_template is not None else None
        for key, value in [("temperature", temperature), ("top_p", top_p), ("max_new_tokens", max_new_tokens),
                           ("seed", seed), ("prompt_template", template)]:
            if value is not None:
                setattr(settings, key, value)
        settings.limit, settings.maj, settings.data_dir = limit, maj, str(data_dir)
        settings.fields = dict(_pair(f, "--field", str) for f in field)
        if bad := sorted(set(settings.fields) - set(FIELD_KEYS)):
            _fail(f"--field {bad[0]}=...: unknown key (known: {', '.join(FIELD_KEYS)})")
        overrides = dict(_pair(x, "--k", int) for x in k)
        checks = [(limit >= 0, f"--limit must be >= 0, got {limit}"),
                  (samples is None or samples >= 1, f"--samples must be >= 1, got {samples}"),
                  (all(v >= 1 for v in overrides.values()), "--k values must be >= 1"),
                  (0 <= settings.temperature <= 2, f"--temperature must be in [0, 2], got {settings.temperature}"),
                  (0 < settings.top_p <= 1, f"--top-p must be in (0, 1], got {settings.top_p}"),
                  (settings.max_new_tokens >= 1, f"--max-new-tokens must be >= 1, got {settings.max_new_tokens}"),
                  ("{question}" in settings.prompt_template, "--prompt-template must contain {question}")]
        for ok, msg in checks:
            if not ok:
                _fail(msg)
        settings.k = ev.resolve_k(settings.benchmarks, samples, overrides, settings.fields)
        targets = ev.resolve_targets(paths, model, list(adapter), warn=_warn)
        out = out or Path("runs/eval") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        results = ev.run(settings, targets, out, console=console)
    except ConfigError as e:
        _fail(str(e))
        return
    ev.render(results, screen)
    screen.print(f"results: {out / 'results.json'}  samples: {out / 'samples.jsonl'}", highlight=False, soft_wrap=True)


@app.command()
def sweep(
    sweep_file: Optional[Path] = typer.Argument(None, help="Sweep TOML (e.g. recipes/sweeps/toy-table1.toml)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Only (re-)write the report of the sweep in this directory."),
    progress: bool = typer.Option(False, "--progress", help="Show each cell's progress bar."),
) -> None:
    """Run a grid of methods x seeds from one shared start (finished cells are skipped), then report."""
    import shlex
    import sys

    from intro_lite import sweep as sw

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    if (sweep_file is None) == (report is None):
        _fail("give a sweep file to run, or --report DIR to re-draw a finished sweep's report")
        return
    try:
        spec = sw.open_sweep_dir(report) if report is not None else sw.load_sweep(sweep_file)
        if report is None:
            sw.run_sweep(spec, say=lambda m: console.print(m, highlight=False, markup=False), progress=progress)
        command = "intro-lite " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        path = sw.report(spec, command=command, console=Console())
    except ConfigError as e:
        _fail(str(e))
        return
    Console().print(f"report: {path}")


@app.command()
def doctor(
    recipe: Optional[Path] = typer.Argument(None, help="Recipe TOML (default: recipes/tiny.toml, the tiny demo model)."),
    set_: list[str] = typer.Option([], "--set", help="Override a key: --set model.name_or_path=tiny-test (repeatable)."),
    skip_smoke: bool = typer.Option(False, "--skip-smoke", help="Environment checks and memory estimate only."),
) -> None:
    """Check the environment, run a one-step smoke test on the recipe's model, estimate peak GPU memory."""
    import sys

    from intro_lite.doctor import run_doctor

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    screen = Console() if sys.stdout.isatty() or os.environ.get("COLUMNS") else Console(width=200)
    try:
        ok = run_doctor(recipe, list(set_), smoke=not skip_smoke, console=screen)
    except ConfigError as e:
        _fail(str(e))
        return
    raise typer.Exit(code=0 if ok else 1)


def _warn(msg: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {msg}", highlight=False, soft_wrap=True)


def _pair(text: str, option: str, cast):
    key, sep, value = text.partition("=")
    try:
        if not sep or not key.strip():
            raise ValueError
        return key.strip(), cast(value.strip())
    except ValueError:
        _fail(f"{option} {text!r}: expected name=value" + (" with an integer value" if cast is int else ""))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
