"""The trainable policy: a (4-bit) base with a PEFT LoRA adapter, and the logits the objectives need."""

from __future__ import annotations

import contextlib
import math
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


def pad_concat(prefixes: list[list[int]], suffixes: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded prefix ⊕ suffix ids, attention mask, and for each suffix token the index of the
    position whose logits predict it (prefix_len - 1 + t), plus the suffix mask."""
    lengths = [len(p) + len(s) for p, s in zip(prefixes, suffixes)]
    B, L, T = len(prefixes), max(lengths), max(len(s) for s in suffixes)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    attn = torch.zeros((B, L), dtype=torch.long)
    pred_pos = torch.zeros((B, T), dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.float32)
    for b, (p, s) in enumerate(zip(prefixes, suffixes)):
        ids[b, : len(p) + len(s)] = torch.tensor(p + s, dtype=torch.long)
        attn[b, : len(p) + len(s)] = 1
        pred_pos[b, : len(s)] = torch.arange(len(p) - 1, len(p) - 1 + len(s))
        mask[b, : len(s)] = 1.0
    return ids.to(device), attn.to(device), pred_pos.to(device), mask.to(device)


# A forward pass costs about this many padded tokens of fixed overhead (module calls, small kernels):
# splitting a batch into length buckets pays only when it saves more padding than that.
BUCKET_OVERHEAD_TOKENS = 64


def length_buckets(lengths: list[int], overhead: int | None = None) -> list[list[int]]:
    """Row indices grouped so that padding each group to its own longest row costs the fewest tokens,
    counting ``overhead`` (default BUCKET_OVERHEAD_TOKENS) tokens per group: rows sorted by length,
    cut by dynamic programming."""
    overhead = BUCKET_OVERHEAD_TOKENS if overhead is None else overhead
    order = sorted(range(len(lengths)), key=lambda b: lengths[b])
    n = len(order)
    best = [0.0] + [math.inf] * n  # best[j]: cost of the first j sorted rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):
            cost = best[i] + (j - i) * lengths[order[j - 1]] + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


def suffix_hidden(model, prefixes: list[list[int]], suffixes: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Last hidden states `[B, T, H]` at the positions that predict each suffix token (given
    prefix ⊕ suffix<t), the suffix ids `[B, T]` and mask `[B, T]`: `suffix_logits` before the LM
    head (`lm_head_weight`), for losses that make the logits themselves, chunk by chunk. Grad mode
    is the caller's. Rows run in length buckets (`length_buckets`), each padded only to its own
    longest prefix ⊕ suffix; hidden states at padded suffix positions (mask 0) are meaningless.
    Rows with the same prefix (a prompt's G rollouts) share one pass over it (`_shared_prefix_hidden`)
    where the model allows; the result is the same up to float rounding."""
    base = model.get_base_model()  # LoRA layers are injected in place, so the adapter stays active
    uniq: dict[tuple[int, ...], int] = {}
    owner = [uniq.setdefault(tuple(p), len(uniq)) for p in prefixes]
    if len(uniq) < len(prefixes) and _can_share_prefixes(base):
        with _no_checkpointing_without_grad(base):
            picked = _shared_prefix_hidden(base, [list(u) for u in uniq], owner, suffixes, pad_id)
    else:
        picked = _bucketed_hidden(base, prefixes, suffixes, pad_id)
    T = picked.shape[1]
    tokens = torch.zeros((len(suffixes), T), dtype=torch.long)
    mask = torch.zeros((len(suffixes), T), dtype=torch.float32)
    for b, s in enumerate(suffixes):
        tokens[b, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[b, : len(s)] = 1.0
    return picked, tokens.to(picked.device), mask.to(picked.device)


def _bucketed_hidden(base, prefixes: list[list[int]], suffixes: list[list[int]], pad_id: int) -> torch.Tensor:
    """`suffix_hidden`'s states, one forward of prefix ⊕ suffix per length bucket."""
    device = next(p for p in base.parameters()).device
    T = max(len(s) for s in suffixes)
    groups = length_buckets([len(p) + len(s) for p, s in zip(prefixes, suffixes)])
    pieces = []
    for rows in groups:
        ids, attn, pred_pos, _ = pad_concat([prefixes[b] for b in rows], [suffixes[b] for b in rows], pad_id, device)
        hidden = base.model(input_ids=ids, attention_mask=attn).last_hidden_state  # [b, L, H]
        picked = torch.gather(hidden, 1, pred_pos.unsqueeze(-1).expand(-1, -1, hidden.size(-1)))
        pieces.append(torch.nn.functional.pad(picked, (0, 0, 0, T - picked.shape[1])))
    return _in_row_order(pieces, groups, len(prefixes))


def _in_row_order(pieces: list[torch.Tensor], groups: list[list[int]], n: int) -> torch.Tensor:
    """Concatenate per-bucket results and put their rows back in the callers' order."""
    picked = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
    if len(groups) > 1 or groups[0] != list(range(n)):
        where = torch.empty(n, dtype=torch.long)
        where[[b for rows in groups for b in rows]] = torch.arange(n)
        picked = picked.index_select(0, where.to(picked.device))
    return picked


def _can_share_prefixes(base) -> bool:
    """A shared prefix needs a KV cache the suffix pass can attend to: plain full-attention layers (no
    sliding window or recurrent state), and no gradient checkpointing where it would drop the cache
    (transformers sets past_key_values=None in checkpointed layers while training with grad)."""
    types = getattr(base.config, "layer_types", None) or ["full_attention"]
    if any(t != "full_attention" for t in types) or getattr(base.config, "use_sliding_window", False):
        return False
    return not (torch.is_grad_enabled() and base.training and getattr(base, "is_gradient_checkpointing", False))


@contextlib.contextmanager
def _no_checkpointing_without_grad(base):
    """Without grad, checkpointing saves nothing, but it would still drop the KV cache: lift it for the pass."""
    layers = [m for m in base.modules() if getattr(m, "gradient_checkpointing", False)] if not torch.is_grad_enabled() else []
    for m in layers:
        m.gradient_checkpointing = False
    try:
        yield
    finally:
        for m in layers:
            m.gradient_checkpointing = True


def _shared_prefix_hidden(base, uniq: list[list[int]], owner: list[int], suffixes: list[list[int]], pad_id: int) -> torch.Tensor:
    """`suffix_hidden`'s states with each distinct prefix run once: one pass over the (right-padded)
    distinct prefixes keeps their KV cache, then each length bucket of suffixes runs on top of its
    rows' prefix caches (gathered by `owner`, row -> prefix), with the prefix padding masked out and
    positions continuing from each row's own prefix length. Gradients reach the shared prefix pass
    through the gathered caches (index_select sums the rows' contributions)."""
    from transformers import DynamicCache

    device = next(p for p in base.parameters()).device
    P, Lp = len(uniq), max(len(u) for u in uniq)
    ids = torch.full((P, Lp), pad_id, dtype=torch.long)
    attn = torch.zeros((P, Lp), dtype=torch.long)
    for i, u in enumerate(uniq):
        ids[i, : len(u)] = torch.tensor(u, dtype=torch.long)
        attn[i, : len(u)] = 1
    ids, attn = ids.to(device), attn.to(device)
    out = base.model(input_ids=ids, attention_mask=attn, use_cache=True)
    prefix_hidden, cache = out.last_hidden_state, out.past_key_values
    kv = [(layer.keys, layer.values) for layer in cache.layers]
    last = torch.tensor([len(u) - 1 for u in uniq], device=device)
    T = max(len(s) for s in suffixes)
    groups = length_buckets([len(s) for s in suffixes])
    pieces = []
    for rows in groups:
        who = torch.tensor([owner[b] for b in rows], device=device)
        Ls = max(len(suffixes[b]) for b in rows)
        s_ids = torch.full((len(rows), Ls), pad_id, dtype=torch.long)
        s_attn = torch.zeros((len(rows), Ls), dtype=torch.long)
        for j, b in enumerate(rows):
            s_ids[j, : len(suffixes[b])] = torch.tensor(suffixes[b], dtype=torch.long)
            s_attn[j, : len(suffixes[b])] = 1
        # Suffix token t sits at position len(prefix) + t (RoPE), at cache slot Lp + t (the mask).
        positions = (last[who] + 1).unsqueeze(1) + torch.arange(Ls, device=device)
        rows_cache = DynamicCache(ddp_cache_data=[(k.index_select(0, who), v.index_select(0, who)) for k, v in kv])
        hidden = base.model(input_ids=s_ids.to(device), attention_mask=torch.cat([attn[who], s_attn.to(device)], 1),
                            position_ids=positions, past_key_values=rows_cache, use_cache=True,
                            cache_position=torch.arange(Lp, Lp + Ls, device=device)).last_hidden_state
        # Token 0 is predicted by the prefix's last position, token t > 0 by suffix position t - 1.
        first = prefix_hidden[who, last[who]].unsqueeze(1)
        picked = torch.cat([first, hidden[:, : Ls - 1]], 1)
        pieces.append(torch.nn.functional.pad(picked, (0, 0, 0, T - Ls)))
    return _in_row_order(pieces, groups, len(suffixes))


def lm_head_weight(model) -> torch.Tensor:
    """The LM head's `[V, H]` weight (tied to the embeddings for some models; never LoRA-adapted here)."""
    head = model.get_base_model().lm_head
    if getattr(head, "bias", None) is not None:
        raise ValueError("the chunked logits path assumes an LM head without bias")
    if hasattr(head.weight, "quant_state"):
        raise ValueError("the chunked logits path needs an unquantized LM head")
    return head.weight


def suffix_logits(model, prefixes: list[list[int]], suffixes: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits `[B, T, V]` predicting each suffix token given prefix ⊕ suffix<t, the suffix ids `[B, T]`
    and mask `[B, T]`. The LM head runs only on suffix positions, so prompt positions cost no V-wide
    logits. Grad mode is the caller's (wrap in torch.no_grad() for the posterior pass)."""
    picked, tokens, mask = suffix_hidden(model, prefixes, suffixes, pad_id)
    logits = model.get_base_model().lm_head(picked).float()
    return logits, tokens, mask


def save_adapter(model, out_dir: Path) -> Path:
    """Atomically write the PEFT adapter (safetensors): a kill never leaves a partial `out_dir`."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp), safe_serialization=True)
    _fsync_dir(tmp)
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
