"""A GPU check anyone can run in minutes: InTRO trainer steps at Qwen2.5-1.5B's shape, bf16 then NF4.

    python benchmarks/gpu_check.py                               # one GPU: a few minutes
    python benchmarks/gpu_check.py --json gpu_check.json         # the same, also written as JSON
    python benchmarks/gpu_check.py --device cpu --scale 0.05     # a scaled shape on the CPU, in seconds

Needs only torch, transformers and peft (bitsandbytes for the NF4 part, when it imports); never imports
vLLM and downloads nothing. Built on ``benchmarks/model_shape.py``: a random-weight Qwen2ForCausalLM from
the public config numbers (``intro_lite.doctor.architectures``), in bf16, loaded through the trainer's
``load_policy`` with the recipe's LoRA (``recipes/qwen2.5-1.5b.toml``: rank 64 on all seven projections,
gradient checkpointing) and the recipe's micro-batch (4 rows x (512 prompt + 1,536 rationale) tokens).
Each part runs ``--steps`` trainer steps (default 3: the first is the warm-up, reported apart; the
others are averaged): the policy pass with grad, the answer-conditioned pass, the chunked InTRO loss at
the full vocabulary (151,936), backward and the AdamW step. First with the base in bf16, then with the
recipe's NF4 base if bitsandbytes imports ("skipped: bitsandbytes not importable" otherwise).

Printed (and in ``--json``): device name, torch / transformers / peft / bitsandbytes versions, load
average; the card's matmul peak in the model dtype, measured here (a timed ``--peak-size``³ product
after warm-up, synchronised, before and after the bf16 part; the higher is used); per phase its
seconds (warm-up and mean), model FLOPs and their rate; the step's tokens/s and model FLOPs
utilisation (MFU, ``step_flops``); peak memory against ``intro_lite.doctor.memory.estimate_memory``
term by term with measured/estimate; and the trainer-side dtype gap: on the last step's batch,
|log p(z_t)| of the rationale tokens from the bf16 policy pass against the same weights upcast to fp32
(max, mean, p99). The bf16 results are printed and written before the NF4 part starts: an NF4
failure is reported (exit status 1) without losing them.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/model_shape.py beside this file

import model_shape as ms  # noqa: E402  (puts the repository on sys.path too)

GiB = ms.GiB
T0 = time.perf_counter()


def say(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


def environment(device) -> dict:
    """Device name, library versions and the load average (bitsandbytes: its version or why not)."""
    import peft
    import torch
    import transformers

    try:
        import bitsandbytes

        bnb = bitsandbytes.__version__
    except Exception as e:  # ImportError, or a broken install that fails on import
        bnb = f"not importable ({type(e).__name__})"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name = f"{props.name}, {props.total_memory / GiB:.1f} GiB, CUDA {torch.version.cuda}"
    else:
        cpuinfo = Path("/proc/cpuinfo")
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                      if line.startswith("model name")), "") if cpuinfo.exists() else ""
        name = f"CPU {model or platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    return dict(device=name, torch=torch.__version__, transformers=transformers.__version__, peft=peft.__version__,
                bitsandbytes=bnb, python=platform.python_version(), load_avg_start=ms.load_avg())


def matmul_peak(device, dtype, n: int, repeats: int = 5, iters: int = 10) -> float:
    """FLOP/s of an n³ product in `dtype` on `device`: 3 warm-up products, then the best of `repeats`
    timings of `iters` back-to-back products, synchronised before and after each timing."""
    import torch

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn((n, n), generator=g, device=device, dtype=dtype)
    b = torch.randn((n, n), generator=g, device=device, dtype=dtype)
    c = torch.empty((n, n), device=device, dtype=dtype)
    for _ in range(3):
        torch.mm(a, b, out=c)
    best = 0.0
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        for _ in range(iters):
            torch.mm(a, b, out=c)
        sync()
        best = max(best, 2 * n**3 * iters / (time.perf_counter() - t))
    del a, b, c
    return best


def body_params(arch: dict) -> int:
    """Weights of the decoder layers' linear projections (q, k, v, o, gate, up, down): the matmul parameters
    every token passes through (not the embeddings, norms or biases)."""
    H = arch["hidden_size"]
    hd = arch.get("head_dim") or H // arch["num_attention_heads"]
    q, kv = arch["num_attention_heads"] * hd, arch["num_key_value_heads"] * hd
    return arch["num_hidden_layers"] * (2 * H * q + 2 * H * kv + 3 * H * arch["intermediate_size"])


def step_flops(arch: dict, n_lora: int, rows: int, prompt: int, rationale: int) -> dict:
    """Model matmul FLOPs of one trainer step by phase (no prefix is shared: every row has its own prompt).

    Linear layers 2·N per token (N: the body's projections + LoRA); attention 2·q·s² per layer for a
    causal sequence of s tokens (QKᵀ and AV, the masked half not counted); the loss three LM-head
    products per rationale position (policy and answer-conditioned logits, the gradient into the
    hidden states; the LM head is frozen). Backward: the frozen body needs input gradients only
    (≈ its forward, attention 2×), LoRA input and weight gradients (2× its forward). Gradient
    checkpointing's recomputed forward is not model work: it is in ``recompute`` (for HFU), not in
    ``total``."""
    H, L, V = arch["hidden_size"], arch["num_hidden_layers"], arch["vocab_size"]
    q = arch["num_attention_heads"] * (arch.get("head_dim") or H // arch["num_attention_heads"])
    body = body_params(arch)
    attn = lambda s: L * 2 * q * s * s  # noqa: E731
    s, s_post = prompt + rationale, prompt + ms.HINT_TOKENS + rationale
    policy = rows * (2 * (body + n_lora) * s + attn(s))
    out = {
        "policy pass": policy,
        "answer-conditioned pass": rows * (2 * (body + n_lora) * s_post + attn(s_post)),
        "InTRO loss": 3 * 2 * H * V * rows * rationale,
        "backward": rows * (2 * body * s + 4 * n_lora * s + 2 * attn(s)),
        "optimizer step": 0,
    }
    out["total"] = sum(out.values())
    out["recompute"] = policy
    return out


def own_logprobs(model, batch, chunk: int):
    """log p(z_t) of every rationale token, as the trainer's loss sees it: the policy pass (eval mode,
    no grad), logits in the hidden states' dtype chunk by chunk, log-softmax in float32 (float64 on the
    CPU); and the logits' largest |value| and root mean square (bf16's rounding step grows with them)."""
    import torch

    from intro_lite.forward import lm_head_weight, suffix_hidden

    x, _, z = batch
    model.eval()
    out, top, sq = [], 0.0, 0.0
    with torch.no_grad():
        hidden, tokens, mask = suffix_hidden(model, x, z, 0)
        h, own = hidden[mask.bool()], tokens[mask.bool()]
        w = lm_head_weight(model)
        for i in range(0, h.shape[0], chunk):
            logits = h[i:i + chunk] @ w.t()
            out.append(torch.log_softmax(logits, -1, dtype=torch.float32).gather(1, own[i:i + chunk, None]))
            top = max(top, float(logits.abs().max()))
            sq += float(logits.float().square().sum())
    return torch.cat(out).squeeze(1).double().cpu(), top, (sq / (h.shape[0] * w.shape[0])) ** 0.5


def dtype_gap(model, batch, chunk: int) -> dict:
    """|log p_bf16(z_t) − log p_fp32(z_t)| over the batch's rationale tokens: the model as trained, then the
    same weights upcast to float32 in place (the model is float32 afterwards)."""
    import torch

    low_dtype = str(next(p for p in model.parameters() if not p.requires_grad).dtype).removeprefix("torch.")
    low, logit_max, logit_rms = own_logprobs(model, batch, chunk)
    model.float()
    high, _, _ = own_logprobs(model, batch, chunk)
    d = (low - high).abs()
    return dict(tokens=int(d.numel()), dtype=low_dtype, max=float(d.max()), mean=float(d.mean()),
                p99=float(torch.quantile(d, 0.99)), median=float(d.median()), logit_abs_max=logit_max,
                logit_rms=logit_rms, fp32_matmul_tf32=bool(torch.backends.cuda.matmul.allow_tf32))


def run_part(label: str, args, sets: list[str], quantization: str, arch: dict, arch_name: str, model_dir,
             n_params: int, t_build: float, peak) -> tuple[dict, dict]:
    """One part (a trainer base): steps, memory terms, FLOPs. Returns (result, the run with its model)."""
    cfg, device = ms.shape_config(args.shape, None, sets, quantization)
    meter = ms.Meter(device)
    n = args.steps

    def progress(i, p):
        kind = "warm-up" if i == 0 else "measured"
        say(f"{label} step {i + 1}/{n} ({kind}): {p['phase']} {p['seconds']:.2f}s, peak {p['peak_bytes'] / GiB:.2f} GiB")

    say(f"{label}: loading through load_policy (base {cfg.model.quantization}, {cfg.model.dtype}, {device})")
    run = ms.run_steps(cfg, arch, model_dir, meter, warmup=1, steps=n - 1, seed=args.seed, progress=progress)
    r = ms.shape_result(args, cfg, arch, arch_name, run, meter, n_params, t_build)
    rows, prompt, rationale = cfg.train.micro_batch_size, cfg.data.max_prompt_tokens, cfg.rollout.max_new_tokens
    r["flops"] = step_flops(arch, run["lora_parameters"], rows, prompt, rationale)
    r["peak"] = peak(cfg, device, label)
    used = r["peak"]["used_flops_per_s"]
    r["mfu"] = r["flops"]["total"] / r["step_seconds"] / used
    r["hfu"] = (r["flops"]["total"] + (r["flops"]["recompute"] if cfg.model.gradient_checkpointing else 0)) \
        / r["step_seconds"] / used
    r["tokens_per_s"] = dict(policy=rows * (prompt + rationale) / r["step_seconds"],
                             rationale=rows * rationale / r["step_seconds"])
    r["load_avg_end"] = ms.load_avg()
    return r, dict(run, cfg=cfg, device=device)


def report_part(label: str, r: dict) -> None:
    from intro_lite.doctor.memory import count

    print(f"\n=== {label} ===")
    ms.report(r, count)
    pk = r["peak"]
    print(f"{r['dtype']} matmul peak, {pk['n']}^3 on this device: {pk['before_flops_per_s'] / 1e12:.2f} TFLOP/s "
          f"before, {pk['after_flops_per_s'] / 1e12:.2f} after; used {pk['used_flops_per_s'] / 1e12:.2f}")
    warm = {p["phase"]: p["seconds"] for p in r["warmup_phases"][0]} if r["warmup_phases"] else {}
    unit, div = ("TFLOP", 1e12) if r["flops"]["total"] >= 1e12 else ("GFLOP", 1e9)
    print(f"{'phase':<36}{'warm-up s':>10}{'mean s':>9}{unit:>9}{unit + '/s':>10}{'% peak':>8}")
    for p in r["phases"]:
        f = r["flops"][p["phase"].split(" (")[0]]
        rate = f / p["seconds"] if p["seconds"] > 0 else 0.0
        print(f"{p['phase']:<36}{warm.get(p['phase'], float('nan')):>10.3f}{p['seconds']:>9.3f}{f / div:>9.3f}"
              f"{rate / div:>10.2f}{100 * rate / pk['used_flops_per_s']:>8.1f}")
    warm_total = sum(warm.values()) if warm else float("nan")
    print(f"{'step (MFU)':<36}{warm_total:>10.3f}{r['step_seconds']:>9.3f}{r['flops']['total'] / div:>9.3f}"
          f"{r['flops']['total'] / r['step_seconds'] / div:>10.2f}{100 * r['mfu']:>8.1f}")
    t = r["tokens_per_s"]
    print(f"MFU {100 * r['mfu']:.2f}% (model FLOPs / mean step time / measured peak); with the checkpointing's "
          f"recomputed forward (HFU) {100 * r['hfu']:.2f}%; tokens/s: {t['policy']:.0f} policy-pass tokens, "
          f"{t['rationale']:.0f} trained rationale tokens")
    ratios = ", ".join(f"{x['term']} {x['ratio']:.2f}" for x in r["terms"] if x["ratio"] is not None)
    print(f"measured/estimate: {ratios}; trainer peak {r['trainer_total']['ratio']:.2f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    ap.add_argument("--shape", choices=sorted(ms.SHAPES), default="qwen2.5-1.5b")
    ap.add_argument("--scale", type=float, default=1.0, help="layers/heads/MLP/vocab x F (0 < F <= 1), as model_shape")
    ap.add_argument("--steps", type=int, default=3, help="steps per part, the first a warm-up (>= 2)")
    ap.add_argument("--peak-size", type=int, help="n of the n^3 peak matmul (default 8192 on CUDA, 1024 on the CPU)")
    ap.add_argument("--skip-nf4", action="store_true", help="the bf16 part only")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, as intro-lite's (after the check's own model.dtype=bfloat16, model.device)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the results here (after the bf16 part, then again at the end)")
    args = ap.parse_args(argv)
    if not 0 < args.scale <= 1:
        ap.error(f"--scale must be in (0, 1], got {args.scale}")
    if args.steps < 2:
        ap.error("--steps must be >= 2 (one warm-up, at least one measured)")
    if hasattr(sys.stdout, "reconfigure"):  # a line at a time through a pipe too (a remote run's log)
        sys.stdout.reconfigure(line_buffering=True)

    import torch

    from intro_lite.doctor.architectures import ARCHITECTURES
    from intro_lite.policy import resolve_device

    device = resolve_device(args.device)
    env = environment(device)
    print(f"device: {env['device']}")
    print(f"torch {env['torch']}, transformers {env['transformers']}, peft {env['peft']}, "
          f"bitsandbytes {env['bitsandbytes']}, python {env['python']}")
    la = env["load_avg_start"]
    print(f"load average at start: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f} ({os.cpu_count()} CPUs)")
    sets = ["model.dtype=bfloat16", f"model.device={device.type}", *args.set]
    peak_n = args.peak_size or (8192 if device.type == "cuda" else 1024)
    peaks: dict[tuple, float] = {}

    def peak(cfg, dev, label) -> dict:
        """The peak in the part's dtype: the one measured at the start (same dtype) and one measured now."""
        dtype = getattr(torch, cfg.model.dtype)
        key = (dev.type, cfg.model.dtype)
        if key not in peaks:
            peaks[key] = matmul_peak(dev, dtype, peak_n)
        after = matmul_peak(dev, dtype, peak_n)
        say(f"{label}: {cfg.model.dtype} matmul peak {peaks[key] / 1e12:.2f} TFLOP/s at start, {after / 1e12:.2f} now")
        return dict(n=peak_n, dtype=cfg.model.dtype, before_flops_per_s=peaks[key], after_flops_per_s=after,
                    used_flops_per_s=max(peaks[key], after))

    say(f"{peak_n}^3 bfloat16 matmul peak (warm-up, then best of 5 x 10 products)")
    peaks[(device.type, "bfloat16")] = matmul_peak(device, torch.bfloat16, peak_n)
    say(f"peak {peaks[(device.type, 'bfloat16')] / 1e12:.2f} TFLOP/s")

    arch_name = ms.SHAPES[args.shape][0]
    arch = ms.scaled(ARCHITECTURES[arch_name], args.scale)
    out = dict(check="benchmarks/gpu_check.py", argv=sys.argv[1:] if argv is None else list(argv), environment=env,
               shape=args.shape, scale=args.scale)
    status = 0
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        say(f"writing a random-weight {arch_name} x {args.scale:g} in bfloat16 to {tmp}")
        t = time.perf_counter()
        n_params = ms.write_model(arch, torch.bfloat16, Path(tmp))
        t_build = time.perf_counter() - t
        say(f"written: {n_params / 1e9:.3f}B params in {t_build:.1f}s")

        r, run = run_part("bf16", args, sets, "none", arch, arch_name, tmp, n_params, t_build, peak)
        out["bf16"] = r
        report_part(f"bf16 base, LoRA rank {run['cfg'].lora.rank}", r)
        if args.json:
            ms.write_json(args.json, out)
        say("dtype gap: the last step's batch, bf16 policy pass vs the same weights upcast to fp32")
        try:
            del run["opt"]
            gap = dtype_gap(run["model"], ms.make_batch(run["cfg"].train.micro_batch_size,
                                                        run["cfg"].data.max_prompt_tokens,
                                                        run["cfg"].rollout.max_new_tokens, arch["vocab_size"],
                                                        run["last_batch_seed"]),
                            run["cfg"].intro.logits_chunk_size or 128)
            r["dtype_gap"] = gap
            print(f"trainer-side dtype gap, {gap['tokens']} rationale tokens: |log p_{gap['dtype']}(z_t) - "
                  f"log p_fp32(z_t)| max {gap['max']:.3g}, mean {gap['mean']:.3g}, p99 {gap['p99']:.3g}, "
                  f"median {gap['median']:.3g} (fp32 matmuls with TF32 {'on' if gap['fp32_matmul_tf32'] else 'off'}); "
                  f"random weights: logits |max| {gap['logit_abs_max']:.3g}, rms {gap['logit_rms']:.3g} "
                  f"(a trained model's are larger, and so is bf16's rounding step)")
        except Exception as e:
            traceback.print_exc(file=sys.stdout)
            r["dtype_gap"] = dict(error=f"{type(e).__name__}: {e}")
            print(f"dtype gap failed: {type(e).__name__}: {e}")
            status = 1
        del run
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if args.json:
            ms.write_json(args.json, out)

        if args.skip_nf4:
            out["nf4"] = dict(skipped="--skip-nf4")
            print("\n=== NF4 base: skipped (--skip-nf4) ===")
        elif not env["bitsandbytes"][:1].isdigit():
            out["nf4"] = dict(skipped="bitsandbytes not importable")
            print("\n=== NF4 base: skipped: bitsandbytes not importable ===")
        else:
            try:
                r4, run4 = run_part("nf4", args, sets, "nf4", arch, arch_name, tmp, n_params, t_build, peak)
                del run4
                out["nf4"] = r4
                report_part(f"NF4 base (bitsandbytes {env['bitsandbytes']}), bf16 compute", r4)
            except Exception as e:
                traceback.print_exc(file=sys.stdout)
                out["nf4"] = dict(error=f"{type(e).__name__}: {e}")
                print(f"\n=== NF4 base: FAILED: {type(e).__name__}: {e} (the bf16 results above stand) ===")
                status = 1
    out["load_avg_end"] = ms.load_avg()
    out["elapsed_seconds"] = time.perf_counter() - T0
    if args.json:
        ms.write_json(args.json, out)
    e = out["load_avg_end"]
    print(f"load average at end: {e[0]:.2f} {e[1]:.2f} {e[2]:.2f}; {out['elapsed_seconds']:.0f}s in all"
          + (f"; JSON: {args.json}" if args.json else ""))
    return status


if __name__ == "__main__":
    sys.exit(main())
