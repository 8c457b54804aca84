"""Range and consistency checks the type system can't express; each failure is a one-line `ConfigError`
naming the key. Nothing here imports vLLM or loads data: the LoRA rules and the benchmark names are
plain tables (`rollout/lora_rules.py`, `config/sources.py`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from intro_lite.bounds import check_bounds
from intro_lite.config.sources import get_spec, is_tiny, looks_local, resolve_data_file, tiny_preset
from intro_lite.errors import ConfigError
from intro_lite.rewards import check_reward
from intro_lite.rollout.lora_rules import check_lora_compat

if TYPE_CHECKING:
    from intro_lite.config.schema import Config


# Range checks that the type system can't express


def _require(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"'{key}' {msg}")


def validate(cfg: Config) -> None:
    _require(is_single_component(cfg.name), "name", f"must be one path component (no '/', '\\', '..'), got {cfg.name!r}")
    from intro_lite.objectives.base import available, is_user_objective

    _require(cfg.objective in available() or is_user_objective(cfg.objective), "objective",
             f"must be one of {available()} or 'path/to/file.py:Name', got {cfg.objective!r}")
    check_reward(cfg.reward)  # a missing file or function fails here, before any model loads
    for tracker in ("wandb", "trackio"):  # optional: an error only when asked for and missing
        _require(not getattr(cfg.log, tracker) or importlib.util.find_spec(tracker) is not None, f"log.{tracker}",
                 f"= true but {tracker} is not installed (pip install {tracker})")
    check_bounds(cfg)  # every numeric key's declared range, and finiteness
    r, lora = cfg.rollout, cfg.lora
    # max_model_len = 0 is the model's own context: train checks the fit when it has read the model's config
    _require(r.max_model_len == 0 or r.max_model_len > cfg.data.max_prompt_tokens, "rollout.max_model_len",
             f"must exceed data.max_prompt_tokens ({cfg.data.max_prompt_tokens}), got {r.max_model_len}")
    _require(r.max_model_len == 0 or cfg.data.max_prompt_tokens + r.max_new_tokens <= r.max_model_len,
             "rollout.max_new_tokens", f"+ data.max_prompt_tokens ({cfg.data.max_prompt_tokens}) must fit in "
             f"rollout.max_model_len ({r.max_model_len}), got {r.max_new_tokens}")
    if r.quantization != "none":
        import torch

        on_gpu = cfg.model.device == "cuda" or (cfg.model.device == "auto" and torch.cuda.is_available())
        _require(on_gpu, "rollout.quantization", f"= {r.quantization!r} needs a CUDA GPU (vLLM's CPU backend can't run it)")
    _require(len(lora.target_modules) > 0, "lora.target_modules", "must name at least one module")
    try:
        check_lora_compat(lora.rank, lora.target_modules)
    except ValueError as e:
        raise ConfigError(f"'lora': {e}") from None
    for key in ("prompt_template", "hint_template"):
        tmpl = getattr(cfg.data, key)
        _require("{question}" in tmpl, f"data.{key}", "must contain {question}")
    _require("{answer}" in cfg.data.hint_template, "data.hint_template", "must contain {answer}")
    sources = [cfg.data.source] if isinstance(cfg.data.source, str) else cfg.data.source
    for key, name in [("model.name_or_path", cfg.model.name_or_path), ("eval.source", cfg.eval.source),
                      *(("data.source", s) for s in sources)]:
        if is_tiny(name):
            try:
                tiny_preset(name)
            except ConfigError as e:
                raise ConfigError(f"'{key}': {e}") from None
    for src in sources:
        src = resolve_data_file(src)  # a packaged set (`math-l3-5`) as its file; a missing one fails here
        if not is_tiny(src) and looks_local(src):
            _require(Path(src).exists(), "data.source", f"file not found: {src}")
    if cfg.eval.source and not is_tiny(cfg.eval.source) and looks_local(cfg.eval.source):
        _require(Path(cfg.eval.source).exists(), "eval.source", f"file not found: {cfg.eval.source}")
    elif cfg.eval.source:
        try:
            get_spec(cfg.eval.source, None)  # an unknown benchmark name fails here, before any model loads
        except ConfigError as e:
            raise ConfigError(f"'eval.source': {e}") from None
    if cfg.data.exclude_ids_from:
        exclude = resolve_data_file(cfg.data.exclude_ids_from, "data.exclude_ids_from")  # a file, or `math500`
        _require(Path(exclude).is_file(), "data.exclude_ids_from", f"file not found: {cfg.data.exclude_ids_from}")


def is_single_component(name: str) -> bool:
    """A run name is a directory inside output_dir, never a path that leaves it."""
    return name not in ("", ".", "..") and not any(c in name for c in "/\\\0") and name.strip() == name
