"""A randomly initialised `Qwen2ForCausalLM` sized for the tiny tokenizer (head_dim 64 for vLLM's CPU backend)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TinyModelConfig:
    # vLLM's CPU attention backend supports only a few head sizes; 64 is the safe one, so
    # hidden_size is always num_attention_heads * 64.
    num_attention_heads: int = 2
    num_key_value_heads: int = 1
    num_hidden_layers: int = 2
    intermediate_multiple: int = 4
    max_position_embeddings: int = 512
    seed: int = 0

    @property
    def hidden_size(self) -> int:
        return self.num_attention_heads * 64


def build_tiny_model(tokenizer, cfg: TinyModelConfig | None = None):
    """Randomly initialised fp32 ``Qwen2ForCausalLM`` sized for ``tokenizer``."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    cfg = cfg or TinyModelConfig()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_multiple * cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        head_dim=64,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_theta=10000.0,
        # Untied: vLLM's LoRA path handles a separate lm_head more reliably.
        tie_word_embeddings=False,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_sliding_window=False,
        dtype="float32",
    )
    torch.manual_seed(cfg.seed)
    model = Qwen2ForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
