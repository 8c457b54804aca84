"""Embedded default: a tiny Qwen2 model and a synthetic arithmetic task, built on first use.

`intro-lite train recipes/tiny.toml` and the test-suite need a model that (a) runs on a
laptop CPU, (b) loads in vLLM's CPU backend, and (c) is *partly* right on its task, so that
InTRO has correct rationales to keep and something left to learn. Nothing may be
downloaded, so everything here is made from scratch and cached on disk:

1. `task.generate_records` writes a MATH-like multi-step arithmetic task whose solutions come
   in a *concise* and a *verbose* style (same reasoning, very different length).
2. `tokenizer.build_tokenizer` trains a small byte-level BPE on the task text.
3. `model.build_tiny_model` makes a randomly initialised `Qwen2ForCausalLM` (head_dim 64).
4. `warmup.sft_warmup` fine-tunes it on a 50/50 mix of both styles. A fraction of the warm-up
   examples (`WarmupConfig.hint_fraction`) is prompted with the trainer's answer-hint
   template x ⊕ y instead of plain x, so that, like an LLM reading a hint in context, the
   tiny model can condition on a given answer: InTRO's teacher π(z|x⊕y) is then in
   distribution rather than an untrained corner of the model (see `docs/tiny.md`).
5. `assets.ensure_tiny_assets` runs 1-4 once per parameter set and caches the result.
"""

from intro_lite.io import read_jsonl
from intro_lite.tiny.assets import (
    BUILDER_VERSION,
    MANIFEST_NAME,
    PRESETS,
    TinyAssets,
    TinyBuildConfig,
    default_cache_root,
    ensure_tiny_assets,
    load_manifest,
    resolve_model_path,
    tiny_assets,
)
from intro_lite.tiny.model import TinyModelConfig, build_tiny_model, count_parameters
from intro_lite.tiny.task import (
    HINT_TEMPLATE,
    PROMPT_TEMPLATE,
    ArithProblem,
    TaskConfig,
    format_hint_prompt,
    format_problem,
    format_prompt,
    format_solution,
    generate_records,
    parse_problem,
    warmup_examples,
)
from intro_lite.tiny.tokenizer import EOS_TOKEN, build_tokenizer
from intro_lite.tiny.warmup import WarmupConfig, encode_example, evaluate_tiny, generate_tiny, sft_warmup

__all__ = [
    "read_jsonl", "BUILDER_VERSION", "MANIFEST_NAME", "PRESETS", "TinyAssets", "TinyBuildConfig", "default_cache_root",
    "ensure_tiny_assets", "load_manifest", "resolve_model_path", "tiny_assets", "TinyModelConfig", "build_tiny_model",
    "count_parameters", "HINT_TEMPLATE", "PROMPT_TEMPLATE", "ArithProblem", "TaskConfig", "format_hint_prompt",
    "format_problem", "format_prompt", "format_solution", "generate_records", "parse_problem", "warmup_examples",
    "EOS_TOKEN", "build_tokenizer", "WarmupConfig", "encode_example", "evaluate_tiny", "generate_tiny", "sft_warmup",
]
