"""One InTRO trainer micro-batch at a real model's shape, timed per phase, peak memory against the doctor's estimate.

    python benchmarks/model_shape.py --shape qwen2.5-1.5b                 # the full shape (a GPU: minutes)
    python benchmarks/model_shape.py --shape qwen2.5-7b --scale 0.25      # layers/hidden/MLP/vocab x 0.25
    python benchmarks/model_shape.py --shape qwen2.5-0.5b --scale 0.1 --set model.dtype=bfloat16 --json out.json

The model is a random-weight Qwen2ForCausalLM built from the architecture's public config.json numbers
(``intro_lite.doctor.architectures``; nothing is downloaded), written with a placeholder tokenizer
(token ids are random) to a temporary dir and loaded through the trainer's own ``load_policy``: the
recipe's NF4 base (if bitsandbytes imports), gradient checkpointing and LoRA targets. One micro-batch of
the recipe's shape (``train.micro_batch_size`` rows of ``data.max_prompt_tokens`` prompt +
``rollout.max_new_tokens`` rationale tokens, every position trained: the worst case the estimate assumes)
then runs the trainer's phases: the policy pass with gradient through LoRA (``suffix_hidden``), the
answer-conditioned pass under no_grad (prompt + HINT_TOKENS), the chunked InTRO loss
(``intro_loss_from_hidden`` at the model's vocabulary), backward, and the AdamW step.

``--scale F`` multiplies layers, query/KV heads (head_dim is kept), intermediate size and vocabulary by F,
so a CPU can run the shape's proportions; sequence lengths stay the recipe's (``--set`` changes them).

Memory: CUDA ``max_memory_allocated`` (reset before each phase); CPU the process's VmHWM, reset to the
current RSS through ``/proc/self/clear_refs`` before each phase (glibc's mmap threshold is pinned at
128 KiB first, so freed tensors go back to the kernel and one phase's high-water mark is not hidden in
another's free lists). Measured against ``intro_lite.doctor.memory.estimate_memory`` term by term:
trainer base weights = memory after ``load_policy`` minus before; activations = the highest of the
policy pass's and backward's peaks above the step's start; logits = the loss's peak above its start;
LoRA = bytes of the adapter's weights, gradients and AdamW state, counted. The vLLM terms are not run.

Needs only torch, transformers and peft (bitsandbytes for NF4 when installed). Prints the load average
at start and end: timings on a shared machine are indicative only.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a clone without installing

# shape -> (architecture in intro_lite.doctor.architectures, recipe whose shape the step takes)
SHAPES = {
    "qwen2.5-0.5b": ("Qwen/Qwen2.5-0.5B", "qwen2.5-1.5b.toml"),  # no 0.5B recipe: the paper's 1.5B settings
    "qwen2.5-1.5b": ("Qwen/Qwen2.5-1.5B", "qwen2.5-1.5b.toml"),
    "qwen2.5-7b": ("Qwen/Qwen2.5-7B", "qwen2.5-7b.toml"),
}
# Shared by every Qwen2.5 base config.json (public values); the memory estimate does not read them.
QWEN25_EXTRA = dict(rope_theta=1_000_000.0, rms_norm_eps=1e-6, hidden_act="silu", use_sliding_window=False)
HINT_TOKENS = 24  # "The final answer is {answer}. Let me justify it step by step." and the answer, roughly
GiB = 1024**3


def scaled(arch: dict, f: float) -> dict:
    """The architecture with layers, query and KV heads (head_dim kept), MLP and vocabulary x f."""
    if f == 1:
        return dict(arch)
    a = dict(arch)
    heads, kv = arch["num_attention_heads"], arch["num_key_value_heads"]
    hd = arch.get("head_dim") or arch["hidden_size"] // heads
    a["num_attention_heads"] = max(1, round(heads * f))
    a["num_key_value_heads"] = max(1, round(kv * f))
    while a["num_attention_heads"] % a["num_key_value_heads"]:
        a["num_key_value_heads"] -= 1
    a["hidden_size"] = a["num_attention_heads"] * hd
    a["head_dim"] = hd
    a["num_hidden_layers"] = max(1, round(arch["num_hidden_layers"] * f))
    a["intermediate_size"] = max(8, round(arch["intermediate_size"] * f / 8) * 8)
    a["vocab_size"] = max(256, round(arch["vocab_size"] * f / 64) * 64)
    return a


def write_model(arch: dict, dtype, out: Path) -> int:
    """A random-weight Qwen2ForCausalLM of `arch` in `dtype` and a placeholder tokenizer, saved to `out`."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "intermediate_size", "tie_word_embeddings", "max_position_embeddings", "head_dim")
    config = Qwen2Config(**{k: arch[k] for k in keys if k in arch}, **QWEN25_EXTRA, pad_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in `dtype` directly: a 7B model in fp32 first would need 30 GB of RAM
    try:
        model = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(prev)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(str(out), safe_serialization=True)
    del model
    tok = Tokenizer(models.WordLevel({"<pad>": 0, "<eos>": 1, "<unk>": 2}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                            unk_token="<unk>").save_pretrained(str(out))
    return n_params


class Meter:
    """Memory now and the peak since the last reset: CUDA's allocator counters, or the process's RSS/VmHWM."""

    def __init__(self, device):
        import torch

        self.cuda = device.type == "cuda"
        self.torch = torch
        if not self.cuda:
            try:  # a fixed mmap threshold (M_MMAP_THRESHOLD = -3) also stops glibc raising it after frees
                ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)
            except OSError:
                pass
            if not os.access("/proc/self/clear_refs", os.W_OK):
                raise SystemExit("model_shape: /proc/self/clear_refs is not writable: cannot reset the CPU peak")

    def _status(self, key: str) -> int:
        return int(re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def now(self) -> int:
        self.sync()
        return self.torch.cuda.memory_allocated() if self.cuda else self._status("VmRSS")

    def reset(self) -> None:
        self.sync()
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()
        else:
            Path("/proc/self/clear_refs").write_text("5")

    def peak(self) -> int:
        self.sync()
        return self.torch.cuda.max_memory_allocated() if self.cuda else self._status("VmHWM")


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def make_batch(rows: int, prompt: int, rationale: int, vocab: int, seed: int):
    """Random prompts x, answer-conditioned prompts x ⊕ hint and rationales z of the recipe's lengths."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = lambda n: torch.randint(3, vocab, (n,), generator=g).tolist()  # noqa: E731 (0-2: pad/eos/unk)
    x = [ids(prompt) for _ in range(rows)]
    xy = [p + ids(HINT_TOKENS) for p in x]
    z = [ids(rationale) for _ in range(rows)]
    return x, xy, z


def trainer_step(model, opt, meter: Meter, cfg, batch, seed: int, progress=None):
    """One micro-batch through the trainer's phases: [(phase, seconds, start bytes, peak bytes)], loss, LoRA bytes.
    ``progress(phase dict)``, if given, is called as each phase ends."""
    import torch

    from intro_lite.objectives.intro import DEFAULT_CHUNK_SIZE, intro_loss_from_hidden
    from intro_lite.policy import trainable_parameters
    from intro_lite.forward import lm_head_weight, suffix_hidden

    x, xy, z = batch
    params = trainable_parameters(model)
    intro = cfg.intro
    phases, out = [], {}

    def phase(name, fn):
        gc.collect()
        start = meter.now()
        meter.reset()
        t0 = time.perf_counter()
        result = fn()
        meter.sync()
        phases.append(dict(phase=name, seconds=time.perf_counter() - t0, start_bytes=start, peak_bytes=meter.peak()))
        if progress:
            progress(phases[-1])
        return result

    model.train()
    hidden, tokens, mask = phase("policy pass (grad through LoRA)", lambda: suffix_hidden(model, x, z, 0))
    with torch.no_grad():
        post = phase("answer-conditioned pass (no_grad)", lambda: suffix_hidden(model, xy, z, 0)[0])
    gen = torch.Generator(device=hidden.device).manual_seed(seed)
    loss, stats = phase("InTRO loss (chunked)", lambda: intro_loss_from_hidden(
        hidden, post, lm_head_weight(model), tokens, mask, n_candidates=intro.n_candidates, clip_max=intro.clip_max,
        generator=gen, chunk_size=intro.logits_chunk_size or DEFAULT_CHUNK_SIZE))
    del post
    phase("backward", lambda: loss.backward())
    del hidden

    def step():
        torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm)
        opt.step()
        tensors = [p for p in params] + [p.grad for p in params if p.grad is not None]
        tensors += [v for st in opt.state.values() for v in st.values() if torch.is_tensor(v) and v.dim() > 0]
        out["lora_bytes"] = sum(t.numel() * t.element_size() for t in tensors)
        opt.zero_grad(set_to_none=True)

    phase("optimizer step (clip + AdamW)", step)
    return phases, loss.item(), stats, out["lora_bytes"]


def shape_config(shape: str, recipe: str | None, sets: list[str], quantization: str):
    """The recipe's config for `shape` with `sets` applied, the trainer base to use (the recipe's NF4 falls
    back to none, said on stdout, when bitsandbytes does not import), dtype and device resolved."""
    from intro_lite.config import load_config
    from intro_lite.policy import resolve_device, resolve_dtype

    cfg = load_config(recipe or REPO / "recipes" / SHAPES[shape][1], sets)
    quant = cfg.model.quantization if quantization == "recipe" else quantization
    if quant == "nf4":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            if quantization == "nf4":
                raise SystemExit("model_shape: --quantization nf4 needs bitsandbytes (pip install bitsandbytes)") \
                    from None
            print("bitsandbytes does not import: the trainer base is not quantised (--quantization none)")
            quant = "none"
    cfg.model.quantization, cfg.lora.init_adapter = quant, ""
    device = resolve_device(cfg.model.device)
    cfg.model.device = device.type
    cfg.model.dtype = str(resolve_dtype(cfg.model.dtype, device)).removeprefix("torch.")  # the estimate reads "auto" as 16-bit
    return cfg, device


def run_steps(cfg, arch: dict, model_dir, meter: Meter, *, warmup: int, steps: int, seed: int, progress=None) -> dict:
    """Load the saved model at `model_dir` through ``load_policy`` and run `warmup` + `steps` trainer steps.

    Returns the model and optimizer (for more work on them), the per-step phases (``warmup_steps`` and
    ``measured_steps``), the reported ``phases`` (seconds: mean over the measured steps; memory: the
    measured step with the highest peak), the memory terms measured, and the load's bytes and seconds."""
    import torch

    from intro_lite.policy import load_policy, trainable_parameters

    rows, prompt, rationale = cfg.train.micro_batch_size, cfg.data.max_prompt_tokens, cfg.rollout.max_new_tokens
    gc.collect()
    before = meter.now()
    t0 = time.perf_counter()
    model, _ = load_policy(cfg, str(model_dir))
    load_seconds = time.perf_counter() - t0
    gc.collect()
    weights = meter.now() - before
    params = trainable_parameters(model)
    opt = torch.optim.AdamW(params, lr=cfg.train.lr, betas=(cfg.train.adam_beta1, cfg.train.adam_beta2))
    done = []
    for i in range(warmup + steps):  # first calls pay kernel and page set-up: reported apart
        batch = make_batch(rows, prompt, rationale, arch["vocab_size"], seed + i)
        phases, loss, stats, lora_bytes = trainer_step(
            model, opt, meter, cfg, batch, seed + i, None if progress is None else lambda p, i=i: progress(i, p))
        done.append(dict(phases=phases, loss=loss, stats=stats, lora_bytes=lora_bytes, seed=seed + i))
    measured = done[warmup:]
    by_step = [measured_terms(s["phases"], weights, s["lora_bytes"]) for s in measured]
    worst = max(range(len(measured)), key=lambda k: max(p["peak_bytes"] for p in measured[k]["phases"]))
    phases = [dict(p, seconds=sum(s["phases"][j]["seconds"] for s in measured) / len(measured))
              for j, p in enumerate(measured[worst]["phases"])]
    return dict(model=model, opt=opt, before=before, weights=weights, load_seconds=load_seconds,
                lora_parameters=sum(p.numel() for p in params), warmup_steps=done[:warmup], measured_steps=measured,
                phases=phases, measured={k: max(m[k] for m in by_step) for k in by_step[0]},
                loss=measured[-1]["loss"], stats=measured[-1]["stats"], last_batch_seed=measured[-1]["seed"])


def measured_terms(phases: list[dict], weights: int, lora_bytes: int) -> dict:
    """The memory terms one step measured, named as ``estimate_memory`` names them."""
    by = {p["phase"].split(" (")[0]: p for p in phases}
    step_start = by["policy pass"]["start_bytes"]
    return {
        "trainer base weights": weights,
        "activations": max(by["policy pass"]["peak_bytes"], by["backward"]["peak_bytes"]) - step_start,
        "logits": by["InTRO loss"]["peak_bytes"] - by["InTRO loss"]["start_bytes"],
        "LoRA weights + grads + AdamW": lora_bytes,
    }


def memory_terms(cfg, arch: dict, run: dict) -> tuple[list[dict], dict]:
    """Each ``estimate_memory`` term with the run's measurement and measured/estimate, and the trainer's total."""
    from intro_lite.doctor.memory import estimate_memory, gpu_total_bytes

    terms = []
    for name, est, how in estimate_memory(cfg, arch, gpu_total_bytes()):
        m = run["measured"].get(name)
        terms.append(dict(term=name, estimate_bytes=est, measured_bytes=m, how=how,
                          ratio=None if m is None else m / est))
    trainer_est = sum(t["estimate_bytes"] for t in terms if t["measured_bytes"] is not None)
    trainer_peak = max(p["peak_bytes"] for s in run["measured_steps"] for p in s["phases"]) - run["before"]
    return terms, dict(estimate_bytes=trainer_est, measured_bytes=trainer_peak, ratio=trainer_peak / trainer_est)


def shape_result(args, cfg, arch: dict, arch_name: str, run: dict, meter: Meter, n_params: int, t_build: float) -> dict:
    """The JSON-able record of one shape's run (what ``report`` prints)."""
    import torch

    terms, total = memory_terms(cfg, arch, run)
    rows, prompt, rationale = cfg.train.micro_batch_size, cfg.data.max_prompt_tokens, cfg.rollout.max_new_tokens
    return dict(
        shape=args.shape, architecture=arch_name, scale=args.scale, model_config=arch, parameters=n_params,
        lora_parameters=run["lora_parameters"], device=cfg.model.device, dtype=cfg.model.dtype,
        quantization=cfg.model.quantization, gradient_checkpointing=cfg.model.gradient_checkpointing,
        memory_measure="torch.cuda.max_memory_allocated" if meter.cuda else "VmHWM (clear_refs 5 per phase)",
        micro_batch=dict(rows=rows, prompt_tokens=prompt, posterior_prompt_tokens=prompt + HINT_TOKENS,
                         rationale_tokens=rationale, chunk_size=cfg.intro.logits_chunk_size,
                         n_candidates=cfg.intro.n_candidates),
        warmup_steps=len(run["warmup_steps"]), steps=len(run["measured_steps"]),
        warmup_phases=[s["phases"] for s in run["warmup_steps"]],
        step_phases=[s["phases"] for s in run["measured_steps"]],
        build_seconds=t_build, load_seconds=run["load_seconds"], phases=run["phases"],
        step_seconds=sum(p["seconds"] for p in run["phases"]),
        loss=run["loss"], w_mean=run["stats"]["w_mean"], terms=terms, trainer_total=total, torch=torch.__version__,
    )


def write_json(path, result: dict) -> None:
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, path)  # never a half-written output file


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-1.5b")
    ap.add_argument("--scale", type=float, default=1.0, help="layers/heads/MLP/vocab x F (0 < F <= 1)")
    ap.add_argument("--recipe", help="whose shape the step takes (default: the shape's recipe in recipes/)")
    ap.add_argument("--quantization", choices=["recipe", "nf4", "none"], default="recipe",
                    help="trainer base; 'recipe' = the recipe's, none if bitsandbytes does not import")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, as intro-lite's")
    ap.add_argument("--warmup", type=int, default=1, help="steps before the reported ones")
    ap.add_argument("--steps", type=int, default=1, help="reported steps (seconds: their mean)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    if not 0 < args.scale <= 1:
        ap.error(f"--scale must be in (0, 1], got {args.scale}")
    if args.warmup < 0 or args.steps < 1:
        ap.error("--warmup must be >= 0 and --steps >= 1")
    load_start = load_avg()
    print(f"load average at start: {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f} "
          f"({os.cpu_count()} CPUs; timings on a shared machine are indicative only)")

    import torch

    from intro_lite.doctor.architectures import ARCHITECTURES
    from intro_lite.doctor.memory import count

    arch_name = SHAPES[args.shape][0]
    cfg, device = shape_config(args.shape, args.recipe, args.set, args.quantization)
    arch = scaled(ARCHITECTURES[arch_name], args.scale)
    meter = Meter(device)
    with tempfile.TemporaryDirectory(prefix="model-shape-") as tmp:
        t0 = time.perf_counter()
        n_params = write_model(arch, getattr(torch, cfg.model.dtype), Path(tmp))
        t_build = time.perf_counter() - t0
        run = run_steps(cfg, arch, tmp, meter, warmup=args.warmup, steps=args.steps, seed=args.seed)
    result = shape_result(args, cfg, arch, arch_name, run, meter, n_params, t_build)
    result.update(load_avg_start=load_start, load_avg_end=load_avg())
    report(result, count)
    if args.json:
        write_json(args.json, result)
    return result


def report(r: dict, count) -> None:
    mb = r["micro_batch"]
    c = r["model_config"]
    print(f"{r['shape']} x {r['scale']:g}: {count(r['parameters'])} params (L {c['num_hidden_layers']}, "
          f"H {c['hidden_size']}, heads {c['num_attention_heads']}/{c['num_key_value_heads']}, "
          f"MLP {c['intermediate_size']}, V {c['vocab_size']}), "
          f"LoRA {count(r['lora_parameters'])}; {r['device']} {r['dtype']}, base {r['quantization']}, "
          f"checkpointing {r['gradient_checkpointing']}")
    print(f"micro-batch: {mb['rows']} rows x ({mb['prompt_tokens']} prompt + {mb['rationale_tokens']} rationale) "
          f"tokens, posterior prompt {mb['posterior_prompt_tokens']}, loss chunk {mb['chunk_size']}, "
          f"n = {mb['n_candidates']}; "
          f"model written in {r['build_seconds']:.1f}s, loaded in {r['load_seconds']:.1f}s")
    print(f"{r['warmup_steps']} warm-up step(s), then {r['steps']} reported: seconds are their mean, memory the "
          f"reported step with the highest peak")
    print(f"{'phase':<36}{'seconds':>9}{'start GiB':>11}{'peak GiB':>10}{'+GiB':>8}")
    for p in r["phases"]:
        print(f"{p['phase']:<36}{p['seconds']:>9.2f}{p['start_bytes'] / GiB:>11.3f}{p['peak_bytes'] / GiB:>10.3f}"
              f"{(p['peak_bytes'] - p['start_bytes']) / GiB:>8.3f}")
    print(f"{'step':<36}{r['step_seconds']:>9.2f}   loss {r['loss']:.4g}, w_mean {r['w_mean']:.3g}")
    print(f"memory ({r['memory_measure']}) vs intro_lite.doctor.memory.estimate_memory:")
    print(f"{'term':<30}{'estimate GiB':>13}{'measured GiB':>14}{'ratio':>7}")
    for t in r["terms"]:
        m = "not run" if t["measured_bytes"] is None else f"{t['measured_bytes'] / GiB:.3f}"
        ratio = "" if t["ratio"] is None else f"{t['ratio']:.2f}"
        print(f"{t['term']:<30}{t['estimate_bytes'] / GiB:>13.3f}{m:>14}{ratio:>7}")
    tt = r["trainer_total"]
    print(f"{'trainer peak (all but vLLM)':<30}{tt['estimate_bytes'] / GiB:>13.3f}{tt['measured_bytes'] / GiB:>14.3f}"
          f"{tt['ratio']:>7.2f}")
    e = r["load_avg_end"]
    print(f"load average at end: {e[0]:.2f} {e[1]:.2f} {e[2]:.2f}")


if __name__ == "__main__":
    main()
