"""Range and consistency checks the type system can't express; each failure is a one-line `ConfigError`
naming the key. Nothing here imports vLLM or loads data: the LoRA rules and the benchmark names are
plain tables (`rollout/lora_rules.py`, `config/sources.py`).
"""

from __future__ import annotations

from pathlib import Path

from intro_lite.config.schema import Config
from intro_lite.config.sources import get_spec, is_tiny, looks_local
from intro_lite.errors import ConfigError
from intro_lite.rollout.lora_rules import check_lora_compat


# Range checks that the type system can't express


def _require(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"'{key}' {msg}")


def validate(cfg: Config) -> None:
    _require(is_single_component(cfg.name), "name", f"must be one path component (no '/', '\\', '..'), got {cfg.name!r}")
    from intro_lite.objectives import available

    _require(cfg.objective in available(), "objective", f"must be one of {available()}, got {cfg.objective!r}")
    r, t, lo = cfg.rollout, cfg.train, cfg.lora
    _require(r.group_size >= 1, "rollout.group_size", f"must be >= 1, got {r.group_size}")
    _require(0 < r.temperature <= 2, "rollout.temperature", f"must be in (0, 2] (vLLM's range), got {r.temperature}")
    _require(0 < r.top_p <= 1, "rollout.top_p", f"must be in (0, 1], got {r.top_p}")
    _require(r.max_new_tokens >= 1, "rollout.max_new_tokens", f"must be >= 1, got {r.max_new_tokens}")
    _require(
        r.max_model_len > cfg.data.max_prompt_tokens,
        "rollout.max_model_len",
        f"must exceed data.max_prompt_tokens ({cfg.data.max_prompt_tokens}), got {r.max_model_len}",
    )
    _require(0 < r.gpu_memory_utilization <= 1, "rollout.gpu_memory_utilization", "must be in (0, 1]")
    if r.quantization != "none":
        import torch

        on_gpu = cfg.model.device == "cuda" or (cfg.model.device == "auto" and torch.cuda.is_available())
        _require(on_gpu, "rollout.quantization", f"= {r.quantization!r} needs a CUDA GPU (vLLM's CPU backend can't run it)")
    _require(t.steps >= 1, "train.steps", f"must be >= 1, got {t.steps}")
    _require(t.prompts_per_step >= 1, "train.prompts_per_step", f"must be >= 1, got {t.prompts_per_step}")
    _require(t.micro_batch_size >= 1, "train.micro_batch_size", f"must be >= 1, got {t.micro_batch_size}")
    _require(0 < t.lr < 1, "train.lr", f"must be in (0, 1), got {t.lr}")
    _require(t.max_grad_norm > 0, "train.max_grad_norm", f"must be > 0, got {t.max_grad_norm}")
    _require(t.max_rollout_tokens >= 0, "train.max_rollout_tokens", f"must be >= 0, got {t.max_rollout_tokens}")
    _require(cfg.eval.every >= 0, "eval.every", f"must be >= 0, got {cfg.eval.every}")
    _require(t.max_nonfinite_steps >= 0, "train.max_nonfinite_steps", f"must be >= 0, got {t.max_nonfinite_steps}")
    _require(t.keep_checkpoints >= 1, "train.keep_checkpoints", f"must be >= 1, got {t.keep_checkpoints}")
    _require(t.checkpoint_every >= 0, "train.checkpoint_every", f"must be >= 0, got {t.checkpoint_every}")
    n = cfg.intro.n_candidates
    _require(n == "all" or n >= 1, "intro.n_candidates", f"must be >= 1 or \"all\", got {n}")
    _require(cfg.intro.clip_max > 0, "intro.clip_max", f"must be > 0, got {cfg.intro.clip_max}")
    _require(cfg.intro.logits_chunk_size >= 0, "intro.logits_chunk_size", f"must be >= 0, got {cfg.intro.logits_chunk_size}")
    _require(lo.alpha > 0, "lora.alpha", f"must be > 0, got {lo.alpha}")
    _require(0 <= lo.dropout < 1, "lora.dropout", f"must be in [0, 1), got {lo.dropout}")
    _require(len(lo.target_modules) > 0, "lora.target_modules", "must name at least one module")
    try:
        check_lora_compat(lo.rank, lo.target_modules)
    except ValueError as e:
        raise ConfigError(f"'lora': {e}") from None
    for key in ("prompt_template", "hint_template"):
        tmpl = getattr(cfg.data, key)
        _require("{question}" in tmpl, f"data.{key}", "must contain {question}")
    _require("{answer}" in cfg.data.hint_template, "data.hint_template", "must contain {answer}")
    for src in [cfg.data.source] if isinstance(cfg.data.source, str) else cfg.data.source:
        if not is_tiny(src) and looks_local(src):
            _require(Path(src).exists(), "data.source", f"file not found: {src}")
    if cfg.eval.source and not is_tiny(cfg.eval.source) and looks_local(cfg.eval.source):
        _require(Path(cfg.eval.source).exists(), "eval.source", f"file not found: {cfg.eval.source}")
    elif cfg.eval.source:
        try:
            get_spec(cfg.eval.source, None)  # an unknown benchmark name fails here, before any model loads
        except ConfigError as e:
            raise ConfigError(f"'eval.source': {e}") from None
    _require(cfg.eval.samples >= 1, "eval.samples", f"must be >= 1, got {cfg.eval.samples}")
    _require(cfg.eval.limit >= 0, "eval.limit", f"must be >= 0, got {cfg.eval.limit}")
    if cfg.data.exclude_ids_from:
        _require(Path(cfg.data.exclude_ids_from).is_file(), "data.exclude_ids_from", f"file not found: {cfg.data.exclude_ids_from}")


def is_single_component(name: str) -> bool:
    """A run name is a directory inside output_dir, never a path that leaves it."""
    return name not in ("", ".", "..") and not any(c in name for c in "/\\\0") and name.strip() == name
