"""The doctor's estimate of a recipe's peak GPU memory, term by term, from the base model's config.json."""

from __future__ import annotations

from intro_lite.config import Config
from intro_lite.doctor.checks import GiB

# bitsandbytes NF4 with double quantisation: 4 bits per weight, an 8-bit absmax per 64-weight block,
# and an fp32 absmax per 256 of those blocks.
NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)


def gpu_total_bytes() -> int | None:
    import torch

    return torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None



def estimate_memory(cfg: Config, model_config: dict, gpu_total_bytes: int | None = None) -> list[tuple[str, int, str]]:
    """(term, bytes, how) for the recipe's peak GPU memory, from the base's config.json numbers.

    16-bit weights and activations unless model.dtype says float32 ("auto" means bf16 on a GPU).
    Not counted: the CUDA context (~0.5 GiB), allocator fragmentation, vLLM's own activations."""
    from intro_lite.objectives import get_objective
    from intro_lite.objectives.intro import DEFAULT_CHUNK_SIZE

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

    G, P = cfg.rollout.group_size, cfg.train.prompts_per_step
    seq_len = cfg.rollout.max_model_len or model_config.get("max_position_embeddings", 0)  # 0: the model's own
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

    ocfg = cfg.objective_config()
    needs = get_objective(cfg.objective).needs_for(ocfg)
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
    if needs.hidden_states:  # InTRO's chunked loss: a few [chunk, V] buffers, never [N, V]
        chunk = getattr(ocfg, "logits_chunk_size", 0) or DEFAULT_CHUNK_SIZE
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
    if needs.teacher_decay is not None or needs.teacher_refresh:  # InTRO's ema/lagged teacher: its own adapter copy
        terms.append(("teacher's LoRA copy", lora * 4, f"{count(lora)} params x 4 bytes (fp32)"))
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


def gpu_summary(cfg: Config, model_config: dict, gpu_gb: int) -> str:
    """One line for a recipe's header: the estimate on a `gpu_gb` GB GPU, or why it does not fit."""
    gpu = gpu_gb * 10**9
    terms = estimate_memory(cfg, model_config, gpu)
    total = sum(b for _, b, _ in terms)
    name, biggest, _ = max(terms, key=lambda t: t[1])
    weights = terms[0][1]
    if cfg.rollout.gpu_memory_utilization * gpu <= weights:
        return (f"{gpu_gb} GB GPU: does not fit — vLLM's base weights ({weights / GiB:.1f} GiB) exceed "
                f"rollout.gpu_memory_utilization x {gpu_gb} GB")
    verdict = "fits" if total <= gpu else "does not fit"
    return f"{gpu_gb} GB GPU: peak ~{total / GiB:.1f} GiB, {verdict} (largest term: {name}, {biggest / GiB:.1f} GiB)"
