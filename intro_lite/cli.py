"""`intro-lite` command line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from intro_lite.config import ConfigError, DataConfig, EvalConfig, load_config, toml_literal
from intro_lite.data.benchmarks import DEFAULT_DATA_DIR

app = typer.Typer(add_completion=False, no_args_is_help=True, help="InTRO LoRA trainer: train and evaluate on one machine.")
console = Console(stderr=True)


@app.callback()
def _root() -> None:
    """InTRO LoRA trainer: train and evaluate on one machine."""


def _default(section: type, table: str, key: str, note: str = "") -> str:
    """Option help naming the config default; escaped, since rich would read `[eval]` as markup."""
    return escape(f"Default: {getattr(section, key)!r} ([{table}] {key}){', ' + note if note else '.'}")


def _fail(msg: str) -> None:
    # The message is escaped: rich would read "[eval]" or "[budget]" in it as markup and drop them.
    console.print(f"[red]error:[/red] {escape(msg)}", soft_wrap=True, highlight=False, markup=True)
    raise typer.Exit(code=2)


@app.command()
def train(
    recipe: Path = typer.Argument(..., help="Recipe TOML (e.g. recipes/tiny.toml)."),
    set_: list[str] = typer.Option([], "--set", help="Override a key: --set train.lr=3e-5 (repeatable)."),
    output: Optional[Path] = typer.Option(None, "--output", help="Directory for runs (default: output_dir key)."),
    name: Optional[str] = typer.Option(None, "--name", help="Run name (default: name key)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="Disable the progress bar."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run from its latest complete checkpoint."),
    verbose: bool = typer.Option(False, "--verbose", help="Show the libraries' start-up output (else in RUN_DIR/stderr.log)."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Data-parallel processes on this machine: runs "
                              "`torchrun --nproc-per-node N -m intro_lite train ...` (docs/scale.md)."),
) -> None:
    """Train a LoRA adapter with the recipe's objective (InTRO by default)."""
    import signal

    from intro_lite.errors import Interrupted, TrainingAborted, first_line
    from intro_lite.quiet import hidden_stderr, keep_log
    from intro_lite.train import dist

    def on_sigterm(signum, frame):  # stop like Ctrl-C: one line, the state resumable
        raise Interrupted(signum)

    dist.pin_device()  # under torchrun: this rank's GPU only, before anything asks CUDA
    if not verbose:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # keep vLLM's per-call notices off the progress bar
    rank = int(os.environ.get("RANK", "0")) if dist.launched() > 1 else 0
    try:
        cfg = load_config(recipe, run_overrides(set_, output, name))
        if nproc > 1:  # this command again under torchrun, one rank per process, without --nproc
            flags = {"--no-progress": no_progress, "--resume": resume, "--verbose": verbose}
            dist.exec_torchrun(nproc, cfg.train.prompts_per_step, [
                "train", str(recipe), *[x for v in set_ for x in ("--set", v)], *(["--output", str(output)] if output else []),
                *(["--name", name] if name is not None else []), *[f for f, on in flags.items() if on]])
        from intro_lite.train import train as run_train

        log, log_name = None, "stderr.log" if rank == 0 else f"stderr-rank{rank}.log"
        signal.signal(signal.SIGTERM, on_sigterm)
        try:
            with hidden_stderr(not verbose, one_line_errors=(ConfigError, TrainingAborted, KeyboardInterrupt, Interrupted),
                               kept_as=cfg.run_dir / log_name) as log:
                run_dir = run_train(cfg, progress=not no_progress, resume=resume)
        finally:
            keep_log(log, cfg.run_dir, log_name)
    except ConfigError as e:
        if rank != 0:  # every rank meets the same config and files: rank 0 says it once
            raise typer.Exit(code=2)
        _fail(str(e))
        return
    except TrainingAborted as e:
        _fail(str(e))
        return
    except (KeyboardInterrupt, Interrupted) as e:
        from intro_lite.summary import resume_point

        if rank == 0:
            console.print(f"[yellow]interrupted:[/yellow] {escape(resume_point(cfg.run_dir))}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=143 if isinstance(e, Interrupted) else 130)
    except typer.Exit:
        raise
    except Exception as e:
        if dist.launched() <= 1:
            raise
        # Under torchrun: the failing rank's one line (its traceback is in the hidden log, shown above
        # with --verbose or in RUN_DIR/stderr-rank<r>.log); torchrun then stops the other ranks.
        _fail(f"rank {rank}: {type(e).__name__}: {first_line(e)}")
        return
    if rank == 0:
        from intro_lite.summary import print_summary

        print_summary(run_dir)


def run_overrides(set_: list[str], output: Optional[Path], name: Optional[str]) -> list[str]:
    """--set values, then --output/--name as escaped TOML literals (a path may hold " or \\)."""
    overrides = list(set_)
    if output is not None:
        overrides.append(f"output_dir={toml_literal(str(output))}")
    if name is not None:
        overrides.append(f"name={toml_literal(name)}")
    return overrides


@app.command("eval")
def eval_(
    paths: list[Path] = typer.Argument(None, help="Run dirs (their final/ adapter), or results.json with --compare."),
    model: Optional[str] = typer.Option(
        None, "--model", help="Base model (HF name, dir, or tiny): a base row, and the base of every adapter."),
    adapter: list[Path] = typer.Option(
        [], "--adapter", help="PEFT adapter dir; on the base in its adapter_config.json unless --model (repeatable)."),
    benchmarks: Optional[str] = typer.Option(
        None, "--benchmarks", help="Comma list: names, presets (paper, all), tiny, .jsonl files, HF datasets. "
        "Default: a run's own [eval] source and settings, else paper."),
    limit: Optional[int] = typer.Option(None, "--limit", help="First N problems of each benchmark (0 = all)."),
    k: list[str] = typer.Option([], "--k", help="Samples for one benchmark: --k amc23=8 (repeatable)."),
    samples: Optional[int] = typer.Option(
        None, "--samples", help="Samples per problem, every benchmark (default 1; 32 for AMC23/AIME)."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help=_default(EvalConfig, "eval", "max_new_tokens")),
    temperature: Optional[float] = typer.Option(None, "--temperature", help=_default(EvalConfig, "eval", "temperature")),
    top_p: Optional[float] = typer.Option(None, "--top-p", help=_default(EvalConfig, "eval", "top_p")),
    seed: Optional[int] = typer.Option(None, "--seed", help=_default(EvalConfig, "eval", "seed")),
    prompt_template: Optional[str] = typer.Option(
        None, "--prompt-template", help=_default(DataConfig, "data", "prompt_template", "no chat template. \\n is a newline.")),
    chat_template: Optional[bool] = typer.Option(
        None, "--chat-template/--no-chat-template", help="Prompts through the tokenizer's chat template "
        "(default: a run's data.chat_template, else off)."),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Directory for results.json and samples.jsonl (default runs/eval/<timestamp>)."),
    compare: bool = typer.Option(False, "--compare", help="Re-render the tables from saved results.json files."),
    data_dir: Path = typer.Option(DEFAULT_DATA_DIR, "--data-dir", help="Files of the named benchmarks."),
    maj: bool = typer.Option(False, "--maj", help="Also report maj@k (majority answer, grouped by the grader)."),
    field: list[str] = typer.Option(
        [], "--field", help="Fields of file/HF benchmarks: problem=, answer=, solution=, id=, split= (repeatable)."),
    trust_reward_code: bool = typer.Option(
        False, "--trust-reward-code", help="Score with the reward function a run dir's config.toml names (its "
        "Python runs here); without it such a run is refused."),
) -> None:
    """Score models and adapters on math benchmarks; print the paper's Table 1 for them side by side."""
    import datetime
    import sys

    from intro_lite.eval import report as rep
    from intro_lite.eval import run as ev
    from intro_lite.eval.targets import resolve_targets
    from intro_lite.rewards import BUILTIN as BUILTIN_REWARDS

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # keep vLLM's start-up log from burying the table
    # Piped output (a log file) gets room for the whole table instead of rich's 80-column default.
    screen = Console() if sys.stdout.isatty() or os.environ.get("COLUMNS") else Console(width=200)
    paths = list(paths or [])
    try:
        if compare:
            if not paths or model or adapter or out:
                _fail("--compare takes results.json files as arguments, and no --model/--adapter/--out")
            merged = rep.load_results(paths)
            diffs = rep.config_differences(merged["configs"])
            if diffs:
                _warn(f"results differ in protocol: {', '.join(diffs)}")
            rep.render(merged, screen)
            return
        from intro_lite.config.sources import FIELD_KEYS, expand

        settings = ev.default_settings(paths if benchmarks is None else [])
        if settings.settings_from and settings.reward not in BUILTIN_REWARDS and not trust_reward_code:
            _fail(f"{settings.settings_from}/config.toml: reward = {settings.reward!r} is Python code that scoring would "
                  "run; pass --trust-reward-code if you trust it, or --benchmarks NAME to score with the built-in rule")
        if settings.settings_from:
            _warn(f"scoring on {settings.benchmarks[0]!r}, {settings.settings_from}'s [eval] source and settings "
                  "(--benchmarks to choose)")
        settings.benchmarks = expand(benchmarks if benchmarks is not None else settings.benchmarks)
        limit = settings.limit if limit is None else limit
        samples = settings.samples if samples is None else samples
        template = prompt_template.replace("\\n", "\n") if prompt_template is not None else None
        for key, value in [("temperature", temperature), ("top_p", top_p), ("max_new_tokens", max_new_tokens),
                           ("seed", seed), ("prompt_template", template)]:
            if value is not None:
                setattr(settings, key, value)
        settings.limit, settings.maj, settings.data_dir = limit, maj, str(data_dir)
        settings.chat_template = settings.chat_template if chat_template is None else chat_template
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
        # The models first: a missing one is one line before any benchmark is built (a cold tiny one takes minutes).
        targets = resolve_targets(paths, model, list(adapter), warn=_warn)
        settings.k = ev.resolve_k(settings.benchmarks, samples, overrides, settings.fields)
        out = out or Path("runs/eval") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        from intro_lite.io import check_output_dir

        check_output_dir(out)
        results = ev.run(settings, targets, out, console=console)
    except ConfigError as e:
        _fail(str(e))
        return
    rep.render(results, screen)
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


@app.command()
def probe(
    recipe: Path = typer.Argument(..., help="Recipe TOML: its model, training data, prompts and rollout settings."),
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="A trained LoRA adapter dir (default: the recipe's)."),
    limit: int = typer.Option(64, "--limit", help="Problems of the training data to probe."),
    out: Optional[Path] = typer.Option(None, "--out", help="Directory for results.json and probe.png (default runs/probe/<name>)."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe key (repeatable)."),
    prefixes: int = typer.Option(8, "--prefixes", help="Posterior check: uncertain positions K (0 = skip)."),
    candidates: int = typer.Option(4, "--candidates", help="Posterior check: the policy's top tokens per position."),
    rollouts: int = typer.Option(16, "--rollouts", help="Posterior check: continuations M per (position, token)."),
    threshold: list[str] = typer.Option([], "--threshold", help="Verdict cut-off: --threshold rho=0.4 (docs/probe.md)."),
) -> None:
    """Will InTRO have signal here? Teacher-vs-policy statistics on the recipe's data and a one-line verdict."""
    import dataclasses

    from intro_lite.probe.stats import Thresholds

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    known = {f.name: f.type for f in dataclasses.fields(Thresholds)}
    pairs = [_pair(x, "--threshold", str) for x in threshold]
    if bad := [k for k, _ in pairs if k not in known]:
        _fail(f"--threshold {bad[0]}: unknown (known: {', '.join(known)})")
    if limit < 1 or candidates < 1 or rollouts < 1 or prefixes < 0:
        _fail("--limit, --candidates and --rollouts must be >= 1, --prefixes >= 0")
    try:
        thresholds = Thresholds(**{k: (int if known[k] in (int, "int") else float)(v) for k, v in pairs})
    except ValueError as e:
        _fail(f"--threshold: {e}")
        return
    try:
        cfg = load_config(recipe, list(set_))
        from intro_lite.probe.report import render
        from intro_lite.probe.run import ProbeSettings, run_probe

        out = out or Path("runs/probe") / cfg.name
        from intro_lite.io import check_output_dir

        check_output_dir(out)  # before the 20 s of work, not after
        res = run_probe(cfg, out=out, adapter=str(adapter) if adapter else None, thresholds=thresholds,
                        settings=ProbeSettings(limit=limit, prefixes=prefixes, candidates=candidates, rollouts=rollouts),
                        say=lambda m: console.print(m, highlight=False))
    except ConfigError as e:
        _fail(str(e))
        return
    render(res, Console(width=max(Console().width, 120)))
    Console().print(f"results: {out / 'results.json'}  plot: {out / 'probe.png'}", highlight=False, soft_wrap=True)


@app.command()
def plot(
    runs: list[Path] = typer.Argument(..., help="Run directories (metrics.jsonl, eval.jsonl); one line per run."),
    out: Optional[Path] = typer.Option(None, "--out", help="Directory for the PNGs (default: RUN_DIR/plots, one run)."),
) -> None:
    """PNGs of rollout and held-out accuracy, length, loss, grad norm, InTRO's w and time per phase."""
    from intro_lite.plots import plot_runs

    if out is None and len(runs) > 1:
        _fail("several runs: name the directory for their plots with --out")
    try:
        from intro_lite.io import check_output_dir

        check_output_dir(out or runs[0] / "plots")
        written = plot_runs(runs, out or runs[0] / "plots")
    except ConfigError as e:
        _fail(str(e))
        return
    for path in written:
        Console().print(str(path), highlight=False, soft_wrap=True)


@app.command()
def show(
    run: Path = typer.Argument(..., help=escape("Run directory with samples.jsonl ([log] samples_every).")),
    step: Optional[int] = typer.Option(None, "--step", help="Training step (default: the last sampled step)."),
    out: Optional[Path] = typer.Option(None, "--out", help="HTML file (default RUN_DIR/samples-step-N.html)."),
) -> None:
    """A self-contained HTML page of one step's samples, each rationale token coloured by InTRO's w."""
    from intro_lite.io import check_output_file, write_atomic
    from intro_lite.show import render

    try:
        if out is not None:
            check_output_file(out)
        page, step = render(run, step)
        out = out or run / f"samples-step-{step}.html"
        write_atomic(out, page)
    except ConfigError as e:
        _fail(str(e))
        return
    except OSError as e:
        _fail(f"{out}: cannot write ({e.strerror or type(e).__name__})")
        return
    Console().print(f"page: {out}", highlight=False, soft_wrap=True)


def _warn(msg: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {escape(msg)}", highlight=False, soft_wrap=True)


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
