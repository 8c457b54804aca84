"""`intro-lite doctor`: is this machine ready for a recipe?

Three parts, printed as tables: environment checks (versions, device, vLLM, bitsandbytes 4-bit, host
memory); a one-step smoke test on the recipe's model (a training step through the real loop, a rollout
with the adapter hot-swapped into vLLM, vLLM-vs-trainer logprob parity, a checkpoint save -> restore
round trip); and an estimate of the recipe's peak GPU memory, term by term, with the largest named.
Every check is caught: a failure is a `fail` row with a one-line reason, never a traceback.
"""

from __future__ import annotations

from pathlib import Path

from intro_lite.config import DEFAULTS_FILE, Config, load_config
from intro_lite.doctor.checks import GiB, attempt, environment_checks
from intro_lite.doctor.memory import estimate_memory, gpu_total_bytes, memory_row
from intro_lite.doctor.serve import CannotRunHere, data_check, gpu_gap, model_weights, tabled_config, would_fit
from intro_lite.doctor.smoke import smoke_test

TINY_RECIPE = DEFAULTS_FILE.parent / "recipes" / "tiny.toml"


def run_doctor(recipe: Path | None, overrides: list[str] = (), *, smoke: bool = True, console=None) -> bool:
    """Print the checks and the memory estimate; True if nothing failed. A bad recipe raises ConfigError, and
    so does a machine that lacks what the recipe needs (`CannotRunHere`: the GPU, the model weights, the
    data, one line each, and what would fit), after the report: both exit 2."""
    from rich.console import Console

    console = console or Console()
    if recipe is None and TINY_RECIPE.is_file():  # no recipe: the demo's, whose context fits the tiny model
        recipe = TINY_RECIPE
    cfg = load_config(recipe, list(overrides))
    model_rows: list[tuple[str, str, str]] = []
    missing = [gap] if (gap := attempt(model_rows, "GPU", lambda: gpu_gap(cfg))) else []
    model_path = attempt(model_rows, "model", lambda: resolve_model(cfg))
    if model_path:
        if model_path == cfg.model.name_or_path:  # not a tiny model: a directory or a hub name, maybe not here
            status, detail, gap = model_weights(model_path)
            model_rows.append(("model", status, detail))
            missing += [f"model weights: {gap}"] if gap else []
            model_path = None if gap else model_path
        else:
            model_rows.append(("model", "ok", f"{cfg.model.name_or_path} -> {model_path}"))
    status, detail, gap = data_check(cfg)
    model_rows.append(("data", status, detail))
    missing += [f"data: {gap}"] if gap else []
    model_config = attempt(model_rows, "model config", lambda: read_model_config(model_path)) if model_path else None
    if model_config:
        model_rows.append(("context length", *context_check(cfg, model_path)))
    elif not model_path and (model_config := tabled_config(cfg.model.name_or_path)):
        model_rows.append(("model config", "warn", f"not here; the estimate uses {cfg.model.name_or_path}'s public "
                                                   "config.json numbers (intro_lite/doctor/architectures.py)"))
    terms = attempt(model_rows, "memory estimate", lambda: estimate_memory(cfg, model_config, gpu_total_bytes())) if model_config else None
    rows = environment_checks(cfg, terms) + model_rows
    if missing:
        rows.append(("smoke test", "warn", "skipped: this machine cannot run the recipe (below)"))
    elif smoke and model_path:
        rows += smoke_test(cfg, model_path)
    elif not smoke:
        rows.append(("smoke test", "warn", "skipped (--skip-smoke)"))
    if terms:
        rows.append(memory_row(terms))
    print_report(console, cfg, recipe, rows, terms)
    if missing:
        raise CannotRunHere("\n".join([f"this machine cannot run {recipe or 'the defaults'}:", *missing,
                                        would_fit(cfg, model_config)]))
    return not any(status == "fail" for _, status, _ in rows)


def resolve_model(cfg: Config) -> str:
    from intro_lite.tiny.assets import resolve_model_path

    return resolve_model_path(cfg.model.name_or_path)  # builds the tiny model on first use


def read_model_config(model_path: str) -> dict:
    from intro_lite.policy import base_model_config

    return base_model_config(model_path)


def context_check(cfg: Config, model_path: str) -> tuple[str, str]:
    """The recipe's context against the model, as `train` checks it: a misfit is a bad recipe (ConfigError,
    exit 2, the same line `train` prints), not a failed check of the machine."""
    from intro_lite.train.preflight import check_context_length

    m, p, n = check_context_length(cfg, model_path), cfg.data.max_prompt_tokens, cfg.rollout.max_new_tokens
    limit = read_model_config(model_path).get("max_position_embeddings")
    return "ok", f"prompt {p} + rationale {n} tokens fit rollout.max_model_len {m} (model: {limit or '?'})"



def print_report(console, cfg: Config, recipe: Path | None, rows, terms) -> None:
    from rich.markup import escape
    from rich.table import Table

    colour = {"ok": "green", "warn": "yellow", "fail": "red"}
    table = Table(title=f"intro-lite doctor: {recipe or 'defaults'} (model {cfg.model.name_or_path})", title_justify="left")
    for col in ("check", "status", "detail"):
        table.add_column(col, overflow="fold")
    for name, status, detail in rows:
        table.add_row(name, f"[{colour[status]}]{status}[/]", escape(detail))  # details hold [brackets]
    console.print(table)
    if not terms:
        return
    mem = Table(title="Peak GPU memory estimate (trainer and vLLM on one GPU)", title_justify="left")
    for col, justify in (("term", "left"), ("GiB", "right"), ("how", "left")):
        mem.add_column(col, justify=justify, overflow="fold")
    for name, b, how in terms:
        mem.add_row(name, f"{b / GiB:.2f}", escape(how))
    total = sum(b for _, b, _ in terms)
    name, biggest, _ = max(terms, key=lambda t: t[1])
    mem.add_row("[bold]total[/]", f"[bold]{total / GiB:.2f}[/]", f"largest term: {name} ({100 * biggest / total:.0f}%)")
    console.print(mem)
