"""The trainable policy: a (4-bit) base with a PEFT LoRA adapter, and the logits the objectives need."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from intro_lite.config import Config
from intro_lite.errors import ConfigError, first_line


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("model.device = 'cuda' but no CUDA device is available")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        # bf16 where the hardware has it; fp32 on the CPU, where bf16 matmuls are slow and lossy.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def load_policy(cfg: Config, model_path: str):
    """Base (NF4 via bitsandbytes, or full precision) + a fresh LoRA adapter. Returns (model, tokenizer)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    device = resolve_device(cfg.model.device)
    dtype = resolve_dtype(cfg.model.dtype, device)
    kwargs: dict = {"dtype": dtype, "trust_remote_code": cfg.model.trust_remote_code}
    if cfg.model.quantization == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True,
        )
        kwargs["device_map"] = {"": device.index or 0} if device.type == "cuda" else {"": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    if cfg.model.quantization == "none":
        model.to(device)
    else:
        # bitsandbytes repacks 4-bit weights in place for a faster CPU inference kernel the first
        # time a module runs in eval mode without grad (our posterior pass); that kernel's bias add
        # breaks the next grad-enabled pass. The trainer keeps the training layout throughout.
        for module in model.modules():
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.model.trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.use_cache = False
    for p in model.parameters():
        p.requires_grad_(False)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = LoraConfig(
        r=cfg.lora.rank,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    if cfg.lora.init_adapter:
        load_adapter_weights(model, cfg.lora.init_adapter)
    return model, tokenizer


def load_adapter_weights(model, adapter_dir: str | Path) -> None:
    """Copy a saved adapter's weights (safetensors only) into the model's fresh adapter.

    Every tensor must exist with the same shape: a rank, module list or base that differs is a
    ConfigError naming the first mismatch, never a silent partial load."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(adapter_dir) / "adapter_model.safetensors"
    if not path.exists():
        raise ConfigError(f"lora.init_adapter: {path} not found")
    saved = load_file(str(path))
    own = get_peft_model_state_dict(model)
    for key, value in own.items():
        if key not in saved:
            raise ConfigError(f"lora.init_adapter: {adapter_dir} has no {key} (different rank, modules or base)")
        if saved[key].shape != value.shape:
            raise ConfigError(f"lora.init_adapter: {adapter_dir}: {key} has shape {tuple(saved[key].shape)}, "
                              f"this model needs {tuple(value.shape)} (different rank or base)")
    extra = sorted(set(saved) - set(own))
    if extra:
        raise ConfigError(f"lora.init_adapter: {adapter_dir} has {extra[0]}, which this model's adapter lacks")
    set_peft_model_state_dict(model, saved)


def check_adapter_matches_base(adapter_dir: str | Path, model_path: str) -> None:
    """Raise ConfigError (one line, naming the adapter and the first mismatch) if a saved LoRA adapter
    cannot sit on `model_path`: a layer the base lacks, or a tensor whose in/out size is not the base's.

    Reads only adapter_config.json, the safetensors header (shapes, no weights) and the base's config, so
    a wrong base fails in a second instead of deep inside vLLM's or peft's loader."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ConfigError(f"{adapter_dir}: no adapter_config.json (not a PEFT adapter directory)")
    _check_vllm_can_load(adapter_dir)
    shapes = _adapter_shapes(adapter_dir)
    base = base_model_config(model_path)
    hidden, layers, heads = base["hidden_size"], base["num_hidden_layers"], base["num_attention_heads"]
    head_dim = base.get("head_dim") or hidden // heads
    q, kv = heads * head_dim, base.get("num_key_value_heads", heads) * head_dim
    inter = base.get("intermediate_size")
    H, Q, KV, I = (hidden, "hidden_size"), (q, "heads x head_dim"), (kv, "kv heads x head_dim"), (inter, "intermediate_size")
    # (in_features, out_features) of the Llama/Qwen2-style linear layers; other modules are checked by layer only.
    sizes = {"q_proj": (H, Q), "k_proj": (H, KV), "v_proj": (H, KV), "o_proj": (Q, H),
             "gate_proj": (H, I), "up_proj": (H, I), "down_proj": (I, H)}
    for key, shape in shapes.items():
        parts = key.split(".")
        at = parts.index("layers") + 1 if "layers" in parts else len(parts)
        if at < len(parts) and parts[at].isdigit() and int(parts[at]) >= layers:
            raise ConfigError(f"{adapter_dir}: {key} is for layer {parts[at]}, but the base {model_path} has "
                              f"{layers} layers; the adapter was trained on a different base")
        module = next((p for p in parts if p in sizes), None)
        if module is None or len(shape) != 2:
            continue
        if "lora_A" in parts:  # [r, in_features]
            side, dim = 0, shape[1]
        elif "lora_B" in parts:  # [out_features, r]
            side, dim = 1, shape[0]
        else:
            continue
        want, what = sizes[module][side]
        if want is not None and dim != want:
            raise ConfigError(f"{adapter_dir}: {key} has shape {tuple(shape)}, but {module}'s "
                              f"{('in', 'out')[side]}_features in the base {model_path} is {want} ({what}); "
                              f"the adapter was trained on a different base")


def _check_vllm_can_load(adapter_dir: Path) -> None:
    """DoRA, LoRA biases, modules_to_save, a rank above 512: vLLM refuses these with a traceback mid-run."""
    import json

    from intro_lite.rollout.lora_rules import check_lora_compat

    try:
        cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{adapter_dir / 'adapter_config.json'}: malformed JSON: {e}") from None
    rank = max([int(cfg.get("r", 8)), *map(int, (cfg.get("rank_pattern") or {}).values())])
    modules = cfg.get("target_modules")
    try:  # a regex string of target modules is not checked by name
        check_lora_compat(rank, modules if isinstance(modules, list) else "all-linear", bias=cfg.get("bias", "none"),
                          use_dora=bool(cfg.get("use_dora")), modules_to_save=cfg.get("modules_to_save"),
                          init_lora_weights=cfg.get("init_lora_weights", True))
    except ValueError as e:
        raise ConfigError(f"{adapter_dir}: {e}") from None


def _adapter_shapes(adapter_dir: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    st, pt = adapter_dir / "adapter_model.safetensors", adapter_dir / "adapter_model.bin"
    if st.is_file():
        try:
            with safe_open(str(st), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as e:  # a truncated or foreign file: one line, not a traceback
            raise ConfigError(f"{st}: unreadable safetensors file ({first_line(e)})") from None
    if pt.is_file():
        return {k: tuple(v.shape) for k, v in torch.load(pt, map_location="cpu", weights_only=True).items()}
    raise ConfigError(f"{adapter_dir}: no adapter_model.safetensors (or .bin)")


def base_model_config(model_path: str) -> dict:
    """The base model's config.json as a dict (a local dir, or a hub name through the HF cache)."""
    import json

    local = Path(model_path) / "config.json"
    try:
        if local.is_file():
            config = json.loads(local.read_text())
        else:  # a hub name: transformers finds it in the HF cache (or downloads config.json only)
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(model_path).to_dict()
    except Exception as e:
        raise ConfigError(f"{model_path}: cannot read the base model's config ({first_line(e)})") from None
    config = config.get("text_config") or config  # multimodal wrappers keep the LM's sizes one level down
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads"):
        if key not in config:
            raise ConfigError(f"{model_path}: config has no {key}")
    return config


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def save_adapter(model, out_dir: Path) -> Path:
    """Atomically write the PEFT adapter (safetensors): a kill never leaves a partial `out_dir`."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        _fsync_dir(tmp)
    except Exception as e:  # a full disk (OSError, or safetensors' own error): no temporary left, one line
        shutil.rmtree(tmp, ignore_errors=True)
        if "No space left" in str(e) or getattr(e, "errno", None) == 28:
            from intro_lite.errors import TrainingAborted

            raise TrainingAborted(f"{out_dir}: no space left on the device; free space there (the adapter needs "
                                  "a few MB per checkpoint: train.keep_checkpoints), then `--resume`") from None
        raise
    if out_dir.exists():
        old = out_dir.with_name(out_dir.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out_dir)
    return out_dir


def _fsync_dir(path: Path) -> None:
    for f in Path(path).iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
