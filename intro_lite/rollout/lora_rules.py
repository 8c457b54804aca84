"""Which LoRA adapters the installed vLLM can serve (docs/engine.md), as plain tables and checks.

Imports neither vLLM nor the config, so the config validator can use it without paying vLLM's import.
"""

from __future__ import annotations

import typing

# vllm.config.lora.MaxLoRARanks of the installed vLLM (0.32), copied rather than
# imported so that check_lora_compat (used by the config validator) does not
# import vLLM (~7 s); tests/test_engine.py asserts the two agree.
SUPPORTED_LORA_RANKS: tuple[int, ...] = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""Values vLLM accepts for ``max_lora_rank``; adapters of rank <= the engine's
``max_lora_rank`` load (zero-padded)."""

QWEN2_LORA_MODULES: frozenset[str] = frozenset(
    {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
)
"""peft target-module names vLLM can load for Qwen2 (all linear layers)."""

_PEFT_SHORTHANDS = {"all-linear", "all_linear"}
_BAD_INITS = {"pissa", "olora", "loftq", "corda"}


def supported_max_lora_rank(rank: int) -> int:
    """Smallest ``max_lora_rank`` vLLM accepts that can hold an adapter of ``rank``."""
    for r in SUPPORTED_LORA_RANKS:
        if r >= rank:
            return r
    raise ValueError(
        f"LoRA rank {rank} exceeds vLLM's largest max_lora_rank {SUPPORTED_LORA_RANKS[-1]}"
    )


def check_lora_compat(
    rank: int,
    target_modules: list[str] | str,
    *,
    bias: str = "none",
    use_dora: bool = False,
    modules_to_save: list[str] | None = None,
    init_lora_weights: bool | str = True,
    supported_modules: typing.Collection[str] = QWEN2_LORA_MODULES,
) -> None:
    """Raise ``ValueError`` (one-line message) if vLLM cannot serve this LoRA.

    ``target_modules`` are peft names (suffixes like ``"q_proj"``, dotted
    paths whose last component is used, or the peft shorthand
    ``"all-linear"``). ``supported_modules`` defaults to Qwen2's linear layers.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
    if rank > SUPPORTED_LORA_RANKS[-1]:
        raise ValueError(
            f"LoRA rank {rank} is not supported by vLLM (max_lora_rank must be one of "
            f"{list(SUPPORTED_LORA_RANKS)})"
        )
    if use_dora:
        raise ValueError("vLLM cannot load DoRA adapters (use_dora=True); use plain LoRA")
    if bias != "none":
        raise ValueError(f"vLLM cannot load LoRA adapters with bias={bias!r}; use bias='none'")
    if modules_to_save:
        raise ValueError(
            f"vLLM cannot load LoRA adapters with modules_to_save={list(modules_to_save)}"
        )
    if isinstance(init_lora_weights, str) and init_lora_weights.lower().split("_")[0] in _BAD_INITS:
        raise ValueError(
            f"vLLM cannot load init_lora_weights={init_lora_weights!r} adapters "
            "(they modify base weights); convert to plain LoRA first"
        )
    if isinstance(target_modules, str):
        if target_modules.lower() in _PEFT_SHORTHANDS:
            return
        target_modules = [target_modules]
    if not target_modules:
        raise ValueError("LoRA target_modules is empty")
    bad = sorted({m for m in target_modules if m.rsplit(".", 1)[-1] not in supported_modules})
    if bad:
        raise ValueError(
            f"vLLM cannot apply LoRA to module(s) {bad}; supported: {sorted(supported_modules)}"
        )
